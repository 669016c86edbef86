"""The Socket.IO endpoint with the official socket.io-client 4.x, run by Node (tests/node)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
from conftest import Connect
from helpers import eventually
from sio_helpers import ERROR_CASES, NodePeer, SioPeer, ensure_node_modules, with_errors_plugin

from miaws.cli.check import expect_error, expect_type
from miaws.service import Service

NodeConnect = Callable[..., Awaitable[NodePeer]]


@pytest.fixture(scope="module", autouse=True)
def node_modules() -> None:
    """``npm ci`` into tests/node once, when node_modules is missing (bounded: 120 s)."""
    ensure_node_modules()


@pytest.fixture
def config_data(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    return with_errors_plugin(tmp_path, request)


@pytest.fixture
def node_connect(port: int, io_loop: Any) -> Iterator[NodeConnect]:
    """``await node_connect(namespace="/")`` -> a NodePeer that has read its welcome."""
    peers: list[NodePeer] = []

    async def connect(namespace: str = "/", transport: str | None = None) -> NodePeer:
        peer = await NodePeer.connect(f"http://127.0.0.1:{port}", namespace, transport)
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        io_loop.run_sync(peer.close, timeout=10)


async def test_connect_welcome_and_upgrade(
    node_connect: NodeConnect, service: Service, port: int
) -> None:
    """The browser default (polling, then upgrade to WebSocket) connects and gets welcome."""
    peer = await node_connect()
    await peer.wait_upgraded()  # it started on long-polling
    assert set(peer.welcome) == {"type", "clientId", "message", "timestamp"}
    body = (
        await tornado.httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/clients")
    ).body
    assert [(c["clientId"], c["transport"]) for c in json.loads(body)] == [
        (peer.client_id, "socket.io")
    ]


async def test_ping_with_ack(node_connect: NodeConnect) -> None:
    """ping with an ack callback: the callback and the pong event get the same pong."""
    peer = await node_connect(transport="websocket")
    ack, (event, reply) = await peer.request("ping", {"id": "n1"})
    assert event == "pong" and reply == ack
    expect_type(ack, "pong", id="n1")


async def test_every_error_code(node_connect: NodeConnect) -> None:
    """Each refusal reaches the ack and an error event; the connection stays usable."""
    peer = await node_connect(transport="websocket")
    for event, args, code in ERROR_CASES:
        data: Any = args[0] if len(args) == 1 else tuple(args)
        ack, (name, reply) = await peer.request(event, data)
        assert name == "error" and reply == ack, (event, args)
        expect_error(ack, code)
    assert (await peer.request("ping", {}))[1][0] == "pong"


async def test_room_broadcast_both_directions(
    node_connect: NodeConnect, ws_connect: Connect, port: int
) -> None:
    """Room R spans native, socket.io-client and python-socketio members, in both directions."""
    node = await node_connect(transport="websocket")
    native = await ws_connect()
    py = await SioPeer.connect(f"http://127.0.0.1:{port}")
    try:
        await node.request("join-room", {"room": "R"})
        await py.request("join-room", {"room": "R"})
        await native.request({"type": "join-room", "room": "R"})

        await native.send({"type": "broadcast", "message": "from native", "room": "R"})
        delivered = await native.recv()
        assert await node.recv() == ("broadcast", delivered)
        assert await py.recv() == ("broadcast", delivered)

        ack = await node.call("broadcast", {"message": "from node", "room": "R"})
        expect_type(ack, "broadcast", message="from node", room="R")
        assert await native.recv() == ack
        assert await py.recv() == ("broadcast", ack)
        assert await node.recv() == ("broadcast", ack)
    finally:
        await py.close()


async def test_broadcast_to_all(node_connect: NodeConnect, ws_connect: Connect) -> None:
    """A broadcast without a room reaches every client on both transports."""
    node = await node_connect(transport="websocket")
    native = await ws_connect()
    await native.send({"type": "broadcast", "message": "everyone"})
    assert (await node.recv())[1] == await native.recv()
    await node.emit("broadcast", {"message": "all of you"})
    assert (await native.recv())["message"] == "all of you"


@pytest.mark.config({"socketio": {"namespaces": ["/", "/chat"]}})
async def test_namespaces(node_connect: NodeConnect, ws_connect: Connect, port: int) -> None:
    """/chat's room R is its own: native and "/" members of R do not get its broadcasts."""
    chat = await node_connect("/chat", transport="websocket")
    root = await node_connect("/", transport="websocket")
    native = await ws_connect()
    py_chat = await SioPeer.connect(f"http://127.0.0.1:{port}", "/chat")
    try:
        for peer in (chat, root, py_chat):
            await peer.request("join-room", {"room": "R"})
        await native.request({"type": "join-room", "room": "R"})
        ack = await chat.call("broadcast", {"message": "chat only", "room": "R"})
        assert await py_chat.recv() == ("broadcast", ack)
        await root.expect_silence(0.1)
        await native.expect_silence(0.1)
        await chat.emit("broadcast", {"message": "chat all"})
        assert (await py_chat.recv())[1]["message"] == "chat all"
        await root.expect_silence(0.1)
    finally:
        await py_chat.close()


async def test_unknown_namespace_refused(node_connect: NodeConnect) -> None:
    """A namespace not in socketio.namespaces gets connect_error."""
    with pytest.raises(AssertionError, match="connect_error"):
        await node_connect("/nope", transport="websocket")


async def test_disconnect_logged_and_cleaned_up(
    node_connect: NodeConnect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """socket.disconnect() is logged as 1000 closed by client; a killed client as 1005;
    neither leaves a client or a room behind."""
    caplog.set_level(logging.INFO, logger="miaws")
    polite = await node_connect(transport="websocket")
    rude = await node_connect()  # long-polling, then WebSocket
    await rude.wait_upgraded()
    for peer in (polite, rude):
        await peer.request("join-room", {"room": "gone"})
    assert service.rooms_info() == {"gone": 2}
    assert (await polite.disconnect())["reason"] == "io client disconnect"
    rude.kill()
    await eventually(lambda: service.connected_count() == 0)
    assert service.rooms_info() == {} and service.clients_info() == []
    lines = {
        r.getMessage().split("clientId=")[1].split()[0]: r.getMessage()
        for r in caplog.records
        if "disconnected" in r.getMessage()
    }
    assert "code=1000" in lines[polite.client_id] and "closed by client" in lines[polite.client_id]
    assert "code=1005" in lines[rude.client_id] and "rooms=[gone]" in lines[rude.client_id]


async def test_server_close_reaches_node_client(
    node_connect: NodeConnect, service: Service
) -> None:
    """Client.close() from the server side disconnects socket.io-client."""
    peer = await node_connect(transport="websocket")
    (client,) = service.local.clients()
    client.close(1008, "policy")
    assert (await peer.next_status())["reason"] == "io server disconnect"
    await eventually(lambda: service.connected_count() == 0)
