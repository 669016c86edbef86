"""One sharded pub/sub connection to a Redis Cluster primary (``SSUBSCRIBE``, Redis 7+).

:class:`ShardConnection` is :class:`miaws.broker.pubsub.Subscription` (the asyncio protocol
over ``hiredis.Reader``; ``smessage`` pushes are handed on as they are parsed, like
``message``) with what a shard adds, in :meth:`ShardConnection.handle_reply`:

- an error reply (``-MOVED slot host:port`` when the slot is not this node's) goes to
  ``on_refused(text)`` and the connection stays open, its other channels with it;
- an ``sunsubscribe`` push the caller did not ask for (Redis sends one per channel of a slot
  this node no longer owns: a failover made it a replica, or the slot moved) goes to
  ``on_lost(channel)``.

``SSUBSCRIBE`` / ``SUNSUBSCRIBE`` must name channels of one hash slot each (Redis answers
``-CROSSSLOT`` otherwise): the caller groups them.  The
:class:`~miaws.broker.cluster_bus.ClusterBus` holds one per primary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import hiredis

from miaws.broker.pubsub import Subscription

__all__ = ["ShardConnection"]


def _ignore(_: object) -> None:
    pass


class ShardConnection(Subscription):
    """A :class:`Subscription` in sharded mode; see the module docstring."""

    def __init__(
        self,
        on_message: Callable[[bytes, bytes], None],
        on_confirm: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(on_message, on_confirm)
        self.on_lost: Callable[[bytes], None] = _ignore
        self.on_refused: Callable[[str], None] = _ignore
        self.leaving: set[bytes] = set()  # channels we sent SUNSUBSCRIBE for

    def handle_reply(self, reply: Any) -> bool:
        if isinstance(reply, hiredis.ReplyError):
            self.on_refused(str(reply))
            return True
        if isinstance(reply, list) and reply[0] == b"sunsubscribe":
            if reply[1] in self.leaving:
                self.leaving.discard(reply[1])
            else:
                self.on_lost(reply[1])
            return True
        return super().handle_reply(reply)

    def ssubscribe(self, slot_channels: Iterable[str]) -> None:
        """SSUBSCRIBE channels that all hash to one slot."""
        self.subscribe(slot_channels, "SSUBSCRIBE")

    def sunsubscribe(self, slot_channels: Iterable[str]) -> None:
        """SUNSUBSCRIBE channels that all hash to one slot."""
        names = list(slot_channels)
        self.leaving.update(n.encode() for n in names)
        self.unsubscribe(names, "SUNSUBSCRIBE")
