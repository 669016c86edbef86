"""GET /metrics over real HTTP after real WebSocket traffic: every family the issue names."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Connect
from helpers import eventually
from prometheus_client.parser import text_string_to_metric_families

from miaws.service import Service


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Sample (name, sorted labels) -> value, from the server's /metrics."""
    response = await client.fetch("/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


async def test_metrics_count_connections_messages_errors_and_rooms(
    http_server_client: Any, ws_connect: Connect, service: Service
) -> None:
    """Counts follow what the clients did: connects, closes by code, messages, errors, rooms."""
    a, b = await ws_connect(), await ws_connect()
    await a.request({"type": "ping"})
    await a.request({"type": "ping"})
    await a.request({"type": "echo", "message": 1})
    await a.request({"type": "join-room", "room": "r1"})
    await b.request({"type": "join-room", "room": "r2"})
    await a.send({"type": "broadcast", "message": "hi"})  # to both clients
    await a.recv()
    await b.recv()
    assert (await a.request("{nope"))["code"] == "invalid-json"
    assert (await a.request({"type": "shout"}))["code"] == "unknown-type"
    assert (await b.request({"type": "leave-room", "room": "zz"}))["code"] == "not-in-room"

    m = await scrape(http_server_client)
    assert m["miaws_connections", (("transport", "ws"),)] == 2
    assert m["miaws_connects_total", (("transport", "ws"),)] == 2
    assert m["miaws_rooms", ()] == 2
    assert m["miaws_messages_in_total", (("type", "ping"),)] == 2
    assert m["miaws_messages_in_total", (("type", "echo"),)] == 1
    assert m["miaws_messages_in_total", (("type", "join-room"),)] == 2
    assert m["miaws_messages_out_total", (("type", "welcome"),)] == 2
    assert m["miaws_messages_out_total", (("type", "pong"),)] == 2
    assert m["miaws_messages_out_total", (("type", "broadcast"),)] == 2
    assert m["miaws_messages_out_total", (("type", "error"),)] == 3
    for code in ("invalid-json", "unknown-type", "not-in-room"):
        assert m["miaws_errors_total", (("code", code),)] == 1
    assert m["miaws_handler_seconds_count", (("type", "ping"),)] == 2
    assert m["miaws_handler_seconds_bucket", (("le", "+Inf"), ("type", "ping"))] == 2
    assert 0 < m["miaws_handler_seconds_sum", (("type", "ping"),)] < 1
    assert m["miaws_heartbeat_drops_total", ()] == 0
    assert m["process_resident_memory_bytes", ()] > 0

    a.conn.close(1000)
    b.conn.close()  # no code: 1005
    await eventually(lambda: service.connected_count() == 0)
    m = await scrape(http_server_client)
    assert m["miaws_connections", (("transport", "ws"),)] == 0
    assert m["miaws_disconnects_total", (("code", "1000"), ("transport", "ws"))] == 1
    assert m["miaws_disconnects_total", (("code", "1005"), ("transport", "ws"))] == 1
    assert m["miaws_rooms", ()] == 0


@pytest.mark.config({"heartbeat": {"interval": 0.2, "timeout": 0.2}})
async def test_metrics_count_heartbeat_drops(
    http_server_client: Any, ws_connect: Connect, service: Service
) -> None:
    """A client that stops answering pings is a heartbeat drop and a 1006 disconnect."""
    await ws_connect()
    silent = await ws_connect()
    silent.conn.protocol.stream.read_bytes = lambda *a, **k: asyncio.Future()  # type: ignore
    await eventually(lambda: service.connected_count() == 1, timeout=5)
    m = await scrape(http_server_client)
    assert m["miaws_heartbeat_drops_total", ()] == 1
    assert m["miaws_disconnects_total", (("code", "1006"), ("transport", "ws"))] == 1
    assert m["miaws_connections", (("transport", "ws"),)] == 1


def test_two_services_have_separate_registries() -> None:
    """Each service's /metrics has its own registry: building two does not clash."""
    from miaws.config import build_settings
    from miaws.ops.metrics import metrics_registry

    one = Service.from_settings(build_settings({}, environ={}))
    two = Service.from_settings(build_settings({}, environ={}))
    one.stats.connected("ws")
    r1, r2 = metrics_registry(one), metrics_registry(two)
    assert r1.get_sample_value("miaws_connects_total", {"transport": "ws"}) == 1
    assert r2.get_sample_value("miaws_connects_total", {"transport": "ws"}) is None
