"""Time and identity: ISO-8601 timestamps as JavaScript writes them, and client ids.

Both are injectable so that tests can make them deterministic.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

__all__ = ["Clock", "iso_timestamp"]

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_prefix_second = -1
_prefix = ""
_last_millis = -1
_last = ""


def iso_timestamp(epoch: float) -> str:
    """``2026-11-27T05:32:06.123Z`` for a Unix time; caches the last millisecond and the
    formatted second (a busy server stamps many messages per millisecond)."""
    global _prefix_second, _prefix, _last_millis, _last
    millis = int(epoch * 1000)
    if millis == _last_millis:
        return _last
    second, ms = divmod(millis, 1000)
    if second != _prefix_second:
        _prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _prefix_second = second
    _last = f"{_prefix}.{ms:03d}Z"
    _last_millis = millis
    return _last


class Clock:
    """Wall-clock time and id generation for the dispatch core."""

    __slots__ = ("time",)

    def __init__(self, time_source: Callable[[], float] = time.time) -> None:
        self.time = time_source

    def timestamp(self) -> str:
        return iso_timestamp(self.time())

    def new_client_id(self) -> str:
        """``<ms epoch>-<8 chars of [a-z0-9]>``, as the replaced system wrote them."""
        suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
        return f"{int(self.time() * 1000)}-{suffix}"
