"""``join-room`` / ``leave-room`` -> ``room-joined`` / ``room-left``.

Joining twice is fine; leaving a room one is not in is ``not-in-room``.

In a room with history (``history.rooms``), ``room-joined`` carries the room's current
``epoch`` and ``seq``.  A join with ``since: {epoch, seq}`` also recovers: the reply says
``recovered: true`` and is followed at once by every message after that seq, oldest first,
before any new one; or it says ``recovered: false`` (the history no longer covers the gap,
or the epoch is another) and nothing follows.  Joining, reading the history and queuing the
replies happen in one step on the event loop, so no broadcast can slip in between.

With the Redis hub the history is shared (:class:`~miaws.core.history.SharedHistory`): the join
reads it asynchronously, and the hub holds back the room's live messages for this client
until the reply and the missed messages are queued.
"""

from collections.abc import Awaitable
from typing import Any

from miaws import Context, MessageType, hookimpl
from miaws.core.history import Joined, SharedHistory
from miaws.core.model import Outgoing
from miaws.core.rooms import room_key


def handle_join(ctx: Context, message: dict[str, Any]) -> Awaitable[None] | None:
    room = message["room"]
    ctx.join(room)
    reply: dict[str, Any] = {"type": "room-joined", "room": room}
    since = message.get("since")
    missed: list[dict[str, Any]] = []
    history = ctx.hub.history
    key = room_key(ctx.client.namespace, room)
    if history is not None and isinstance(history, SharedHistory):
        if history.covers(key):
            pending = history.join(
                ctx.client, key, (since["epoch"], since["seq"]) if since else None
            )
            return join_shared(ctx, pending, reply)
        history = None
    if history is not None and history.covers(key):
        if since is not None:
            found = history.since(key, since["epoch"], since["seq"])
            reply["recovered"] = found is not None
            missed = found or []
        position = history.position(key)
        reply["epoch"] = position.epoch
        reply["seq"] = position.seq
    elif since is not None:
        reply["recovered"] = False  # this room keeps no history
    ctx.reply(reply)
    ctx.out.extend(Outgoing(m) for m in missed)
    return None


async def join_shared(ctx: Context, pending: Awaitable[Joined], reply: dict[str, Any]) -> None:
    joined = await pending
    if joined.recovered is not None:
        reply["recovered"] = joined.recovered
    if joined.position is not None:
        reply["epoch"] = joined.position.epoch
        reply["seq"] = joined.position.seq
    ctx.reply(reply)
    ctx.out.extend(Outgoing(m) for m in joined.messages)


def handle_leave(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    ctx.leave(message["room"])
    return {"type": "room-left", "room": message["room"]}


@hookimpl
def register_message_types() -> list[MessageType]:
    return [
        MessageType(
            "join-room",
            handle_join,
            description="Joins a room; with since, recovers the messages missed since then.",
        ),
        MessageType("leave-room", handle_leave, description="Leaves a room."),
    ]
