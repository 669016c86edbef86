"""The local registry: this node's clients and their rooms, and delivery to them.

One :class:`LocalRegistry` per server process, shared by every transport.  It knows nothing of
other nodes: a broker (:mod:`miaws.broker`) decides what reaches this node and hands it here,
already serialised, with one of three targets:

- :meth:`LocalRegistry.send_to_room`: the local members of one room key;
- :meth:`LocalRegistry.send_to_namespace`: every client of one namespace (native clients are
  in ``/``); the clients are kept per namespace as well as by id, so this walks that
  namespace's clients only, however many the other namespaces have;
- :meth:`LocalRegistry.send_to_all`: every client.

Each takes one :class:`~miaws.core.model.Encoded` and gives the same object to every recipient
(each transport frames it once), so a broadcast costs one serialisation whatever the audience.

Room keys (:func:`miaws.core.rooms.room_key`) come in already namespaced; the registry never
makes one.  It tells its :class:`RoomListener` objects when a key gets its first local member
and when it loses its last: the moments a node starts or stops needing a room's messages
(interest-based subscriptions) or its presence changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from miaws.core.model import Client, Encoded

__all__ = ["LocalRegistry", "RoomListener", "MemberListener"]


class RoomListener(Protocol):
    """Told, synchronously, when a room key of this node becomes occupied or empty."""

    def room_occupied(self, key: str) -> None:
        """key has just got its first local member."""
        ...

    def room_vacated(self, key: str) -> None:
        """key has just lost its last local member (the room is gone from this node)."""
        ...


class MemberListener(Protocol):
    """Told, synchronously, of every local join and leave (a disconnect leaves every room)."""

    def member_joined(self, key: str, client: Client) -> None: ...

    def member_left(self, key: str, client: Client) -> None: ...


class LocalRegistry:
    """Clients and room memberships of this process."""

    def __init__(self) -> None:
        self._clients: dict[str, Client] = {}  # client id -> client
        self._namespaces: dict[str, dict[str, Client]] = {}  # namespace -> client id -> client
        self._rooms: dict[str, dict[Client, None]] = {}  # key -> insertion-ordered members
        self._connections: dict[str, int] = {}  # Client.connection -> its clients here
        self._listeners: tuple[RoomListener, ...] = ()
        self._member_listeners: tuple[MemberListener, ...] = ()

    def watch(self, listener: RoomListener) -> None:
        """Tell listener from now on when a room key gets its first member or loses its last."""
        self._listeners = (*self._listeners, listener)

    def watch_members(self, listener: MemberListener) -> None:
        """Tell listener from now on of every join and leave of a local client."""
        self._member_listeners = (*self._member_listeners, listener)

    # ------------------------------------------------------------ clients
    def add(self, client: Client) -> None:
        if client.client_id not in self._clients:
            conns = self._connections
            conns[client.connection] = conns.get(client.connection, 0) + 1
        self._clients[client.client_id] = client
        self._namespaces.setdefault(client.namespace, {})[client.client_id] = client

    def remove(self, client: Client) -> None:
        """Forget a client and take it out of every room (empty rooms disappear)."""
        if self._clients.pop(client.client_id, None) is not None:
            conns = self._connections
            left = conns.get(client.connection, 0) - 1
            if left > 0:
                conns[client.connection] = left
            else:
                conns.pop(client.connection, None)
        clients = self._namespaces.get(client.namespace)
        if clients is not None:
            clients.pop(client.client_id, None)
            if not clients:
                del self._namespaces[client.namespace]
        for key in list(client.rooms):
            self.group_discard(key, client)

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def count(self) -> int:
        """Clients: a Socket.IO connection counts once per namespace it joined."""
        return len(self._clients)

    def connections(self) -> int:
        """Transport connections with a client here: a Socket.IO connection counts once,
        whatever its namespaces (what ``limits.max_connections`` caps)."""
        return len(self._connections)

    def has_connection(self, connection: str) -> bool:
        """True when a client on connection (a :attr:`Client.connection`) is registered."""
        return connection in self._connections

    def clients(self) -> Iterable[Client]:
        return list(self._clients.values())

    # ------------------------------------------------------------ rooms
    def group_add(self, key: str, client: Client) -> bool:
        """Add client to the room key; False if it was a member already."""
        members = self._rooms.get(key)
        if members is None:
            members = self._rooms[key] = {}
            first = True
        elif client in members:
            return False
        else:
            first = False
        members[client] = None
        client.rooms.add(key)
        if first:
            for listener in self._listeners:
                listener.room_occupied(key)
        for member_listener in self._member_listeners:
            member_listener.member_joined(key, client)
        return True

    def group_discard(self, key: str, client: Client) -> bool:
        """Take client out of the room key; False if it was not a member."""
        members = self._rooms.get(key)
        if members is None or client not in members:
            return False
        del members[client]
        client.rooms.discard(key)
        if not members:
            del self._rooms[key]
            for listener in self._listeners:
                listener.room_vacated(key)
        for member_listener in self._member_listeners:
            member_listener.member_left(key, client)
        return True

    def is_member(self, key: str, client: Client) -> bool:
        members = self._rooms.get(key)
        return members is not None and client in members

    def room_size(self, key: str) -> int:
        """Local members of the room key (0 if it has none)."""
        return len(self._rooms.get(key, ()))

    def members(self, key: str) -> list[Client]:
        return list(self._rooms.get(key, ()))

    def rooms(self) -> dict[str, int]:
        """Room key -> local members, for every room with one."""
        return {key: len(members) for key, members in self._rooms.items()}

    # ------------------------------------------------------------ local delivery
    # Each copies its targets first: a delivery may close a client (slow consumer), and the
    # close takes it out of these maps.
    def send_to_room(self, key: str, message: Encoded) -> int:
        """Deliver message to the local members of the room key; how many there were."""
        members = self._rooms.get(key)
        if not members:
            return 0
        targets = list(members)
        for client in targets:
            client.deliver(message)
        return len(targets)

    def send_to_namespace(self, namespace: str, message: Encoded) -> int:
        """Deliver message to every local client of namespace; how many there were."""
        clients = self._namespaces.get(namespace)
        if not clients:
            return 0
        targets = list(clients.values())
        for client in targets:
            client.deliver(message)
        return len(targets)

    def send_to_all(self, message: Encoded) -> int:
        """Deliver message to every local client, whatever its namespace."""
        targets = list(self._clients.values())
        for client in targets:
            client.deliver(message)
        return len(targets)
