"""The Context: what a message handler gets besides the message.

A handler answers, broadcasts and joins rooms through its Context and nothing else: it never
sees the registry, the broker or the history.  Rooms are named as the client names them; the
Context turns a name into the room's key (:func:`miaws.core.rooms.room_key`, by the sender's
namespace) before anything below it sees the room, so a plugin is right in every Socket.IO
namespace without knowing about namespaces.

What a handler asks for is queued as :class:`~miaws.core.model.Outgoing` messages, which the
dispatcher hands back to the transport and the transport to ``Service.deliver``: replies go
to the sender, broadcasts through the broker.  Joins and leaves happen at once (they change
membership), through the :class:`Membership` the dispatcher was given: the broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from miaws.core.clock import Clock
from miaws.core.errors import Forbidden, InvalidMessage, NotInRoom, clip
from miaws.core.history import Joined, Position
from miaws.core.model import Client, Outgoing
from miaws.core.presence import PresenceReader, presence_reply
from miaws.core.registry import LocalRegistry
from miaws.core.rooms import room_allowed, room_key, valid_room

__all__ = ["Context", "Membership", "JoinGate"]

JoinGate = Callable[[Client, str], Awaitable[None]]
"""``gate(client, room)``: asked before each join of a room the client is not in yet; raises
:class:`Forbidden` to refuse (``rooms.join_proxy_url``: a backend decides)."""


class Membership(Protocol):
    """What a Context needs of the broker (:class:`miaws.broker.base.Broker` is one)."""

    @property
    def registry(self) -> LocalRegistry:
        """This node's clients and rooms."""
        ...

    def join(
        self, client: Client, key: str, since: Position | None = None
    ) -> Joined | Awaitable[Joined]:
        """Make client a member of the room key and read its history (see Broker.join)."""
        ...

    def leave(self, client: Client, key: str) -> bool:
        """Take client out of the room key; False if it was not a member."""
        ...


class Context:
    """The sender, the request's id, and the ways to answer.

    :ivar client: the sender (:class:`~miaws.core.model.Client`: ``client_id``, ``rooms``,
        ``transport``, ``user``, ...).
    :ivar message_id: the request's ``id``, or None.
    """

    __slots__ = (
        "client",
        "clock",
        "message_id",
        "_rooms",
        "_out",
        "_room_limits",
        "_join_gate",
        "_presence",
    )

    def __init__(
        self,
        client: Client,
        rooms: Membership,
        clock: Clock,
        message_id: Any,
        room_limits: tuple[int, int] = (0, 0),
        join_gate: JoinGate | None = None,
        presence: PresenceReader | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.message_id = message_id
        self._rooms = rooms
        self._out: list[Outgoing] = []  # what the dispatcher returns to the transport
        self._room_limits = room_limits  # (max rooms per client, max room members); 0: none
        self._join_gate = join_gate
        self._presence = presence

    def timestamp(self) -> str:
        return self.clock.timestamp()

    # ------------------------------------------------------------ answering
    def reply(self, payload: dict[str, Any]) -> None:
        """Send payload to the sender, adding ``timestamp`` and the request's ``id``."""
        payload.setdefault("timestamp", self.clock.timestamp())
        if self.message_id is not None:
            payload["id"] = self.message_id
        self._out.append(Outgoing(payload))

    def send(self, payload: dict[str, Any]) -> None:
        """Send payload to the sender as it is (no ``timestamp``, no ``id`` added), after
        what was queued before: for messages that are not the reply, such as the ones a
        join recovered."""
        self._out.append(Outgoing(payload))

    def broadcast(self, payload: dict[str, Any], room: str | None = None) -> None:
        """Send payload to every client of the sender's namespace (room None) or to the
        members of room, on every node.

        Adds ``room`` (for a room) and ``timestamp``.  Raises :class:`NotInRoom` if the sender
        is not a member.
        """
        key = None
        if room is not None:
            self._check_room(room)
            key = room_key(self.client.namespace, room)
            if not self._rooms.registry.is_member(key, self.client):
                raise NotInRoom(room)
            payload["room"] = room
        payload.setdefault("timestamp", self.clock.timestamp())
        self._out.append(Outgoing(payload, True, key))

    # ------------------------------------------------------------ rooms
    def rooms(self) -> list[str]:
        """The rooms the sender is in (in its own namespace), by name, sorted."""
        rooms: list[str] = self.client.identity()["rooms"]
        return rooms

    def is_member(self, room: str) -> bool:
        """True if the sender is a member of room (in its own namespace)."""
        return self._rooms.registry.is_member(room_key(self.client.namespace, room), self.client)

    def require_member(self, room: str) -> None:
        """Raise :class:`NotInRoom` unless the sender is a member of room."""
        if not self.is_member(room):
            raise NotInRoom(room)

    def join(self, room: str, since: Position | None = None) -> Joined | Awaitable[Joined]:
        """Make the sender a member of room (joining twice is fine) and read its history.

        The :class:`~miaws.core.history.Joined` says the room's position (None when it keeps
        no history), whether ``since`` was recovered, and the messages to send the sender
        after the reply (with :meth:`send`).  When the history is shared by several nodes it
        is read over the network: then the result is an awaitable, and the room's live
        messages for the sender are held back until it is done, so that the reply, the
        recovered messages and the live ones arrive in that order, each once.

        Raises :class:`Forbidden` when the client's token does not list the room, or when
        ``limits.max_rooms_per_client`` or ``limits.max_room_members`` would be exceeded.
        With ``rooms.join_proxy_url`` a backend is asked first (unless the sender is a member
        already): then the result is an awaitable, which raises :class:`Forbidden` when the
        backend refuses (or :class:`~miaws.core.errors.BackendError` /
        :class:`~miaws.core.errors.BackendTimeout`).
        """
        self._check_room(room)
        client = self.client
        key = room_key(client.namespace, room)
        if not room_allowed(room, client.allowed_rooms):
            raise Forbidden(f"Not allowed to join room {room}", {"room": room})
        gate = self._join_gate
        if gate is not None and not self._rooms.registry.is_member(key, client):
            return self._join_asked(gate(client, room), room, key, since)
        return self._join(room, key, since)

    async def _join_asked(
        self, asked: Awaitable[None], room: str, key: str, since: Position | None
    ) -> Joined:
        await asked  # raises when the backend refuses
        joined = self._join(room, key, since)
        return joined if isinstance(joined, Joined) else await joined

    def _join(self, room: str, key: str, since: Position | None) -> Joined | Awaitable[Joined]:
        """The join itself, within the room limits."""
        client = self.client
        max_rooms, max_members = self._room_limits
        registry = self._rooms.registry
        if (max_rooms or max_members) and not registry.is_member(key, client):
            if max_rooms and len(client.rooms) >= max_rooms:
                raise Forbidden(
                    f"Room limit reached: at most {max_rooms} rooms per client",
                    {"room": room, "limit": "limits.max_rooms_per_client", "max": max_rooms},
                )
            if max_members and registry.room_size(key) >= max_members:
                raise Forbidden(
                    f"Room {room} is full: at most {max_members} members",
                    {"room": room, "limit": "limits.max_room_members", "max": max_members},
                )
        return self._rooms.join(client, key, since)

    def leave(self, room: str) -> None:
        """Take the sender out of room; raises :class:`NotInRoom` if it was not a member."""
        self._check_room(room)
        if not self._rooms.leave(self.client, room_key(self.client.namespace, room)):
            raise NotInRoom(room)

    def presence(self, room: str) -> Awaitable[dict[str, Any]]:
        """The ``presence`` reply for room, on every node: its members (oldest first, at most
        ``rooms.presence_max_members``) and ``count``, the distinct users.

        Raises :class:`NotInRoom` unless the sender is a member, :class:`Forbidden` unless
        the room's rule (``rooms.rules``) has ``presence``."""
        self._check_room(room)
        self.require_member(room)
        key = room_key(self.client.namespace, room)
        reader = self._presence
        rule = None if reader is None else reader.rule(key)
        if reader is None or rule is None or not rule.presence:
            raise Forbidden(f"Presence is not enabled for room {room}", {"room": room})
        return self._presence_reply(reader, room, key)

    @staticmethod
    async def _presence_reply(reader: PresenceReader, room: str, key: str) -> dict[str, Any]:
        members, partial = await reader.members(key)
        return presence_reply(room, members, reader.cap, partial)

    @staticmethod
    def _check_room(room: str) -> None:
        if not valid_room(room):
            raise InvalidMessage(
                f"Invalid room name: {clip(repr(room))}",
                {"path": "/room", "reason": "must be 1-64 characters of [A-Za-z0-9_.:-]"},
            )
