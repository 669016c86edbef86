"""The one admission path (miaws.transport.admission): a check added there reaches both
transports, over real sockets; its rules, without one."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import socketio
from tornado.websocket import websocket_connect

from miaws.core.model import Closed
from miaws.service import Service
from miaws.testing import PluginHarness
from miaws.transport.admission import Admission, Refused

SIO = {"socketio": {"enabled": True}}


@pytest.mark.config(SIO)
async def test_an_accept_check_in_admission_reaches_both_transports(
    ws_url: str, port: int, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One new refusal in Admission.refusal: /ws closes with its code and reason, Socket.IO
    refuses with its reason, and neither client is registered."""
    refusal = Refused(503, 1013, "no new clients on Tuesdays", retry_after=1.0)
    monkeypatch.setattr(Admission, "refusal", lambda self, remote_ip, **kw: refusal)
    native = await websocket_connect(ws_url)
    assert await native.read_message() is None  # no welcome
    assert (native.close_code, native.close_reason) == (1013, "no new clients on Tuesdays")
    native.close()
    client = socketio.AsyncClient(reconnection=False)
    reasons: list[Any] = []
    client.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=5)
    await client.disconnect()
    assert "no new clients on Tuesdays" in str(reasons)
    assert service.connected_count() == 0


@pytest.mark.config(SIO)
async def test_every_end_goes_through_admission(
    ws_connect: Any, port: int, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission.end sees each transport's end as a Closed value."""
    ends: list[tuple[str, Closed]] = []
    original = Admission.end

    def end(self: Admission, client: Any, closed: Closed) -> None:
        ends.append((client.transport, closed))
        original(self, client, closed)

    monkeypatch.setattr(Admission, "end", end)
    peer = await ws_connect()
    peer.close()
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=5)
    await sio.disconnect()
    for _ in range(200):
        if len(ends) == 2:
            break
        await asyncio.sleep(0.02)
    ends.sort()
    assert [transport for transport, _ in ends] == ["socket.io", "ws"]
    assert ends[0][1] in (Closed(1000, "closed by client"), Closed(1005, "transport closed"))
    assert ends[1][1].reason == "closed by client" and not ends[1][1].dead


def test_queue_cap_rule() -> None:
    """An empty queue takes any message; otherwise the cap counts what waits plus the new."""
    admission = PluginHarness({"limits": {"max_queued_bytes": 100}}).service.admission
    assert not admission.over_queue_cap(0, 10_000)
    assert not admission.over_queue_cap(60, 40)
    assert admission.over_queue_cap(60, 41)
    off = PluginHarness({"limits": {"max_queued_bytes": 0}}).service.admission
    assert not off.over_queue_cap(10**9, 10**9)


def test_refusals_carry_both_answers(caplog: pytest.LogCaptureFixture) -> None:
    """Shutting down and a full server: an HTTP status for before the upgrade, a close code
    for after it, a reason safe to show; the full server is logged as a warning."""
    service = PluginHarness({"limits": {"max_connections": 1}}).service
    admission = service.admission
    assert admission.refusal("127.0.0.1") is None
    service.shutting_down = True
    down = admission.refusal("127.0.0.1")
    assert down is not None and (down.status, down.code) == (503, 1001)
    service.shutting_down = False
    harness = PluginHarness({"limits": {"max_connections": 1}})
    harness.connect()
    with caplog.at_level(logging.WARNING, logger="miaws"):
        full = harness.service.admission.refusal("10.0.0.1")
    assert full is not None and (full.status, full.code, full.reason) == (
        503,
        1013,
        "server full: try again later",
    )
    assert "limits.max_connections (1) reached" in caplog.text and "10.0.0.1" in caplog.text


def test_handler_failed_logs_and_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    harness = PluginHarness()
    client = harness.connect()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        harness.service.admission.handler_failed(client)
    assert client.closed == (1011, "internal error")
    (record,) = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert record.exc_info is not None and client.client_id in record.getMessage()
