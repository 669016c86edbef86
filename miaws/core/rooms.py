"""Rooms: what a room may be called, how it is keyed, and who may join it.

A client names a room (``lobby``); everything behind the Context (the registry, the broker,
the history) knows it by its *key*, which says which Socket.IO namespace it belongs to.
:func:`room_key` is the one place a key is made and :func:`split_key` the one place it is
taken apart: nothing else puts a namespace and a room name together.

Nothing here delivers anything: the local registry (:mod:`miaws.core.registry`) holds the
members and :mod:`miaws.broker` carries messages to them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["ROOM_NAME", "valid_room", "room_key", "split_key", "room_allowed", "KeyRules"]

ROOM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def valid_room(name: object) -> bool:
    """True for 1 to 64 characters of ``[A-Za-z0-9_.:-]``."""
    return isinstance(name, str) and ROOM_NAME.fullmatch(name) is not None


def room_key(namespace: str, room: str) -> str:
    """The key of a room of a namespace.

    The native endpoint and the Socket.IO namespace ``/`` share rooms, so there the key is the
    room name itself; in any other namespace it is ``<namespace>#<room>`` (``#`` never occurs
    in a room name, so keys cannot collide).
    """
    return room if namespace == "/" else f"{namespace}#{room}"


def split_key(key: str) -> tuple[str, str]:
    """(namespace, room) of a key made by :func:`room_key`."""
    namespace, _, room = key.rpartition("#")
    return namespace or "/", room


def room_allowed(room: str, allowed: frozenset[str] | None) -> bool:
    """The room policy of a client's identity: True if room is listed, or matches a listed
    ``prefix*`` pattern, or nothing is listed (``allowed`` None: any room)."""
    if allowed is None or room in allowed:
        return True
    return any(p.endswith("*") and room.startswith(p[:-1]) for p in allowed)


class _Glob(Protocol):
    @property
    def match(self) -> str: ...


R = TypeVar("R", bound=_Glob)


class KeyRules(Generic[R]):
    """Rules (anything with a ``match`` glob) matched against the room name of a key, first
    match wins, cached per key.  The rules name rooms as clients do, so room ``feed`` of the
    Socket.IO namespace ``/chat`` (key ``/chat#feed``) matches ``feed*`` whatever its
    namespace."""

    CACHE_MAX = 10_000

    def __init__(self, rules: Sequence[R]) -> None:
        self.rules = tuple(rules)
        self._cache: dict[str, R | None] = {}

    def rule(self, key: str) -> R | None:
        """The first rule whose glob matches the room of key, or None."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        room = split_key(key)[1]
        found = next((r for r in self.rules if fnmatch.fnmatchcase(room, r.match)), None)
        if len(self._cache) > self.CACHE_MAX:
            self._cache.clear()
        self._cache[key] = found
        return found
