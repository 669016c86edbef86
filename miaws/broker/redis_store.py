"""The Redis broker's shared keys (:meth:`miaws.broker.base.Broker.store`): ``SET ... PX``,
``NX`` when nothing may be overwritten, under :meth:`RedisKeys.store` (one key a call, so it
works on one server and on a cluster alike)."""

from __future__ import annotations

from typing import Any

from miaws.broker.bus import Bus, BusErrors
from miaws.core.errors import BrokerUnavailable

__all__ = ["Store"]

# SET NX, else the value kept: one round trip and atomic on one server and on a cluster
# (a MULTI pipeline is not available on RedisCluster).
SET_IF_ABSENT = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return {1} end
return {0, redis.call('GET', KEYS[1])}
"""


class Store:
    """Shared values with a time to live, for :meth:`Broker.store`."""

    def __init__(self, bus: Bus, node: str) -> None:
        self._bus = bus
        self._node = node
        self._set_if_absent: Any = None

    async def store(self, name: str, value: bytes, ttl: float, if_absent: bool) -> bytes | None:
        """See :meth:`Broker.store`; :class:`BrokerUnavailable` when Redis cannot be reached."""
        ms = max(1, round(ttl * 1000))
        try:
            if not if_absent:
                await self._bus.redis.set(name, value, px=ms)
                return None
            if self._set_if_absent is None:
                self._set_if_absent = self._bus.script(SET_IF_ABSENT)
            reply = await self._bus.run(self._set_if_absent, [name], [value, ms])
        except BusErrors as exc:
            raise BrokerUnavailable(self._node, f"redis error: {exc}") from None
        if reply[0]:
            return None
        return bytes(reply[1]) if reply[1] is not None else b""
