"""``broadcast``: a message to every client, or to the members of one room.

A sender who is not a member of the room gets ``not-in-room`` and nobody gets anything.
There is no direct reply.
"""

from typing import Any

from miaws import Context, MessageType, hookimpl


def handle_broadcast(ctx: Context, message: dict[str, Any]) -> None:
    payload = {"type": "broadcast", "message": message["message"], "from": ctx.client.client_id}
    ctx.broadcast(payload, message.get("room"))  # the Context adds "room"


@hookimpl
def register_message_types() -> list[MessageType]:
    return [
        MessageType(
            "broadcast",
            handle_broadcast,
            description="Relays message to everyone, or to one room's members.",
            replies={  # not a reply to the sender: what every recipient gets
                "broadcast": {
                    "type": "object",
                    "properties": {
                        "type": {"const": "broadcast"},
                        "message": {},
                        "from": {"type": "string"},
                        "room": {"type": "string"},
                        "epoch": {"type": "string"},
                        "seq": {"type": "integer"},
                    },
                    "required": ["type", "message", "from"],
                }
            },
        )
    ]
