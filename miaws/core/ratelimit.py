"""Per-client message rate limit: a token bucket, checked by the dispatch core.

Each client has a bucket of ``burst`` tokens that refills at ``messages_per_second``; each
message takes one.  A message that finds the bucket empty is refused with error
``rate-limited`` and not handled.  A client that *keeps* flooding is closed with 1008:
every refused message adds a strike and every accepted one takes one away, and at
``flood_close_after`` strikes the connection is closed.  So a client a little over the rate
loses only the excess, while one sending far more than it is allowed is soon cut off.

The check is a clock read and a few float operations on the client's own bucket; with
``messages_per_second: 0`` there is no limiter and no check at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from miaws.core.errors import RateLimited
from miaws.core.model import Client

__all__ = ["Limits", "MessageLimits", "TokenBucket", "RateLimiter", "FLOODING", "bucket_size"]

FLOODING = "rate limit exceeded: flooding"


class Limits(Protocol):
    """The ``limits.*`` the dispatch core reads (config's ``LimitsSettings`` is one)."""

    @property
    def messages_per_second(self) -> float: ...
    @property
    def burst(self) -> int: ...
    @property
    def flood_close_after(self) -> int: ...
    @property
    def max_rooms_per_client(self) -> int: ...
    @property
    def max_room_members(self) -> int: ...


@dataclass(frozen=True)
class MessageLimits:
    """:class:`Limits` with config's defaults: no rate limit, 1000 rooms per client."""

    messages_per_second: float = 0.0
    burst: int = 0
    flood_close_after: int = 100
    max_rooms_per_client: int = 1000
    max_room_members: int = 0


def bucket_size(rate: float, burst: int) -> float:
    """The size of a bucket refilled at rate: burst, or when that is 0 one second's worth
    (at least 1).  For messages (``limits.burst``) and connections (``limits.connection_burst``)."""
    return float(burst or max(1, math.ceil(rate)))


class TokenBucket:
    """One client's tokens; ``strikes`` counts refusals net of acceptances."""

    __slots__ = ("tokens", "stamp", "strikes")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.strikes = 0


class RateLimiter:
    """``allow(client)`` for every incoming message; see the module docstring."""

    __slots__ = ("rate", "burst", "close_after", "now")

    def __init__(
        self,
        rate: float,
        burst: int = 0,
        close_after: int = 0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = bucket_size(rate, burst)
        self.close_after = close_after
        self.now = now

    @classmethod
    def from_settings(cls, limits: Limits) -> RateLimiter | None:
        """The limiter for ``limits.*``, or None when rate limiting is off."""
        if limits.messages_per_second <= 0:
            return None
        return cls(limits.messages_per_second, limits.burst, limits.flood_close_after)

    def allow(self, client: Client) -> bool:
        """Take a token for one message: True to handle it, False to refuse it."""
        now = self.now()
        bucket = client.bucket
        if bucket is None:
            client.bucket = TokenBucket(self.burst - 1.0, now)
            return True
        tokens = bucket.tokens + (now - bucket.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            if bucket.strikes:
                bucket.strikes -= 1
            return True
        bucket.tokens = tokens
        bucket.strikes += 1
        return False

    def flooding(self, client: Client) -> bool:
        """After a refusal: has this client earned a close (1008)?"""
        bucket = client.bucket
        return bool(self.close_after) and bucket is not None and bucket.strikes >= self.close_after

    def refusal(self, client: Client) -> RateLimited:
        """The error for a refused message, saying when the next one will be accepted."""
        bucket = client.bucket
        missing = 1.0 - bucket.tokens if bucket is not None else 0.0
        return RateLimited(
            f"Too many messages: at most {self.rate:g} per second (burst {self.burst:g})",
            {"retryAfter": round(max(missing, 0.0) / self.rate, 3)},
        )
