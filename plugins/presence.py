"""``presence`` -> ``presence``: who is in a room, on every node.

Answers for a member of the room, in a room whose ``rooms.rules`` entry has
``presence: true``: ``members`` (``clientId``, ``user``, ``since`` in ms, oldest first, at most
``rooms.presence_max_members`` of them) and ``count``, the distinct users (a client without a
user counts as its own).  A cut list says ``truncated: true`` and the ``limit``; a list read
while the shared presence (Redis) was unreachable says ``partial: true`` and holds this
node's members only.  Not a member: ``not-in-room``; no presence for the room: ``forbidden``.

In rooms whose rule has ``join_leave: true`` every member also gets ``member-joined`` and
``member-left`` (listed here as this type's other messages, for the AsyncAPI document).
"""

from typing import Any

from miaws import Context, MessageType, hookimpl


async def handle_presence(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    return await ctx.presence(message["room"])


def _member_event(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Sent to every member of a room whose rule has join_leave: true "
        + (
            "when a user (or a client without one) first joins it."
            if kind == "member-joined"
            else "when a user's last connection has been gone for rooms.leave_delay."
        ),
        "properties": {
            "type": {"const": kind},
            "room": {"type": "string"},
            "clientId": {"type": "string"},
            "user": {"type": ["string", "null"]},
        },
        "required": ["type", "room", "clientId", "user"],
    }


PRESENCE_REPLY = {
    "type": "object",
    "properties": {
        "type": {"const": "presence"},
        "room": {"type": "string"},
        "count": {"type": "integer", "description": "distinct users in the room"},
        "members": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "clientId": {"type": "string"},
                    "user": {"type": ["string", "null"]},
                    "since": {"type": "integer", "description": "ms since the epoch"},
                },
                "required": ["clientId", "user", "since"],
            },
        },
        "truncated": {"type": "boolean"},
        "limit": {"type": "integer"},
        "partial": {"type": "boolean"},
    },
    "required": ["type", "room", "count", "members"],
}


@hookimpl
def register_message_types() -> list[MessageType]:
    return [
        MessageType(
            "presence",
            handle_presence,
            description="Lists who is in a room, on every node.",
            replies={
                "presence": PRESENCE_REPLY,
                "member-joined": _member_event("member-joined"),
                "member-left": _member_event("member-left"),
            },
        )
    ]
