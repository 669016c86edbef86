"""Security on the Socket.IO endpoint: the same auth, origin list and connection cap as /ws."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import socketio
import tornado.httpclient
from helpers import eventually
from sio_helpers import SioPeer

from miaws.cli.check import expect_type
from miaws.service import Service

TOKENS = {"auth": {"mode": "token", "tokens": {"s3cret": {"user": "ann", "rooms": ["ok"]}}}}


async def refused(port: int, **kw: Any) -> str:
    """Connect and expect a refusal; the connect_error message the server gave."""
    client = socketio.AsyncClient(reconnection=False)
    reasons: list[Any] = []
    client.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=5, **kw
        )
    await client.disconnect()
    return str(reasons)


@pytest.mark.config(TOKENS)
async def test_token_required_and_applied(port: int, service: Service) -> None:
    """No or bad token: connect_error; a good one (auth payload or query) sets user and rooms."""
    assert "no token" in await refused(port)
    assert "authentication failed" in await refused(port, auth={"token": "wrong"})
    peer = await SioPeer.connect(f"http://127.0.0.1:{port}", auth={"token": "s3cret"})
    try:
        (info,) = service.clients_info()
        assert info["user"] == "ann" and info["transport"] == "socket.io"
        assert (await peer.call("join-room", {"room": "ok"}))["type"] == "room-joined"
        denied = await peer.call("join-room", {"room": "other"})
        assert denied["type"] == "error" and denied["code"] == "forbidden"
    finally:
        await peer.close()
    query = await SioPeer.connect(f"http://127.0.0.1:{port}?token=s3cret")
    await query.close()


@pytest.mark.config({"security": {"allowed_origins": ["https://app.example.com"]}})
async def test_foreign_origin_gets_403(port: int) -> None:
    """A foreign Origin is refused with 403 before Engine.IO; a listed one connects."""
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    client = tornado.httpclient.AsyncHTTPClient()
    bad = await client.fetch(url, headers={"Origin": "https://evil.example"}, raise_error=False)
    assert bad.code == 403
    good = await client.fetch(url, headers={"Origin": "https://app.example.com"}, raise_error=False)
    assert good.code == 200


@pytest.mark.config({"limits": {"max_connections": 1}})
async def test_connection_cap(port: int, ws_connect: Any) -> None:
    """Over limits.max_connections a Socket.IO client is refused (connect_error)."""
    await ws_connect()
    assert "server full" in await refused(port)


async def sio_packet(conn: Any, prefix: str) -> str:
    """The next Socket.IO packet a raw Engine.IO WebSocket gets (Engine.IO pings skipped);
    AssertionError unless it starts with prefix."""
    while True:
        frame = await conn.read_frame()
        assert frame is not None and frame[0] == 0x1, frame
        text: str = frame[1].decode()
        if text != "2":
            assert text.startswith(prefix), text
            return text


@pytest.mark.config({"limits": {"max_connections": 3}, "socketio": {"namespaces": ["/", "/chat"]}})
async def test_connection_cap_counts_a_socketio_connection_once(
    port: int, raw_connect: Any, ws_connect: Any
) -> None:
    """limits.max_connections counts connections, native and Engine.IO, each once: a
    Socket.IO connection in "/" and "/chat" is one of the three, even one that joins
    "/chat" after the node became full; the fourth connection is refused.  /readyz counts
    connections, /health clients (#15)."""
    both = socketio.AsyncClient(reconnection=False)
    welcomes: list[str] = []
    for ns in ("/", "/chat"):
        both.on("welcome", lambda _msg, ns=ns: welcomes.append(ns), namespace=ns)
    await both.connect(
        f"http://127.0.0.1:{port}",
        namespaces=["/", "/chat"],
        transports=["websocket"],
        wait_timeout=5,
    )
    try:
        await eventually(lambda: sorted(welcomes) == ["/", "/chat"])
        native = await ws_connect()  # the second connection
        expect_type(await native.request({"type": "ping"}), "pong")
        late = await raw_connect("/socket.io/?EIO=4&transport=websocket")
        await sio_packet(late, "0{")  # Engine.IO open
        late.send_text("40")
        await sio_packet(late, "40{")
        await sio_packet(late, '42["welcome"')  # the third: the node is full now
        late.send_text("40/chat,")  # on a connection that is counted already
        await sio_packet(late, "40/chat,{")
        await sio_packet(late, '42/chat,["welcome"')
        assert "server full" in await refused(port)
        http = tornado.httpclient.AsyncHTTPClient()
        ready = await http.fetch(f"http://127.0.0.1:{port}/readyz", raise_error=False)
        assert ready.code == 503
        assert json.loads(ready.body) == {
            "ready": False,
            "reason": "full",
            "connections": 3,
            "max_connections": 3,
        }
        health = await http.fetch(f"http://127.0.0.1:{port}/health")
        assert json.loads(health.body)["connections"] == 5  # clients: one per namespace
    finally:
        await both.disconnect()


@pytest.mark.config({"limits": {"max_queued_bytes": 200_000}})
async def test_slow_socketio_consumer_closed_1013(
    port: int, raw_connect: Any, ws_connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A Socket.IO client that stops reading is dropped (logged 1013); others carry on."""
    caplog.set_level(logging.INFO, "miaws")
    slow = await raw_connect("/socket.io/?EIO=4&transport=websocket", rcvbuf=4096)
    assert (await slow.read_frame())[1].startswith(b"0")  # Engine.IO open  # type: ignore[index]
    slow.send_text("40")  # connect to namespace "/"; from here on it reads nothing
    fast = await ws_connect()
    blob = "x" * 60000
    for _ in range(1000):
        if any("slow consumer" in r.getMessage() for r in caplog.records):
            break
        await fast.send({"type": "broadcast", "message": blob})
        expect_type(await fast.recv(), "broadcast", message=blob)
    else:
        raise AssertionError("the slow Socket.IO consumer was never detected")
    expect_type(await fast.request({"type": "ping"}), "pong")
    await eventually(lambda: any("code=1013" in r.getMessage() for r in caplog.records))
