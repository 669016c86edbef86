"""The admission limits that need no identity, sans-I/O: a node's connection rate and the
connections open per client address.

:class:`ConnectionRate` is one token bucket for the whole node (``limits.connection_rate``
tokens a second, ``limits.connection_burst`` at most); each new connection takes a token.
:class:`AddressCounts` counts the connections each address holds
(``limits.max_connections_per_ip``); a connection that took a count gives it back when it
ends, and an address with none left is forgotten, so the table holds only addresses with open
connections.

Both take their limits on every call rather than at construction: ``limits.*`` can change on a
reload, and the counts of connections already open must survive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from miaws.core.ratelimit import bucket_size

__all__ = ["ConnectionRate", "AddressCounts"]


class ConnectionRate:
    """A token bucket shared by every new connection of a node."""

    __slots__ = ("tokens", "stamp", "now")

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.tokens: float | None = None  # None: full (nothing taken yet)
        self.stamp = 0.0
        self.now = now

    def take(self, rate: float, burst: int = 0) -> float:
        """Take a token at rate tokens a second: 0.0 when taken, else the seconds until one
        will be there (nothing taken)."""
        size = bucket_size(rate, burst)
        now = self.now()
        if self.tokens is None:
            tokens = size
        else:
            tokens = min(size, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate


class AddressCounts:
    """Open connections per client address."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def take(self, address: str, cap: int) -> bool:
        """Count one more connection of address unless it holds cap already (False)."""
        held = self.counts.get(address, 0)
        if held >= cap:
            return False
        self.counts[address] = held + 1
        return True

    def release(self, address: str) -> None:
        """One connection of address (that :meth:`take` counted) has ended."""
        held = self.counts.get(address, 0)
        if held <= 1:
            self.counts.pop(address, None)
        else:
            self.counts[address] = held - 1

    def held(self, address: str) -> int:
        return self.counts.get(address, 0)
