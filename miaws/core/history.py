"""Room history: the last messages of each room, so a client that reconnects can recover.

A room whose name matches a ``history.rooms`` rule keeps its last ``size`` broadcasts for
``ttl`` seconds.  Every broadcast to such a room is stamped with ``epoch`` and ``seq``:
``seq`` counts the room's messages (1, 2, 3, ...) and ``epoch`` names the history the
count belongs to.  A new epoch starts whenever the history is lost: a restart of the
in-memory broker, or a room left untouched (no message, no join) for longer than its
``ttl`` (its counter is dropped with its last message).  A position ``(epoch, seq)``
from another epoch can therefore never be resumed, only reported as lost.

:class:`RoomHistory` is the interface a broker uses to stamp broadcasts and answer joins
synchronously; :class:`MemoryHistory` is the in-memory one (the memory broker's).  Everything
here runs synchronously on the event loop, so stamping a broadcast and reading the history
while joining a room cannot interleave.  A history shared by several nodes (Redis streams,
:mod:`miaws.broker.redis_history`) is stamped by the broker and read asynchronously; it is the
Redis broker's own business.  What a join found travels as :class:`Joined` either way.

Histories are kept per room *key* (see :mod:`miaws.core.rooms`); the rules match room names.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from miaws.core.rooms import KeyRules

__all__ = [
    "HistoryRoom",
    "RoomHistory",
    "MemoryHistory",
    "Position",
    "Joined",
    "Rules",
    "history_from_rules",
]


@dataclass(frozen=True)
class HistoryRoom:
    """One history rule (``history.rooms`` in config.yaml): rooms whose name matches the glob
    keep their last ``size`` messages for ``ttl`` seconds.  A ``size`` of 0 matches and keeps
    nothing: a ``rooms.rules`` entry without history, which later rules must not override."""

    match: str
    size: int = 100
    ttl: float = 300.0


class Position:
    """Where a room's history stands: its epoch and the seq of its last message."""

    __slots__ = ("epoch", "seq")

    def __init__(self, epoch: str, seq: int) -> None:
        self.epoch = epoch
        self.seq = seq

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Position) and (self.epoch, self.seq) == (other.epoch, other.seq)

    def __repr__(self) -> str:
        return f"Position({self.epoch!r}, {self.seq})"


class RoomHistory(Protocol):
    """What the memory broker needs of a history: stamp, keep, position, since."""

    def covers(self, room: str) -> bool:
        """True if room matches a history rule (its broadcasts are stamped and kept)."""
        ...

    def stamp(self, room: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A copy of payload stamped with the room's ``epoch`` and next ``seq``; nothing is
        used up or kept until :meth:`keep`.  Only called for rooms that :meth:`covers`."""
        ...

    def keep(self, room: str, stamped: dict[str, Any]) -> None:
        """Keep what :meth:`stamp` just returned (its seq is now the room's last).  The
        broker calls it once the copy is encoded, with nothing in between, so a payload
        that cannot be sent never takes a seq."""
        ...

    def position(self, room: str) -> Position:
        """The room's current epoch and last seq (0 before its first message)."""
        ...

    def since(self, room: str, epoch: str, seq: int) -> list[dict[str, Any]] | None:
        """Every kept message of room after seq, oldest first; ``None`` when they cannot
        all be given (another epoch, seq in the future, or some already dropped)."""
        ...


class Joined(NamedTuple):
    """What joining a room found (``ctx.join(room, since=...)``).

    ``position``: the room's history position, or None when the room keeps no history (or it
    could not be read: the broker is down).  ``recovered``: None for a join without ``since``;
    else whether every message after ``since`` is in ``messages``.  ``messages``: what to send
    the joining client after the reply, in order, each once (the missed messages, and with a
    shared history the live ones held back while it was read).
    """

    position: Position | None
    recovered: bool | None
    messages: list[dict[str, Any]]


class Rules(KeyRules[HistoryRoom]):
    """The rules that keep a history, matched by glob against the room name of a key (first
    match wins; see :class:`~miaws.core.rooms.KeyRules`)."""

    def rule(self, key: str) -> HistoryRoom | None:
        """The first rule whose glob matches the room of key, or None (also when that rule
        keeps no history: a room rule without one, :class:`miaws.core.presence.RoomRules`)."""
        found = super().rule(key)
        return found if found is not None and found.size >= 1 else None


@dataclass
class _Room:
    epoch: str
    size: int
    ttl: float
    seq: int = 0
    touched: float = 0.0  # monotonic time of the last append, join or recovery
    kept: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)


class MemoryHistory:
    """Room history of this process, lost (new epochs) when the process restarts."""

    def __init__(
        self, rules: Sequence[HistoryRoom], now: Callable[[], float] = time.monotonic
    ) -> None:
        self._rules = Rules(rules)
        self.rules = self._rules.rules
        self.rule = self._rules.rule
        self._now = now
        self._rooms: OrderedDict[str, _Room] = OrderedDict()  # least recently used first

    def covers(self, room: str) -> bool:
        return self.rule(room) is not None

    def _state(self, room: str) -> _Room:
        now = self._now()
        self._forget_idle(now)
        state = self._rooms.get(room)
        if state is None:
            rule = self.rule(room)
            assert rule is not None, f"room {room!r} has no history rule"
            state = _Room(secrets.token_hex(6), rule.size, rule.ttl)
            self._rooms[room] = state
        state.touched = now
        self._rooms.move_to_end(room)
        return state

    def _forget_idle(self, now: float) -> None:
        """Drop rooms untouched for longer than their ttl: their messages have all expired,
        and with them goes the room's counter (its next message starts a new epoch)."""
        while self._rooms:
            room, state = next(iter(self._rooms.items()))
            if now - state.touched <= state.ttl:
                break
            del self._rooms[room]

    def _expire(self, state: _Room, now: float) -> None:
        kept = state.kept
        while kept and (now - kept[0][0] > state.ttl or len(kept) > state.size):
            kept.popleft()

    def stamp(self, room: str, payload: dict[str, Any]) -> dict[str, Any]:
        state = self._state(room)
        return {**payload, "epoch": state.epoch, "seq": state.seq + 1}

    def keep(self, room: str, stamped: dict[str, Any]) -> None:
        state = self._rooms[room]  # touched by stamp() just now
        assert (stamped["epoch"], stamped["seq"]) == (state.epoch, state.seq + 1), "not stamped"
        now = state.touched
        state.seq += 1
        state.kept.append((now, stamped))
        self._expire(state, now)

    def append(self, room: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Stamp and keep payload at once; the stamped copy."""
        stamped = self.stamp(room, payload)
        self.keep(room, stamped)
        return stamped

    def position(self, room: str) -> Position:
        state = self._state(room)
        return Position(state.epoch, state.seq)

    def since(self, room: str, epoch: str, seq: int) -> list[dict[str, Any]] | None:
        state = self._state(room)
        if epoch != state.epoch or seq > state.seq or seq < 0:
            return None
        if seq == state.seq:
            return []
        self._expire(state, state.touched)
        kept = state.kept
        if not kept or kept[0][1]["seq"] > seq + 1:
            return None  # the message right after seq is gone
        first = kept[0][1]["seq"]
        return [payload for _, payload in itertools.islice(kept, seq + 1 - first, None)]

    def rooms(self) -> int:
        """How many rooms have history state now (for tests and metrics)."""
        return len(self._rooms)


def history_from_rules(rules: Sequence[HistoryRoom]) -> MemoryHistory | None:
    """The in-memory history for these rules, or None when there are none (history off)."""
    return MemoryHistory(rules) if rules else None
