"""Time and identity: ISO-8601 timestamps as JavaScript writes them, and client ids.

Both are injectable so that tests can make them deterministic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

__all__ = ["Clock", "iso_timestamp"]

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# os.urandom bytes -> alphabet characters in one translate(): bytes 0..251 map to the 36
# characters 7 times each, 252..255 are dropped (so every character stays equally likely).
_ID_TABLE = bytes(_ID_ALPHABET.encode()[i % 36] for i in range(256))
_ID_REJECT = bytes(range(252, 256))
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
        suffix = b""
        while len(suffix) < 8:
            suffix += os.urandom(12).translate(_ID_TABLE, _ID_REJECT)
        return f"{int(self.time() * 1000)}-{suffix[:8].decode()}"
