"""Presence, sans I/O: room rules, who is in a room, and when a join or a leave counts.

**Rules.** ``rooms.rules`` in config.yaml is a list of :class:`RoomRule`, matched by glob
against the room *name* (whatever its namespace), first match wins (:class:`RoomRules`).  A
rule says whether the ``presence`` request answers for its rooms, whether members get
``member-joined`` / ``member-left``, and what history the rooms keep.

**Identity.** A member is one connection (``clientId``), but joins and leaves are counted per
*identity*: the client's ``user`` when it has one, else the connection itself
(:func:`identity`).  A second connection of a user already in the room is not a new join; the
user leaves when its last connection does.

**Leave delay.** A leave counts only once it has lasted ``rooms.leave_delay`` seconds: a
store marks the identity (or the emptied room) *pending* with a token, and a timer confirms
it later; a join in between takes the mark away, so a client that reconnects within the delay
causes no event at all.  Only the caller that sets a mark and later confirms it with the same
token reports the event, which is what makes an event happen once, on one node or on many.

:class:`PresenceStore` is what a broker keeps presence in; :class:`MemoryPresence` (here) is
the store of one process, :mod:`miaws.broker.redis_presence` the one shared by nodes.  Both
implement the same four steps (join, leave, confirm_left, confirm_vacated) with the same
meaning; :class:`~miaws.broker.presence.PresenceTracker` drives them and runs the timers.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from miaws.core.history import HistoryRoom
from miaws.core.rooms import KeyRules

__all__ = [
    "HistoryLimits",
    "RoomRule",
    "RoomRules",
    "Member",
    "JoinResult",
    "LeaveResult",
    "PresenceStore",
    "PresenceReader",
    "MemoryPresence",
    "identity",
    "presence_reply",
    "new_token",
]


@dataclass(frozen=True)
class HistoryLimits:
    """A rule's ``history: {size, ttl}``: keep the last ``size`` messages for ``ttl`` s."""

    size: int = 100
    ttl: float = 300.0


@dataclass(frozen=True)
class RoomRule:
    """One entry of ``rooms.rules``."""

    match: str
    presence: bool = False  # the presence request answers
    join_leave: bool = False  # members get member-joined / member-left
    history: HistoryLimits | None = None  # None: no history for these rooms


class RoomRules(KeyRules[RoomRule]):
    """``rooms.rules``, matched against the room name of a key, first match wins."""

    def history_rules(self) -> list[HistoryRoom]:
        """The history part, as the brokers take it.  A rule without history comes out as
        a size-0 :class:`HistoryRoom` (no history), so first-match-wins holds there too."""
        return [
            HistoryRoom(r.match, r.history.size, r.history.ttl)
            if r.history is not None
            else HistoryRoom(r.match, 0)
            for r in self.rules
        ]


def identity(client_id: str, user: str | None) -> str:
    """What joins and leaves are counted by: the user, else the connection.  The user is
    JSON-quoted, so an identity never holds a raw newline (the stores' field separator)."""
    return "u:" + json.dumps(user) if user is not None else f"c:{client_id}"


def new_token() -> str:
    """A mark's token: names one pending leave, so only its setter can confirm it."""
    return secrets.token_hex(8)


class Member(NamedTuple):
    """One connection in a room, as the presence reply lists it."""

    client_id: str
    user: str | None
    since: int  # ms since the epoch, when it joined

    def as_json(self) -> dict[str, Any]:
        return {"clientId": self.client_id, "user": self.user, "since": self.since}


class JoinResult(NamedTuple):
    """What a join changed: ``joined``: its identity is new to the room (no pending leave
    of it); ``occupied``: the room was empty cluster-wide (and not pending vacated)."""

    joined: bool = False
    occupied: bool = False


class LeaveResult(NamedTuple):
    """What a leave marked pending: ``left``: the identity's last connection went (confirm
    with ``left_mark``); ``vacated``: the room is empty (confirm with ``vacated_mark``)."""

    left_mark: str | None = None
    vacated_mark: str | None = None


Swept = Callable[[str, LeaveResult, float], None]
"""Told of leaves a store marked for members of a node that died: (room key, marks, seconds
they have been gone already)."""
LocalMembers = Callable[[], Sequence[tuple[str, Member]]]
"""(room key, member) of every member this node tracks."""


class PresenceStore(Protocol):
    """Where a broker keeps presence; every step may go over the network (async)."""

    async def start(self, swept: Swept, local: LocalMembers) -> None:
        """Start any background work (watching other nodes)."""
        ...

    async def close(self) -> None:
        """Stop it."""
        ...

    async def join(self, key: str, member: Member) -> JoinResult:
        """Add member to the room key; a member already there changes nothing."""
        ...

    async def leave(self, key: str, member: Member) -> LeaveResult:
        """Take member out; mark its identity (and the room, if now empty) pending."""
        ...

    async def confirm_left(self, key: str, mark: str) -> bool:
        """True (once) if the identity of mark is still gone: it has left."""
        ...

    async def confirm_vacated(self, key: str, mark: str) -> bool:
        """True (once) if the room is still empty since mark: it is vacated."""
        ...

    async def members(self, key: str) -> list[Member]:
        """Every member of the room key, on every node."""
        ...


class PresenceReader(Protocol):
    """What the Context needs to answer a ``presence`` request (the tracker is one)."""

    cap: int

    def rule(self, key: str) -> RoomRule | None: ...

    async def members(self, key: str) -> tuple[list[Member], bool]:
        """(members on every node, partial: only this node's could be read)."""
        ...


def left_member(mark: str) -> Member:
    """The member a leave mark names (``token \\n`` and a member as :func:`encode_member`)."""
    return decode_member(mark.split("\n", 1)[1])


def encode_member(member: Member) -> str:
    """``identity \\n client id \\n user as JSON \\n since``: no part holds a newline."""
    who = identity(member.client_id, member.user)
    return f"{who}\n{member.client_id}\n{json.dumps(member.user)}\n{member.since}"


def decode_member(text: str) -> Member:
    _, client_id, user, since = text.split("\n", 3)
    return Member(client_id, json.loads(user), int(since))


class MemoryPresence:
    """The presence of one process (the memory broker's store).  Its steps never wait
    (``synchronous``): the tracker runs them at once instead of in tasks."""

    synchronous = True

    def __init__(self) -> None:
        self._members: dict[str, dict[str, Member]] = {}  # key -> client id -> member
        self._counts: dict[str, dict[str, int]] = {}  # key -> identity -> connections
        self._gone: dict[str, dict[str, str]] = {}  # key -> identity -> pending leave mark
        self._vacating: dict[str, str] = {}  # key -> pending vacate mark

    async def start(self, swept: Swept, local: LocalMembers) -> None:
        pass  # one process: no other node can die

    async def close(self) -> None:
        pass

    async def join(self, key: str, member: Member) -> JoinResult:
        members = self._members.setdefault(key, {})
        if member.client_id in members:
            return JoinResult()
        members[member.client_id] = member
        who = identity(member.client_id, member.user)
        counts = self._counts.setdefault(key, {})
        counts[who] = counts.get(who, 0) + 1
        joined = counts[who] == 1 and self._gone.get(key, {}).pop(who, None) is None
        occupied = len(members) == 1 and self._vacating.pop(key, None) is None
        return JoinResult(joined, occupied)

    async def leave(self, key: str, member: Member) -> LeaveResult:
        members = self._members.get(key)
        if members is None or members.pop(member.client_id, None) is None:
            return LeaveResult()
        who = identity(member.client_id, member.user)
        counts = self._counts[key]
        counts[who] -= 1
        left = vacated = None
        if counts[who] <= 0:
            del counts[who]
            left = f"{new_token()}\n{encode_member(member)}"
            self._gone.setdefault(key, {})[who] = left
        if not members:
            del self._members[key], self._counts[key]
            vacated = self._vacating[key] = new_token()
        return LeaveResult(left, vacated)

    async def confirm_left(self, key: str, mark: str) -> bool:
        gone = self._gone.get(key)
        who = mark.split("\n", 2)[1]
        if gone is None or gone.get(who) != mark:
            return False
        del gone[who]
        if not gone:
            del self._gone[key]
        return True

    async def confirm_vacated(self, key: str, mark: str) -> bool:
        if self._vacating.get(key) != mark:
            return False
        del self._vacating[key]
        return True

    async def members(self, key: str) -> list[Member]:
        return list(self._members.get(key, {}).values())


def presence_reply(
    room: str, members: Sequence[Member], cap: int, partial: bool = False
) -> dict[str, Any]:
    """The ``presence`` reply: members oldest first, at most cap of them (0: all), and
    ``count``, the distinct identities.  A cut list says ``truncated`` and the ``limit``."""
    ordered = sorted(members, key=lambda m: (m.since, m.client_id))
    count = len({identity(m.client_id, m.user) for m in ordered})
    reply: dict[str, Any] = {"type": "presence", "room": room, "count": count}
    if cap and len(ordered) > cap:
        ordered = ordered[:cap]
        reply["truncated"] = True
        reply["limit"] = cap
    if partial:
        reply["partial"] = True  # the shared presence could not be read: this node's only
    reply["members"] = [m.as_json() for m in ordered]
    return reply
