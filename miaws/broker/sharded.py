"""One sharded pub/sub connection to a Redis Cluster primary (``SSUBSCRIBE``, Redis 7+).

:class:`ShardConnection` is :class:`miaws.broker.pubsub.Subscription` (the asyncio protocol
over ``hiredis.Reader``, messages handed on as they are parsed) with what a shard adds:

- ``SSUBSCRIBE`` / ``SUNSUBSCRIBE`` name channels of one hash slot each (the caller groups
  them; Redis answers ``-CROSSSLOT`` otherwise);
- an error reply (``-MOVED slot host:port`` when the slot is not this node's) goes to
  ``on_refused(text)`` and the connection stays open, its other channels with it;
- an ``sunsubscribe`` push the caller did not ask for (Redis sends one per channel of a slot
  this node no longer owns: a failover made it a replica, or the slot moved) goes to
  ``on_lost(channel)``.

The :class:`~miaws.broker.cluster_bus.ClusterBus` holds one per primary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import hiredis

from miaws.broker.pubsub import CHANNELS_PER_COMMAND, Subscription, _command

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

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        on_message = self.on_message
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(exc)
                return
            if reply is False:
                return
            if isinstance(reply, list):
                kind = reply[0]
                if kind == b"smessage":
                    on_message(reply[1], reply[2])
                elif kind == b"ssubscribe":
                    if self.on_confirm is not None:
                        self.on_confirm(reply[1])
                elif kind == b"sunsubscribe":
                    if reply[1] in self.leaving:
                        self.leaving.discard(reply[1])
                    else:
                        self.on_lost(reply[1])
                elif kind == b"pong":
                    self._pong()
            elif isinstance(reply, hiredis.ReplyError):
                self.on_refused(str(reply))
            elif self._pending_replies:  # +OK to AUTH
                self._pending_replies -= 1
                if not self._pending_replies and not self._ready.done():
                    self._ready.set_result(None)

    def _pong(self) -> None:
        self.pongs += 1
        if self._pong_waiters:
            waiter = self._pong_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)

    def ssubscribe(self, slot_channels: Iterable[str]) -> None:
        """SSUBSCRIBE channels that all hash to one slot."""
        self._slot_batched("SSUBSCRIBE", list(slot_channels))

    def sunsubscribe(self, slot_channels: Iterable[str]) -> None:
        """SUNSUBSCRIBE channels that all hash to one slot."""
        names = list(slot_channels)
        self.leaving.update(n.encode() for n in names)
        self._slot_batched("SUNSUBSCRIBE", names)

    def _slot_batched(self, command: str, names: list[str]) -> None:
        out = [
            _command(command, *names[i : i + CHANNELS_PER_COMMAND])
            for i in range(0, len(names), CHANNELS_PER_COMMAND)
        ]
        if out:
            self._write(b"".join(out))
