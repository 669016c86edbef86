"""``join-room`` / ``leave-room`` -> ``room-joined`` / ``room-left``.

Joining twice is fine; leaving a room one is not in is ``not-in-room``.
"""

from typing import Any

from miaws import Context, MessageType, hookimpl


def handle_join(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    ctx.join(message["room"])
    return {"type": "room-joined", "room": message["room"]}


def handle_leave(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    ctx.leave(message["room"])
    return {"type": "room-left", "room": message["room"]}


@hookimpl
def register_message_types() -> list[MessageType]:
    return [
        MessageType("join-room", handle_join, description="Joins a room."),
        MessageType("leave-room", handle_leave, description="Leaves a room."),
    ]
