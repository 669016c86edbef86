"""The memory broker: one process, no other node.

A broadcast goes straight to the local registry; a room with history is stamped and kept by
the in-memory :class:`~miaws.core.history.MemoryHistory` first.  Joins read that history in
the same step as they add the member, so nothing can slip in between.
"""

from __future__ import annotations

from typing import Any

from miaws.broker.base import Broker, ClusterView, no_history
from miaws.core.history import Joined, Position, RoomHistory
from miaws.core.model import Client, Encoded
from miaws.core.registry import LocalRegistry

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Delivery and history for the clients of this process."""

    def __init__(self, registry: LocalRegistry, history: RoomHistory | None = None) -> None:
        super().__init__(registry)
        self.history = history  # None: no room keeps a history

    def publish(
        self, payload: dict[str, Any], key: str | None = None, namespace: str | None = None
    ) -> int:
        registry = self._registry
        if key is None:
            if namespace is None:
                return registry.send_to_all(Encoded(payload))
            return registry.send_to_namespace(namespace, Encoded(payload))
        history = self.history
        if history is not None and history.covers(key):
            payload = history.append(key, payload)
        return registry.send_to_room(key, Encoded(payload))

    def join(self, client: Client, key: str, since: Position | None = None) -> Joined:
        self._registry.group_add(key, client)
        history = self.history
        if history is None or not history.covers(key):
            return no_history(since)
        recovered = None
        missed: list[dict[str, Any]] = []
        if since is not None:
            found = history.since(key, since.epoch, since.seq)
            recovered = found is not None
            missed = found or []
        return Joined(history.position(key), recovered, missed)

    def history_covers(self, key: str) -> bool:
        return self.history is not None and self.history.covers(key)

    # one process: nothing runs in the background and there is no cluster
    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def status(self) -> str:
        return "ok"

    async def cluster(self) -> ClusterView | None:
        return None
