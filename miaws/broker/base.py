"""The broker interface: how a broadcast reaches the clients of every node.

There is one way a message reaches more than its sender: ``Service.publish`` ->
:meth:`Broker.publish` -> the local registry (:class:`~miaws.core.registry.LocalRegistry`) of
every node that has recipients -> each client's transport.  A broker is given this node's
registry and owns the rest: carrying the message to the other nodes (if there are any),
stamping and keeping it when its room keeps a history, and answering joins from that history.

Addressing, all by keys (:func:`miaws.core.rooms.room_key`), never by room names:

- ``publish(payload, key)``: the members of one room key, on every node;
- ``publish(payload, namespace=ns)``: every client of one namespace, on every node;
- ``publish(payload)``: every client of every namespace, on every node (the publish API);
- ``publish_event(payload, key)``: the members of one room key, on every node, never stamped
  nor kept (the server's own events: ``member-joined``, ``member-left``).

Implementations: :class:`miaws.broker.memory.MemoryBroker` (one process) and
:class:`miaws.broker.redis.RedisBroker` (nodes sharing a Redis).  They subclass this class and
never import each other; :func:`miaws.broker.make_broker` chooses one.  Nothing outside
``miaws.broker`` knows which one runs.

The registry tells its listeners when a room key gets its first local member and loses its
last (:meth:`LocalRegistry.watch`); a broker that routes by interest subscribes to a room's
traffic there, and presence hangs off the same two events.

:attr:`Broker.presence` is where the broker keeps who is in which room
(:class:`~miaws.core.presence.PresenceStore`): this process's memory by default, Redis for
the Redis broker (:mod:`miaws.broker.redis_presence`); :mod:`miaws.broker.presence` drives it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from miaws.core.history import Joined, Position
from miaws.core.model import Client
from miaws.core.presence import MemoryPresence, PresenceStore
from miaws.core.registry import LocalRegistry

__all__ = ["Broker", "BrokerCounters", "ClusterView", "NodeCounts"]


@dataclass(frozen=True)
class NodeCounts:
    """One node's connection count and its rooms (key -> local members)."""

    connections: int
    rooms: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterView:
    """Counts per node id, as each node last reported them; ``node`` is the id of the node
    that built the view."""

    node: str
    nodes: dict[str, NodeCounts]

    def connections(self) -> int:
        return sum(n.connections for n in self.nodes.values())

    def rooms(self) -> dict[str, int]:
        """Room key -> members on all nodes together."""
        total: dict[str, int] = {}
        for counts in self.nodes.values():
            for room, members in counts.rooms.items():
                total[room] = total.get(room, 0) + members
        return total

    def summary(self) -> dict[str, Any]:
        """The ``cluster`` object of ``/health``."""
        return {
            "node": self.node,
            "broker": "up",
            "nodes": len(self.nodes),
            "connections": self.connections(),
            "rooms": len(self.rooms()),
            "perNode": {
                node: {"connections": c.connections, "rooms": len(c.rooms)}
                for node, c in sorted(self.nodes.items())
            },
        }


@dataclass
class BrokerCounters:
    """What a broker counts since start, for ``/metrics`` (all zero for a single process).

    - ``received``: cross-node messages this node read (from Redis);
    - ``dropped``: cross-node messages lost: not sent (outage, full outbox) or known missed;
    - ``reconnects``: times the node's subscription was made again after it was lost;
    - ``probe_failures``: probes that did not come back in time;
    - ``skipped``: of ``received``, messages for a room with no local member (it shares a
      partition with one that has);
    - ``gaps``: ``gap`` messages sent: a history room lost messages this node could not
      backfill;
    - ``partitions``: partition channels subscribed to now (a gauge).
    """

    received: int = 0
    dropped: int = 0
    reconnects: int = 0
    probe_failures: int = 0
    skipped: int = 0
    gaps: int = 0
    partitions: int = 0


class Broker(ABC):
    """Delivery to every node's clients, room history, and the cluster's view of itself."""

    def __init__(self, registry: LocalRegistry) -> None:
        self._registry = registry
        self.presence: PresenceStore = MemoryPresence()  # who is in which room (all nodes)

    @property
    def registry(self) -> LocalRegistry:
        """This node's clients and rooms; the broker delivers to them."""
        return self._registry

    # ------------------------------------------------------------ delivery
    @abstractmethod
    def publish(
        self, payload: dict[str, Any], key: str | None = None, namespace: str | None = None
    ) -> int:
        """Send payload to the members of the room key, or (key None) to every client of
        namespace, or (both None) to every client; on every node.

        The payload is serialised once per node.  In a room that keeps a history it is
        stamped with ``epoch`` and ``seq`` and kept, even when the room has no member.
        Returns the number of recipients on this node.
        """

    @abstractmethod
    def publish_event(self, payload: dict[str, Any], key: str) -> int:
        """Send a server event that is not a room broadcast (``member-joined``,
        ``member-left``) to the members of the room key, on every node.

        Serialised once per node like :meth:`publish`, but never stamped with ``epoch`` /
        ``seq`` nor kept, even in a room with history: ``seq`` counts the room's broadcasts
        and recovery replays only them.  Returns the number of recipients on this node.
        """

    # ------------------------------------------------------------ rooms and history
    @abstractmethod
    def join(
        self, client: Client, key: str, since: Position | None = None
    ) -> Joined | Awaitable[Joined]:
        """Make client a member of the room key (again is fine) and read its history.

        A history this process holds answers at once, in the same step as the join, so no
        broadcast can come between.  A history read over the network answers with an
        awaitable; the room's live messages for client are held back from this call until
        it is done, and come in :attr:`Joined.messages` after the missed ones, each once.
        """

    def leave(self, client: Client, key: str) -> bool:
        """Take client out of the room key; False if it was not a member."""
        return self._registry.group_discard(key, client)

    @abstractmethod
    def history_covers(self, key: str) -> bool:
        """True if the room key keeps a history (its broadcasts carry epoch and seq)."""

    # ------------------------------------------------------------ shared keys
    @abstractmethod
    async def store(
        self, key: str, value: bytes, ttl: float, *, if_absent: bool = False
    ) -> bytes | None:
        """Keep value under key for ttl seconds, for every node (Redis ``SET ... PX``).

        With ``if_absent`` (``NX``) nothing is overwritten: returns None when value was
        stored, else the value already there.  Without it, returns None.  May raise
        :class:`~miaws.core.errors.BrokerUnavailable`.  (The publish API's idempotency keys.)
        """

    def read_with(self, run: Callable[..., Any]) -> None:
        """Have each batch of messages read from the other nodes at once handled as
        ``run(handle, data)``: the server passes the transport's corking
        (:func:`miaws.transport.protocol.run_corked`), so what such a read sends leaves in one
        write per connection, as for a client's read.  The broker may not import the
        transport, hence the hook; a broker with no other nodes ignores it."""
        return None

    # ------------------------------------------------------------ lifecycle and views
    @abstractmethod
    async def start(self) -> None:
        """Start any background work (connections to other nodes)."""

    @abstractmethod
    async def close(self) -> None:
        """Send what is queued (briefly), stop the background work, leave the cluster."""

    def counters(self) -> BrokerCounters:
        """This broker's counters (:class:`BrokerCounters`); zeros unless overridden."""
        return BrokerCounters()

    @abstractmethod
    def status(self) -> str:
        """``ok``, or ``degraded`` while broadcasts reach this node's clients only."""

    @abstractmethod
    async def cluster(self) -> ClusterView | None:
        """Every node's counts; None for a single process.  May raise
        :class:`~miaws.core.errors.BrokerUnavailable`."""


def no_history(since: Position | None) -> Joined:
    """What a join to a room without history found: nothing to recover."""
    return Joined(None, None if since is None else False, [])
