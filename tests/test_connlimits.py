"""The admission limits before the upgrade (limits.connection_rate, limits.max_connections_per_ip)
on /ws and /socket.io/ (WebSocket and polling), and server.body_timeout, over real sockets.

Clients connect to 127.0.0.1; "another address" is a client socket bound to 127.0.0.2 (the
whole of 127.0.0.0/8 is the loopback interface on Linux), so the server sees two peers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio
import tornado.httpclient
from helpers import eventually
from prometheus_client.parser import text_string_to_metric_families
from rawws import RawWS
from sio_helpers import SioPeer

from miaws.config import build_settings
from miaws.core.connlimits import AddressCounts, ConnectionRate
from miaws.core.errors import ConfigError
from miaws.service import Service
from miaws.transport.admission import Refused

SIO_WS = "/socket.io/?EIO=4&transport=websocket"
SIO_POLL = "/socket.io/?EIO=4&transport=polling"


@dataclass
class Upgrade:
    """One raw connection after its upgrade request: the response head, and the stream."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: bytes = field(default=b"")

    def abort(self) -> None:
        self.writer.transport.abort()


async def connect_from(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def upgrade(
    port: int, path: str = "/ws", source: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> Upgrade:
    """A WebSocket upgrade request from source; a refusal's body is read to the end of the
    stream (so a returned refusal is one the server closed)."""
    reader, writer = await connect_from(port, source)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode("latin1").strip().split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines)
    conn = Upgrade(int(status_line.split(" ")[1]), parsed, reader, writer)
    if conn.status != 101:
        conn.body = await asyncio.wait_for(reader.read(), 5)  # then EOF: closed by the server
        writer.close()
    return conn


async def refused_counts(port: int) -> dict[tuple[str, str], float]:
    """miaws_connections_refused_total by (transport, limit), from /metrics."""
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"http://127.0.0.1:{port}/metrics")
    counts = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for s in family.samples:
            if s.name == "miaws_connections_refused_total":
                counts[s.labels["transport"], s.labels["limit"]] = s.value
    return counts


def refusal_lines(caplog: pytest.LogCaptureFixture, limit: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "connection refused" in r.getMessage() and f"limits.{limit} (" in r.getMessage()
    ]


async def sio_refused(port: int, transports: list[str]) -> None:
    """python-socketio's client cannot connect (its handshake is refused)."""
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(f"http://127.0.0.1:{port}", transports=transports, wait_timeout=5)
    await client.disconnect()


# ------------------------------------------------------------ connection rate


@pytest.mark.config({"limits": {"connection_rate": 1, "connection_burst": 3}})
async def test_rate_refuses_ws_with_503_and_retry_after_then_recovers(
    port: int, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Over the bucket a new /ws connection gets 503 + Retry-After before the upgrade and is
    closed; the open ones are served; once a token is back (1 s at 1/s) a connection
    passes; refusals are counted and logged once, not once each."""
    caplog.set_level(logging.INFO, "miaws")
    opened = [await upgrade(port) for _ in range(3)]
    assert [c.status for c in opened] == [101, 101, 101]
    refusals = [await upgrade(port) for _ in range(4)]
    for refused in refusals:
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        assert refused.headers["Connection"] == "close"
        assert b"try again later" in refused.body
    assert service.connected_count() == 3
    served = RawWS(opened[0].reader, opened[0].writer)
    assert (await served.read_json())["type"] == "welcome"
    served.send_json({"type": "ping", "id": 1})
    assert (await served.read_json())["type"] == "pong"  # the open ones are served
    await asyncio.sleep(1.1)
    passed = await upgrade(port)
    assert passed.status == 101
    assert (await refused_counts(port))["ws", "connection_rate"] == 4
    (line,) = refusal_lines(caplog, "connection_rate")
    assert "limits.connection_rate (1/s) reached, answered HTTP 503" in line
    assert not [r for r in caplog.records if r.name == "tornado.access"]  # no line each
    for conn in [*opened, passed]:
        conn.abort()
    await eventually(lambda: service.connected_count() == 0)


@pytest.mark.config({"limits": {"connection_rate": 0.5, "connection_burst": 2}})
async def test_rate_refuses_socketio_websocket_and_polling_handshakes(
    port: int, service: Service
) -> None:
    """The bucket is the node's: Socket.IO handshakes (WebSocket and polling) take from it
    and are answered 503 + Retry-After before Engine.IO; python-socketio's client is refused,
    and connects again once a token is back.  A polling client's later requests (its sid)
    and its upgrade take no token."""
    polling = await SioPeer.connect(f"http://127.0.0.1:{port}", transports=["polling", "websocket"])
    ws = await upgrade(port, SIO_WS)
    assert ws.status == 101
    refused_ws = await upgrade(port, SIO_WS)
    assert refused_ws.status == 503 and refused_ws.headers["Retry-After"] in ("1", "2")
    client = tornado.httpclient.AsyncHTTPClient()
    refused_poll = await client.fetch(f"http://127.0.0.1:{port}{SIO_POLL}", raise_error=False)
    assert refused_poll.code == 503 and refused_poll.headers["Retry-After"] in ("1", "2")
    await sio_refused(port, ["websocket"])
    await sio_refused(port, ["polling"])
    refused_native = await upgrade(port)
    assert refused_native.status == 503
    # the polling client goes on (its requests carry its sid) and was upgraded
    assert (await polling.call("ping", {}))["type"] == "pong"
    await asyncio.sleep(2.1)  # one token back at 0.5/s
    # (polling then WebSocket: python-socketio's client takes ~35 s to close a polling-only
    # connection, its pending long poll answered only at the ping timeout)
    again = await SioPeer.connect(f"http://127.0.0.1:{port}", transports=["polling", "websocket"])
    assert (await again.call("ping", {}))["type"] == "pong"
    counts = await refused_counts(port)
    assert counts["socket.io", "connection_rate"] == 4 and counts["ws", "connection_rate"] == 1
    await again.close()
    await polling.close()
    ws.abort()
    await eventually(lambda: service.connected_count() == 0)


# ------------------------------------------------------------ connections per address


@pytest.mark.config({"limits": {"max_connections_per_ip": 3}})
async def test_per_ip_cap_on_ws_429_others_unaffected_no_leak(
    port: int, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Three connections from one address: the fourth is answered 429 before the upgrade;
    another address connects meanwhile; closing one frees a slot; open 3, close, open 3
    again, and the table is empty at the end (nothing leaks)."""
    caplog.set_level(logging.INFO, "miaws")
    mine = [await upgrade(port) for _ in range(3)]
    assert [c.status for c in mine] == [101] * 3
    over = await upgrade(port)
    assert over.status == 429 and "Retry-After" not in over.headers
    assert b"too many connections from your address" in over.body
    other = await upgrade(port, source="127.0.0.2")
    assert other.status == 101
    await eventually(lambda: service.connected_count() == 4)
    mine.pop().abort()
    await eventually(lambda: service.admission.addresses.held("127.0.0.1") == 2)
    mine.append(await upgrade(port))
    assert mine[-1].status == 101
    for _ in range(3):  # open N, close N, open N again: no count leaks
        for conn in mine:
            conn.abort()
        await eventually(lambda: service.admission.addresses.held("127.0.0.1") == 0)
        mine = [await upgrade(port) for _ in range(3)]
        assert [c.status for c in mine] == [101] * 3
    for conn in [*mine, other]:
        conn.abort()
    await eventually(lambda: service.admission.addresses.counts == {})
    assert (await refused_counts(port))["ws", "max_connections_per_ip"] == 1
    (line,) = refusal_lines(caplog, "max_connections_per_ip")
    assert "remote=127.0.0.1" in line and "answered HTTP 429" in line


@pytest.mark.config(
    {
        "limits": {"max_connections_per_ip": 2},
        "auth": {"mode": "token", "tokens": {"good": "ann"}},
        "security": {"allowed_origins": ["https://app.example.com"]},
    }
)
async def test_per_ip_refused_upgrades_give_their_count_back(port: int, service: Service) -> None:
    """Upgrades refused after the count was taken (401, 403, 400) and upgrades whose client
    is closed at once hold nothing afterwards."""
    for _ in range(5):
        assert (await upgrade(port)).status == 401  # no token
        foreign = await upgrade(port, "/ws?token=good", headers={"Origin": "https://evil.example"})
        assert foreign.status == 403
        old = await upgrade(port, "/ws?token=good", headers={"Sec-WebSocket-Version": "8"})
        assert old.status == 426  # no WebSocket version both sides speak
    assert service.admission.addresses.counts == {}
    both = [await upgrade(port, "/ws?token=good") for _ in range(2)]
    assert [c.status for c in both] == [101, 101]
    assert (await upgrade(port, "/ws?token=good")).status == 429
    for conn in both:
        conn.abort()
    await eventually(lambda: service.admission.addresses.counts == {})


@pytest.mark.config({"limits": {"max_connections_per_ip": 2}})
async def test_per_ip_cap_on_socketio_counts_connections_not_requests(
    port: int, service: Service
) -> None:
    """Socket.IO connections count against the same cap as /ws (one each, polling or
    WebSocket, whatever their later requests); one more is answered 429 before Engine.IO;
    closing frees the slot; open, close and open again leaks nothing."""
    url = f"http://127.0.0.1:{port}"
    for _ in range(3):
        polling = await SioPeer.connect(url, transports=["polling", "websocket"])
        native = await upgrade(port)
        assert native.status == 101
        assert (await upgrade(port, SIO_WS)).status == 429
        client = tornado.httpclient.AsyncHTTPClient()
        over = await client.fetch(f"{url}{SIO_POLL}", raise_error=False)
        assert over.code == 429
        await sio_refused(port, ["polling"])
        assert (await polling.call("ping", {}))["type"] == "pong"  # its own requests pass
        other = await upgrade(port, SIO_WS, source="127.0.0.2")
        assert other.status == 101
        native.abort()
        await eventually(lambda: service.admission.addresses.held("127.0.0.1") == 1)
        ws = await SioPeer.connect(url, transports=["websocket"])
        await polling.close()
        await ws.close()
        other.abort()
        await eventually(lambda: service.admission.addresses.counts == {})
        await eventually(lambda: service.connected_count() == 0)
    counts = await refused_counts(port)
    assert counts["socket.io", "max_connections_per_ip"] == 9
    assert service.socketio.held == {}
    # A WebSocket that Engine.IO makes no session of (a protocol version it does not speak)
    # holds its count until it closes.
    for _ in range(3):
        stray = await upgrade(port, "/socket.io/?EIO=3&transport=websocket")
        assert stray.status == 101
        await eventually(lambda: service.admission.addresses.held("127.0.0.1") == 1)
        stray.abort()
        await eventually(lambda: service.admission.addresses.counts == {})
        # and a polling handshake refused by Engine.IO holds nothing once answered
        old = await client.fetch(f"{url}/socket.io/?EIO=3&transport=polling", raise_error=False)
        assert old.code == 400
        assert service.admission.addresses.counts == {}


@pytest.mark.config(
    {"limits": {"max_connections_per_ip": 1}, "heartbeat": {"interval": 0.5, "timeout": 0.5}}
)
async def test_per_ip_socketio_polling_session_that_times_out_gives_its_count_back(
    port: int, service: Service
) -> None:
    """A polling handshake whose client never comes back holds its slot until Engine.IO
    drops the session at its ping timeout, and gives it back then."""
    client = tornado.httpclient.AsyncHTTPClient()
    first = await client.fetch(f"http://127.0.0.1:{port}{SIO_POLL}")
    assert first.code == 200 and b'"sid"' in first.body
    assert service.admission.addresses.held("127.0.0.1") == 1
    assert (await client.fetch(f"http://127.0.0.1:{port}{SIO_POLL}", raise_error=False)).code == 429
    await eventually(lambda: service.admission.addresses.counts == {}, timeout=10)
    again = await client.fetch(f"http://127.0.0.1:{port}{SIO_POLL}")
    assert again.code == 200


@pytest.mark.config({"limits": {"max_connections_per_ip": 1}})
async def test_socketio_client_address_is_the_peers(port: int, service: Service) -> None:
    """A Socket.IO client is counted and listed under its own address (Engine.IO's Tornado
    driver says 127.0.0.1 for everyone; miaws reads the request's)."""
    conn = await upgrade(port, SIO_WS, source="127.0.0.2")
    assert conn.status == 101
    raw = RawWS(conn.reader, conn.writer)
    frame = await raw.read_frame()
    assert frame is not None and frame[1].startswith(b"0{")  # Engine.IO's open packet
    raw.send_text("40")  # Socket.IO CONNECT to /
    await eventually(lambda: service.connected_count() == 1)
    (info,) = service.clients_info()
    assert info["remoteAddress"] == "127.0.0.2"
    assert service.admission.addresses.counts == {"127.0.0.2": 1}
    conn.abort()
    await eventually(lambda: service.admission.addresses.counts == {})


# ------------------------------------------------------------ request bodies


@pytest.mark.config({"server": {"body_timeout": 0.5}})
async def test_request_body_not_in_time_is_closed(port: int, service: Service) -> None:
    """POST /api/publish with Content-Length 100 and 10 bytes of body: closed without a
    response after server.body_timeout; a body that comes in two parts in time is served;
    open WebSockets are untouched."""
    ws = await upgrade(port)
    assert ws.status == 101
    reader, writer = await connect_from(port)
    head = (
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    )
    writer.write(head.encode() + b'{"message"')
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 5)
    waited = time.monotonic() - started
    assert answer == b"" and 0.4 <= waited < 3, waited
    writer.close()

    body = b'{"message": {"type": "note", "text": "hi"}}'
    reader, writer = await connect_from(port)
    head = (
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[:10])
    await asyncio.sleep(0.2)
    writer.write(body[10:])
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    writer.close()
    assert service.connected_count() == 1
    ws.abort()


# ------------------------------------------------------------ the rules, without sockets


def test_connection_rate_bucket() -> None:
    """burst at once, then one per 1/rate seconds; the wait until the next token."""
    clock = [100.0]
    rate = ConnectionRate(now=lambda: clock[0])
    assert [rate.take(2, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.take(2, 3) == pytest.approx(0.5)
    clock[0] += 0.25
    assert rate.take(2, 3) == pytest.approx(0.25)
    clock[0] += 0.25
    assert rate.take(2, 3) == 0.0
    clock[0] += 60
    assert [rate.take(2, 0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]  # burst 0: 2


def test_address_counts_and_refused_headers() -> None:
    counts = AddressCounts()
    assert counts.take("a", 2) and counts.take("a", 2) and not counts.take("a", 2)
    assert counts.take("b", 2)
    counts.release("a")
    counts.release("a")
    counts.release("b")
    assert counts.counts == {}
    assert Refused(503, 1013, "x", retry_after=0.2).http_headers() == {"Retry-After": "1"}
    assert Refused(503, 1013, "x", retry_after=2.5).http_headers() == {"Retry-After": "3"}
    assert Refused(429, 1013, "x").http_headers() == {}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"limits": {"connection_rate": -1}}, "limits.connection_rate"),
        ({"limits": {"connection_burst": -1}}, "limits.connection_burst"),
        ({"limits": {"max_connections_per_ip": "many"}}, "limits.max_connections_per_ip"),
        ({"server": {"body_timeout": 0}}, "server.body_timeout"),
    ],
)
def test_bad_admission_settings_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_settings(data, source="test", environ={})
