"""The hub: every connected client and every room, shared by all transports.

Its interface follows Django Channels' channel layer (``group_add`` / ``group_discard`` /
``group_send``) plus the registry queries operators need.  :class:`MemoryHub` is the
single-process implementation; another backend (Redis) implements the same methods, so no
handler changes.  A broadcast is serialised once (:class:`Encoded`) and the same bytes go to
every recipient.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from miaws.core.model import Client, Encoded

if TYPE_CHECKING:
    from miaws.broker.cluster import ClusterView
    from miaws.config import Settings
    from miaws.core.history import RoomHistory, SharedHistory

__all__ = [
    "Hub",
    "MemoryHub",
    "ROOM_NAME",
    "valid_room",
    "make_hub",
    "room_key",
    "split_key",
    "send_to_namespace",
]

ROOM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def valid_room(name: object) -> bool:
    """True for 1 to 64 characters of ``[A-Za-z0-9_.:-]``."""
    return isinstance(name, str) and ROOM_NAME.fullmatch(name) is not None


def room_key(namespace: str, room: str) -> str:
    """The hub's key for a room of a namespace.

    The native endpoint and the Socket.IO namespace ``/`` share rooms, so there the key is the
    room name itself; in any other namespace it is ``<namespace>#<room>`` (``#`` never occurs
    in a room name, so keys cannot collide).
    """
    return room if namespace == "/" else f"{namespace}#{room}"


def split_key(key: str) -> tuple[str, str]:
    """(namespace, room) of a key made by :func:`room_key`."""
    namespace, _, room = key.rpartition("#")
    return namespace or "/", room


def send_to_namespace(hub: Hub, namespace: str, payload: dict[str, Any]) -> int:
    """Deliver payload, serialised once, to every client of one namespace (native clients
    are in ``/``).  Used instead of ``group_send(None, ...)`` only when Socket.IO serves
    namespaces besides ``/``."""
    message = Encoded(payload)
    targets = [c for c in hub.clients() if c.namespace == namespace]
    for client in targets:
        client.deliver(message)
    return len(targets)


class Hub(Protocol):
    """What the core and the transports need of a hub."""

    history: RoomHistory | SharedHistory | None
    """Room history (``history.rooms``); ``group_send`` to a covered room stamps and keeps
    each message.  A :class:`SharedHistory` with the Redis hub.  None when history is off."""

    def add(self, client: Client) -> None: ...
    def remove(self, client: Client) -> None: ...
    def group_add(self, room: str, client: Client) -> bool: ...
    def group_discard(self, room: str, client: Client) -> bool: ...
    def group_send(self, room: str | None, payload: dict[str, Any]) -> int: ...
    def is_member(self, room: str, client: Client) -> bool: ...
    def room_size(self, room: str) -> int: ...
    def count(self) -> int: ...
    def clients(self) -> Iterable[Client]: ...
    def rooms(self) -> dict[str, int]: ...

    # background work (a broker connection) and the cluster-wide view
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def status(self) -> str:
        """``ok``, or ``degraded`` while broadcasts reach this node's clients only."""
        ...

    async def cluster(self) -> ClusterView | None:
        """Every node's counts; None for a single process.  May raise BrokerUnavailable."""
        ...


def make_hub(settings: Settings) -> Hub:
    """The hub ``broker.type`` asks for (redis is imported only when chosen)."""
    from miaws.core.history import history_from_rules

    if settings.broker.type == "redis":
        from miaws.broker.redis import RedisHub

        return RedisHub.from_settings(settings)  # history in Redis: shared by the nodes
    return MemoryHub(history_from_rules(settings.history.rooms))


class MemoryHub:
    """Clients and rooms of this process."""

    def __init__(self, history: RoomHistory | None = None) -> None:
        self.history: RoomHistory | SharedHistory | None = history
        self._kept = history  # stamps and keeps in this process
        self._clients: dict[str, Client] = {}
        self._rooms: dict[str, dict[Client, None]] = {}  # insertion-ordered member sets

    # registry
    def add(self, client: Client) -> None:
        self._clients[client.client_id] = client

    def remove(self, client: Client) -> None:
        """Forget a client and take it out of every room (empty rooms disappear)."""
        self._clients.pop(client.client_id, None)
        for room in list(client.rooms):
            self.group_discard(room, client)

    def count(self) -> int:
        return len(self._clients)

    def clients(self) -> Iterable[Client]:
        return list(self._clients.values())

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    # rooms
    def group_add(self, room: str, client: Client) -> bool:
        """Add client to room; False if it was a member already."""
        members = self._rooms.setdefault(room, {})
        if client in members:
            return False
        members[client] = None
        client.rooms.add(room)
        return True

    def group_discard(self, room: str, client: Client) -> bool:
        """Take client out of room; False if it was not a member."""
        members = self._rooms.get(room)
        if members is None or client not in members:
            return False
        del members[client]
        client.rooms.discard(room)
        if not members:
            del self._rooms[room]
        return True

    def is_member(self, room: str, client: Client) -> bool:
        members = self._rooms.get(room)
        return members is not None and client in members

    def room_size(self, room: str) -> int:
        """Members of room (0 if it does not exist)."""
        return len(self._rooms.get(room, ()))

    def members(self, room: str) -> list[Client]:
        return list(self._rooms.get(room, ()))

    def rooms(self) -> dict[str, int]:
        return {name: len(members) for name, members in self._rooms.items()}

    def group_send(self, room: str | None, payload: dict[str, Any]) -> int:
        """Deliver payload to a room's members, or to every client when room is None.

        Returns the number of recipients.  The payload is serialised once.  In a room with
        history, the payload gets ``epoch`` and ``seq`` and is kept, even with no member.
        """
        return self.send_encoded(room, Encoded(self.stamp(room, payload)))

    def stamp(self, room: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        """payload with ``epoch``/``seq`` (and kept) when room keeps a history; else as is."""
        if room is not None and self._kept is not None and self._kept.covers(room):
            return self._kept.append(room, payload)
        return payload

    def send_encoded(self, room: str | None, message: Encoded) -> int:
        """Deliver an already encoded message to this process's members of room (or all)."""
        targets: list[Client]
        if room is None:
            targets = list(self._clients.values())
        else:
            targets = list(self._rooms.get(room, ()))
        for client in targets:
            client.deliver(message)
        return len(targets)

    # one process: nothing runs in the background and there is no cluster
    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def status(self) -> str:
        return "ok"

    async def cluster(self) -> ClusterView | None:
        return None
