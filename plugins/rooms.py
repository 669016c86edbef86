"""``join-room`` / ``leave-room`` -> ``room-joined`` / ``room-left``.

Joining twice is fine; leaving a room one is not in is ``not-in-room``.

In a room with history (``history.rooms``), ``room-joined`` carries the room's current
``epoch`` and ``seq``.  A join with ``since: {epoch, seq}`` also recovers: the reply says
``recovered: true`` and is followed at once by every message after that seq, oldest first,
before any new one; or it says ``recovered: false`` (the history no longer covers the gap,
or the epoch is another, or the room keeps no history) and nothing follows.

``ctx.join`` does the work and keeps that order: it answers at once when this process holds
the history, and with an awaitable when the history is shared by several nodes (then the
room's live messages for this client wait until the reply and the missed ones are queued).
"""

from collections.abc import Awaitable
from typing import Any

from miaws import Context, Joined, MessageType, Position, hookimpl


def handle_join(ctx: Context, message: dict[str, Any]) -> Awaitable[None] | None:
    room = message["room"]
    since = message.get("since")
    joined = ctx.join(room, since=Position(since["epoch"], since["seq"]) if since else None)
    if isinstance(joined, Joined):
        answer_join(ctx, room, joined)
        return None
    return answer_join_later(ctx, room, joined)


async def answer_join_later(ctx: Context, room: str, pending: Awaitable[Joined]) -> None:
    answer_join(ctx, room, await pending)


def answer_join(ctx: Context, room: str, joined: Joined) -> None:
    reply: dict[str, Any] = {"type": "room-joined", "room": room}
    if joined.recovered is not None:
        reply["recovered"] = joined.recovered
    if joined.position is not None:
        reply["epoch"] = joined.position.epoch
        reply["seq"] = joined.position.seq
    ctx.reply(reply)
    for missed in joined.messages:
        ctx.send(missed)


def handle_leave(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    ctx.leave(message["room"])
    return {"type": "room-left", "room": message["room"]}


def _room_reply(kind: str, history: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {"type": {"const": kind}, "room": {"type": "string"}}
    if history:  # rooms with history, and joins with since
        properties |= {
            "epoch": {"type": "string"},
            "seq": {"type": "integer"},
            "recovered": {"type": "boolean"},
        }
    return {"type": "object", "properties": properties, "required": ["type", "room"]}


@hookimpl
def register_message_types() -> list[MessageType]:
    return [
        MessageType(
            "join-room",
            handle_join,
            description="Joins a room; with since, recovers the messages missed since then.",
            replies={"room-joined": _room_reply("room-joined", history=True)},
        ),
        MessageType(
            "leave-room",
            handle_leave,
            description="Leaves a room.",
            replies={"room-left": _room_reply("room-left")},
        ),
    ]
