"""Interest-based routing: which partition channels this node subscribes to, and when.

A :class:`~miaws.core.registry.RoomListener` on the node's registry.  When a room key gets
its first local member, its partition's channel (:class:`~miaws.broker.redis_keys.RedisKeys`)
is subscribed to, unless it already is (another local room of the partition); when the last
local room of a partition empties, the channel is let go ``delay`` seconds later, unless a
room of it is occupied again meanwhile: a client that leaves and comes back (a reload, a
flapping network) costs no SUBSCRIBE.  The subscribe and unsubscribe commands of one event
loop step go out together, batched by the bus.

So a node receives the traffic of its partitions only: at most ``partitions`` channels
whatever its number of rooms, and for a room it has no member of only what shares a
partition with one it has (the broker counts those as skipped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from miaws.broker.bus import Bus
from miaws.broker.redis_keys import RedisKeys

__all__ = ["Interest"]


class Interest:
    """The partitions this node has local rooms in, kept subscribed on a :class:`Bus`."""

    def __init__(
        self,
        keys: RedisKeys,
        bus: Bus,
        delay: float,
        on_release: Callable[[str], None] = lambda channel: None,
    ) -> None:
        self.keys = keys
        self.bus = bus
        self.delay = delay
        self.on_release = on_release  # told of each channel let go
        self._rooms: dict[int, int] = {}  # partition -> its occupied local rooms
        self._ready: dict[int, Awaitable[None]] = {}  # subscribed partition -> confirmation
        self._release: dict[int, asyncio.TimerHandle] = {}  # empty partition -> its let-go

    def room_occupied(self, key: str) -> None:
        p = self.keys.partition(key)
        count = self._rooms.get(p, 0)
        self._rooms[p] = count + 1
        if count:
            return
        timer = self._release.pop(p, None)
        if timer is not None:
            timer.cancel()  # still subscribed
        elif p not in self._ready:
            self._ready[p] = self.bus.subscribe([self.keys.partition_channel(p)])

    def room_vacated(self, key: str) -> None:
        p = self.keys.partition(key)
        count = self._rooms.get(p, 0) - 1
        if count > 0:
            self._rooms[p] = count
            return
        self._rooms.pop(p, None)
        if self.delay <= 0:
            self._let_go(p)
        elif p not in self._release:
            self._release[p] = asyncio.get_running_loop().call_later(self.delay, self._let_go, p)

    def _let_go(self, p: int) -> None:
        self._release.pop(p, None)
        if p in self._rooms or self._ready.pop(p, None) is None:
            return
        channel = self.keys.partition_channel(p)
        self.bus.unsubscribe([channel])
        self.on_release(channel)

    def ready(self, key: str) -> Awaitable[None] | None:
        """The confirmation of key's partition subscription while it is pending, else None."""
        ready = self._ready.get(self.keys.partition(key))
        if ready is None or (isinstance(ready, asyncio.Future) and ready.done()):
            return None
        return ready

    def partitions(self) -> int:
        """Partition channels subscribed to now (occupied, or empty and lingering)."""
        return len(self._ready)

    def close(self) -> None:
        for timer in self._release.values():
            timer.cancel()
        self._release.clear()
