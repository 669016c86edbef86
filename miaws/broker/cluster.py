"""The cluster-wide view: every live node's counts, as the nodes last published them.

Each node of a Redis-backed cluster writes its connection count and its rooms (name ->
local member count) to Redis every ``broker.heartbeat`` seconds, with a time to live of
:data:`TTL_HEARTBEATS` heartbeats, so a node that crashed drops out of the view on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from miaws.core.errors import BrokerUnavailable

__all__ = ["BrokerUnavailable", "ClusterView", "NodeCounts", "TTL_HEARTBEATS"]

TTL_HEARTBEATS = 3
"""A node whose counts were not refreshed for this many heartbeats is gone."""


@dataclass(frozen=True)
class NodeCounts:
    connections: int
    rooms: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterView:
    """Counts per node id; ``node`` is the id of the node that built the view."""

    node: str
    nodes: dict[str, NodeCounts]

    def connections(self) -> int:
        return sum(n.connections for n in self.nodes.values())

    def rooms(self) -> dict[str, int]:
        """Room name -> members on all nodes together."""
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
