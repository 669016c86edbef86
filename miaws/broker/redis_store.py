"""The Redis broker's shared keys (:meth:`miaws.broker.base.Broker.store`): ``SET ... PX``,
``NX`` when nothing may be overwritten, under ``<broker.channel_prefix>:store:<key>``."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from miaws.core.errors import BrokerUnavailable

__all__ = ["store"]


async def store(
    redis: Any,
    prefix: str,
    node: str,
    key: str,
    value: bytes,
    ttl: float,
    if_absent: bool,
) -> bytes | None:
    """See :meth:`Broker.store`; :class:`BrokerUnavailable` when Redis cannot be reached."""
    name = f"{prefix}:store:{key}"
    ms = max(1, round(ttl * 1000))
    try:
        if not if_absent:
            await redis.set(name, value, px=ms)
            return None
        pipe = redis.pipeline(transaction=True)  # SET NX GET needs Redis 7; this works on 6
        pipe.set(name, value, px=ms, nx=True)
        pipe.get(name)
        stored, current = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(node, f"redis error: {exc}") from None
    if stored:
        return None
    return bytes(current) if current is not None else b""
