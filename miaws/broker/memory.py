"""The memory broker: one process, no other node.

A broadcast goes straight to the local registry; a room with history is stamped and kept by
the in-memory :class:`~miaws.core.history.MemoryHistory` first (once the stamped copy is
encoded: a payload that cannot be sent uses up no seq and is not kept).  Joins read that history in
the same step as they add the member, so nothing can slip in between.
"""

from __future__ import annotations

import time
from typing import Any

from miaws.broker.base import Broker, ClusterView, no_history
from miaws.core.history import Joined, Position, RoomHistory
from miaws.core.model import Client, Encoded
from miaws.core.registry import LocalRegistry

__all__ = ["MemoryBroker"]

STORE_SWEEP = 1024  # stored keys beyond which a new one first sweeps out the expired


class MemoryBroker(Broker):
    """Delivery and history for the clients of this process."""

    def __init__(self, registry: LocalRegistry, history: RoomHistory | None = None) -> None:
        super().__init__(registry)
        self.history = history  # None: no room keeps a history
        self._kept: dict[str, tuple[float, bytes]] = {}  # store(): key -> (expiry, value)

    def publish(
        self, payload: dict[str, Any], key: str | None = None, namespace: str | None = None
    ) -> int:
        registry = self._registry
        if key is None:
            if namespace is None:
                return registry.send_to_all(Encoded(payload))
            return registry.send_to_namespace(namespace, Encoded(payload))
        history = self.history
        if history is None or not history.covers(key):
            return registry.send_to_room(key, Encoded(payload))
        stamped = history.stamp(key, payload)
        message = Encoded(stamped)  # raises for a payload that is not JSON: no seq used up
        history.keep(key, stamped)
        return registry.send_to_room(key, message)

    def publish_event(self, payload: dict[str, Any], key: str) -> int:
        return self._registry.send_to_room(key, Encoded(payload))

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

    async def store(
        self, key: str, value: bytes, ttl: float, *, if_absent: bool = False
    ) -> bytes | None:
        kept = self._kept
        now = time.monotonic()
        if if_absent:
            found = kept.get(key)
            if found is not None and found[0] > now:
                return found[1]
        if len(kept) >= STORE_SWEEP and key not in kept:
            for old in [k for k, (expiry, _) in kept.items() if expiry <= now]:
                del kept[old]
        kept[key] = (now + ttl, value)
        return None

    # one process: nothing runs in the background and there is no cluster
    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def status(self) -> str:
        return "ok"

    async def cluster(self) -> ClusterView | None:
        return None
