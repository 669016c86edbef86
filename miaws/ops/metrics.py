"""``GET /metrics``: the service's :class:`~miaws.core.stats.Stats` in Prometheus text format.

A custom collector turns the plain counters into metric families at scrape time, so the
per-message path never calls prometheus-client.  Each service has its own
``CollectorRegistry`` (several services in one process, as in tests, do not clash); it also
carries the standard ``process_*`` metrics (CPU, memory, open files).
"""

from __future__ import annotations

from collections.abc import Iterator

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from miaws.integration.backend import STATE_VALUES
from miaws.service import Service

__all__ = ["MiawsCollector", "metrics_registry", "MetricsHandler"]


class MiawsCollector(Collector):
    """Reads a service's counters when Prometheus scrapes."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        stats = self.service.stats
        conns = GaugeMetricFamily(
            "miaws_connections", "Open client connections.", labels=["transport"]
        )
        for transport, count in sorted(stats.open_connections().items()):
            conns.add_metric([transport], count)
        yield conns

        connects = CounterMetricFamily(
            "miaws_connects", "Client connections accepted.", labels=["transport"]
        )
        for transport, count in sorted(stats.connects.items()):
            connects.add_metric([transport], count)
        yield connects

        disconnects = CounterMetricFamily(
            "miaws_disconnects", "Client disconnects by close code.", labels=["transport", "code"]
        )
        for (transport, code), count in sorted(stats.disconnects.items()):
            disconnects.add_metric([transport, str(code)], count)
        yield disconnects

        yield CounterMetricFamily(
            "miaws_heartbeat_drops",
            "Clients dropped because they missed the heartbeat (also counted as code 1006).",
            value=stats.heartbeat_drops,
        )

        yield CounterMetricFamily(
            "miaws_accept_exhausted",
            "Times accept() failed for want of a file descriptor (EMFILE/ENFILE); accepting "
            "then pauses for a back-off.",
            value=stats.accept_exhausted,
        )

        refused = CounterMetricFamily(
            "miaws_connections_refused",
            "New connections refused by a limit, by transport and limit "
            "(connection_rate, max_connections_per_ip, max_connections, shutting_down).",
            labels=["transport", "limit"],
        )
        for (transport, limit), count in sorted(stats.refused.items()):
            refused.add_metric([transport, limit], count)
        yield refused

        yield _by_label(
            "miaws_messages_in",
            "Client messages received, by type (enabled types only).",
            "type",
            stats.messages_in,
        )
        yield _by_label(
            "miaws_messages_out",
            "Messages sent to clients, by type (one per recipient).",
            "type",
            stats.messages_out,
        )
        yield _by_label("miaws_errors", "Error replies sent, by error code.", "code", stats.errors)

        yield GaugeMetricFamily(
            "miaws_rooms", "Rooms with at least one member.", value=len(self.service.rooms_info())
        )

        broker = self.service.broker.counters()
        yield CounterMetricFamily(
            "miaws_broker_messages_received",
            "Cross-node messages this node read from the broker (Redis).",
            value=broker.received,
        )
        yield CounterMetricFamily(
            "miaws_broker_messages_dropped",
            "Cross-node messages lost: not sent during an outage or a full outbox, or missed.",
            value=broker.dropped,
        )
        yield CounterMetricFamily(
            "miaws_broker_reconnects",
            "Times this node's broker subscription was made again after it was lost.",
            value=broker.reconnects,
        )
        yield CounterMetricFamily(
            "miaws_broker_probe_failures",
            "Probes (a message to this node's own channel) that did not come back in time.",
            value=broker.probe_failures,
        )
        yield CounterMetricFamily(
            "miaws_broker_messages_skipped",
            "Of the cross-node messages received, those for a room with no member on this node "
            "(it shares a partition with one that has).",
            value=broker.skipped,
        )
        yield CounterMetricFamily(
            "miaws_broker_gaps",
            "Gap messages sent: a history room lost messages this node could not backfill.",
            value=broker.gaps,
        )
        yield GaugeMetricFamily(
            "miaws_broker_partitions",
            "Partition channels this node is subscribed to (rooms it has members in).",
            value=broker.partitions,
        )

        yield from _presence_metrics(self.service)

        latency = HistogramMetricFamily(
            "miaws_handler_seconds", "Time spent in message handlers, by type.", labels=["type"]
        )
        for kind, hist in sorted(stats.latency.items()):
            latency.add_metric([kind], hist.cumulative(), sum_value=hist.total)
        yield latency

        backends = self.service.backends.snapshot()
        circuit = GaugeMetricFamily(
            "miaws_backend_circuit_state",
            "Circuit breaker of each HTTP backend: 0 closed, 1 half-open, 2 open.",
            labels=["backend"],
        )
        calls = CounterMetricFamily(
            "miaws_backend_calls",
            "HTTP backend calls by outcome: ok (an answer below 500), error (5xx or "
            "unreachable), timeout, rejected (circuit open).",
            labels=["backend", "outcome"],
        )
        for name, backend in backends.items():
            circuit.add_metric([name], STATE_VALUES[backend["circuit"]])
            for outcome, count in sorted(backend["calls"].items()):
                calls.add_metric([name, outcome], count)
        yield circuit
        yield calls


def _presence_metrics(service: Service) -> Iterator[Metric]:
    """Presence store failures and, per webhook endpoint, events delivered and dropped."""
    yield CounterMetricFamily(
        "miaws_presence_errors",
        "Presence steps that failed (the broker's store unreachable); their events are lost.",
        value=service.presence.errors,
    )
    sender = service.webhooks
    if sender is None:
        return
    delivered = CounterMetricFamily(
        "miaws_webhook_events_delivered", "Webhook events POSTed with a 2xx answer.", labels=["url"]
    )
    dropped = CounterMetricFamily(
        "miaws_webhook_events_dropped",
        "Webhook events dropped: queue full, or retried for webhooks.retry_for in vain.",
        labels=["url"],
    )
    for url in sender.urls:
        delivered.add_metric([url], sender.delivered[url])
        dropped.add_metric([url], sender.dropped[url])
    yield delivered
    yield dropped
    posts = CounterMetricFamily(
        "miaws_webhook_posts", "Webhook POSTs by result (ok, error).", labels=["result"]
    )
    for result in ("ok", "error"):
        posts.add_metric([result], sender.posted[result])
    yield posts


def _by_label(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def metrics_registry(service: Service) -> CollectorRegistry:
    """A registry of this service's metrics plus the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MiawsCollector(service))
    ProcessCollector(registry=registry)
    return registry


class MetricsHandler(tornado.web.RequestHandler):
    """``GET /metrics``: Prometheus text exposition format."""

    registry: CollectorRegistry

    def initialize(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(generate_latest(self.registry))
