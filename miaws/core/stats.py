"""Plain counters the core increments; :mod:`miaws.ops.metrics` exposes them at scrape time.

Nothing here touches prometheus-client: the per-message path only adds to ints in dicts and
lists, which costs a fraction of a labelled ``Counter.inc()``.  The numbers are
process-local (one server process), as Prometheus expects from a scrape target.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

__all__ = ["Stats", "Histogram", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
"""Upper bounds in seconds; handlers usually take microseconds, async ones may take longer."""


class Histogram:
    """Fixed buckets: ``counts[i]`` observations <= ``bounds[i]``, the last one is +Inf."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as Prometheus wants them, ending with +Inf."""
        out = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Stats:
    """Counts of one server process: connections, messages, errors, handler latency."""

    __slots__ = (
        "connects",
        "disconnects",
        "heartbeat_drops",
        "messages_in",
        "messages_out",
        "errors",
        "latency",
        "accept_exhausted",
        "refused",
    )

    def __init__(self) -> None:
        self.connects: Counter[str] = Counter()  # transport -> count
        self.disconnects: Counter[tuple[str, int]] = Counter()  # (transport, code) -> count
        self.heartbeat_drops = 0
        self.messages_in: Counter[str] = Counter()  # message type -> messages handled
        self.messages_out: Counter[str] = Counter()  # message type -> recipients
        self.errors: Counter[str] = Counter()  # error code -> count
        self.latency: dict[str, Histogram] = {}  # message type -> handler time
        self.accept_exhausted = 0  # accept() refused for want of a descriptor (EMFILE/ENFILE)
        # (transport, the limit's key: connection_rate, max_connections_per_ip, ...) -> count
        self.refused: Counter[tuple[str, str]] = Counter()

    def connected(self, transport: str) -> None:
        self.connects[transport] += 1

    def disconnected(self, transport: str, code: int, dead: bool) -> None:
        """A client of transport ended with code; dead: for a missed heartbeat."""
        self.disconnects[transport, code] += 1
        if dead:
            self.heartbeat_drops += 1

    def handled(self, kind: str, seconds: float) -> None:
        """A message of type kind passed its checks and its handler took seconds."""
        self.messages_in[kind] += 1
        hist = self.latency.get(kind)
        if hist is None:
            hist = self.latency[kind] = Histogram()
        hist.observe(seconds)

    def open_connections(self) -> dict[str, int]:
        """transport -> connections open now (connects minus disconnects)."""
        open_now = dict(self.connects)
        for (transport, _), count in self.disconnects.items():
            open_now[transport] = open_now.get(transport, 0) - count
        return open_now
