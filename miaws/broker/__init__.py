"""How a message reaches the clients of every node: the broker interface
(:class:`~miaws.broker.base.Broker`), its memory and Redis implementations, and
:func:`make_broker`, which chooses one.  Nothing outside this package knows which one runs.

redis-py is imported only when ``broker.type`` is ``redis`` or ``redis-cluster``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from miaws.broker.base import Broker, BrokerCounters, ClusterView, NodeCounts
from miaws.core.registry import LocalRegistry

if TYPE_CHECKING:
    from miaws.config import Settings

__all__ = ["Broker", "BrokerCounters", "ClusterView", "NodeCounts", "make_broker"]


def make_broker(settings: Settings, registry: LocalRegistry | None = None) -> Broker:
    """The broker ``broker.type`` asks for, delivering to registry (a new one if None).

    Raises :class:`~miaws.core.errors.ConfigError` for an unusable ``broker.url``."""
    registry = registry if registry is not None else LocalRegistry()
    if settings.broker.type in ("redis", "redis-cluster"):
        from miaws.broker.redis import RedisBroker

        return RedisBroker.from_settings(settings, registry)  # history in Redis: shared
    from miaws.broker.memory import MemoryBroker
    from miaws.core.history import history_from_rules

    return MemoryBroker(registry, history_from_rules(settings.history_rules()))
