"""The Socket.IO endpoint through python-socketio's AsyncClient: events, acks, errors, rooms
shared with the native endpoint, namespaces, disconnect cleanup."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
import tornado.httpclient
import tornado.websocket
from conftest import Connect
from helpers import eventually
from sio_helpers import ERROR_CASES, SioPeer, with_errors_plugin

from miaws.cli.check import TIMESTAMP, expect_error, expect_type
from miaws.service import Service

SioConnect = Callable[..., Awaitable[SioPeer]]


@pytest.fixture
def sio_connect(port: int, io_loop: Any) -> Iterator[SioConnect]:
    """``await sio_connect(namespace="/")`` -> a SioPeer that has read its welcome; each is
    disconnected at teardown."""
    peers: list[SioPeer] = []

    async def connect(namespace: str = "/", **kw: Any) -> SioPeer:
        peer = await SioPeer.connect(f"http://127.0.0.1:{port}", namespace, **kw)
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        io_loop.run_sync(peer.close, timeout=5)


async def get_json(port: int, path: str) -> Any:
    response = await tornado.httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}")
    return json.loads(response.body)


# ---------------------------------------------------------------- connect, events, acks


async def test_welcome_and_registry(
    sio_connect: SioConnect, ws_connect: Connect, port: int
) -> None:
    """A Socket.IO client gets the native welcome; /api/clients and /health count both."""
    peer = await sio_connect()
    assert set(peer.welcome) == {"type", "clientId", "message", "timestamp"}
    assert peer.welcome["type"] == "welcome" and TIMESTAMP.match(peer.welcome["timestamp"])
    native = await ws_connect()
    clients = {c["clientId"]: c["transport"] for c in await get_json(port, "/api/clients")}
    assert clients == {peer.client_id: "socket.io", native.welcome["clientId"]: "ws"}
    assert (await get_json(port, "/health"))["connections"] == 2


# python-socketio's client waits for its pending long-poll before a disconnect completes; a
# short heartbeat keeps that wait short.
@pytest.mark.config({"heartbeat": {"interval": 1, "timeout": 1}})
async def test_polling_transport(sio_connect: SioConnect) -> None:
    """Long-polling (no WebSocket upgrade) works too."""
    peer = await sio_connect(transports=["polling"])
    ack, (event, reply) = await peer.request("ping", {"id": "p"})
    assert event == "pong" and reply == ack and ack["id"] == "p"


async def test_ping_with_ack(sio_connect: SioConnect) -> None:
    """ping -> a pong event, and the ack receives the same pong."""
    peer = await sio_connect()
    ack, (event, reply) = await peer.request("ping", {"id": 7})
    assert event == "pong" and reply == ack
    assert set(ack) == {"type", "timestamp", "id"} and ack["id"] == 7


async def test_replies_are_not_delayed(sio_connect: SioConnect) -> None:
    """50 ping round trips (each a pong event and an ack) take well under a second: no
    Nagle delay on the reply's second write (it cost about 40 ms per request)."""
    peer = await sio_connect()
    started = time.monotonic()
    for i in range(50):
        await peer.request("ping", {"id": i})
    assert time.monotonic() - started < 1.0


async def test_event_without_ack(sio_connect: SioConnect) -> None:
    """Without an ack callback the reply still comes as an event; an empty object will do."""
    peer = await sio_connect()
    await peer.emit("echo", {"message": {"a": [1, None]}})
    event, reply = await peer.recv()
    assert event == "echo"
    expect_type(reply, "echo", original={"a": [1, None]})
    await peer.emit("ping", {})
    assert (await peer.recv())[0] == "pong"


async def test_event_name_is_the_type(sio_connect: SioConnect) -> None:
    """The event name is the message type, whatever type the payload claims."""
    peer = await sio_connect()
    ack, (event, _) = await peer.request("ping", {"type": "echo"})
    assert event == "pong" and ack["type"] == "pong"


async def test_room_join_leave_acks(sio_connect: SioConnect, service: Service) -> None:
    """join-room and leave-room answer room-joined / room-left, by event and by ack."""
    peer = await sio_connect()
    ack, (event, _) = await peer.request("join-room", {"room": "r1"})
    assert event == "room-joined" and ack["room"] == "r1"
    assert service.rooms_info() == {"r1": 1}
    ack, (event, _) = await peer.request("leave-room", {"room": "r1"})
    assert event == "room-left" and ack["room"] == "r1"
    assert service.rooms_info() == {}


# ---------------------------------------------------------------- errors


@pytest.fixture
def config_data(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The test's config, plus a plugin that answers rate-limited and forbids room vip."""
    return with_errors_plugin(tmp_path, request)


@pytest.mark.parametrize(("event", "args", "code"), ERROR_CASES)
async def test_error_codes(sio_connect: SioConnect, event: str, args: list[Any], code: str) -> None:
    """Each refusal is an error event (and ack) with its code; the connection stays usable."""
    peer = await sio_connect()
    data: Any = args[0] if len(args) == 1 else tuple(args)
    ack, (name, reply) = await peer.request(event, data)
    assert name == "error" and reply == ack
    expect_error(ack, code)
    assert (await peer.request("ping", {}))[1][0] == "pong"


async def test_error_keeps_the_id(sio_connect: SioConnect) -> None:
    """An error for a message with an id carries the id, as on the native endpoint."""
    peer = await sio_connect()
    ack = await peer.call("leave-room", {"room": "x", "id": "abc"})
    expect_error(ack, "not-in-room", id="abc")
    assert ack["message"] == "Not a member of room x"


async def test_malformed_packet_closes_only_that_client(
    sio_connect: SioConnect, port: int, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A packet that is not Socket.IO JSON (the only way to send bad JSON) drops that
    connection alone, logged as 1007; invalid-json cannot be answered over Socket.IO."""
    caplog.set_level(logging.INFO, logger="miaws")
    other = await sio_connect()
    conn = await raw_connect(port)
    await eventually(lambda: service.connected_count() == 2)
    await conn.write_message('42["ping",{bad')
    assert await asyncio.wait_for(conn.read_message(), 5) == "1"  # Engine.IO close
    assert await asyncio.wait_for(conn.read_message(), 5) is None  # and the socket is closed
    conn.close()
    await eventually(lambda: service.connected_count() == 1)
    assert (await other.request("ping", {}))[1][0] == "pong"
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "code=1007" in lines[0] and "invalid Socket.IO packet" in lines[0]


# ---------------------------------------------------------------- rooms across transports


async def test_room_broadcast_native_to_socketio(
    sio_connect: SioConnect, ws_connect: Connect
) -> None:
    """A native client's broadcast to room R reaches Socket.IO members of R only."""
    member, outsider = await sio_connect(), await sio_connect()
    native = await ws_connect()
    await member.request("join-room", {"room": "R"})
    await native.request({"type": "join-room", "room": "R"})
    await native.send({"type": "broadcast", "message": "hi", "room": "R"})
    event, msg = await member.recv()
    assert event == "broadcast"
    assert msg == await native.recv()  # the same object on both transports
    assert msg["message"] == "hi" and msg["room"] == "R"
    assert msg["from"] == native.welcome["clientId"]
    await outsider.expect_silence()


async def test_room_broadcast_socketio_to_native(
    sio_connect: SioConnect, ws_connect: Connect
) -> None:
    """A Socket.IO client's broadcast to room R reaches native members; the ack has it too."""
    sender = await sio_connect()
    native, outsider = await ws_connect(), await ws_connect()
    await sender.request("join-room", {"room": "R"})
    await native.request({"type": "join-room", "room": "R"})
    ack = await sender.call("broadcast", {"message": [1, 2], "room": "R"})
    delivered = await native.recv()
    assert ack == delivered
    expect_type(delivered, "broadcast", message=[1, 2], room="R", **{"from": sender.client_id})
    assert await sender.recv() == ("broadcast", delivered)
    await outsider.expect_silence()


async def test_broadcast_to_all_reaches_both_transports(
    sio_connect: SioConnect, ws_connect: Connect
) -> None:
    """A broadcast without a room reaches every client of both transports, sender included."""
    a, b = await sio_connect(), await sio_connect()
    native = await ws_connect()
    await a.emit("broadcast", {"message": "all"})
    for peer in (a, b):
        event, msg = await peer.recv()
        assert event == "broadcast" and msg["message"] == "all" and "room" not in msg
    assert (await native.recv())["message"] == "all"
    await native.send({"type": "broadcast", "message": "back"})
    for peer in (a, b):
        assert (await peer.recv())[1]["message"] == "back"


# ---------------------------------------------------------------- namespaces


@pytest.mark.config({"socketio": {"namespaces": ["/", "/chat", "/game"]}})
async def test_namespaces_have_their_own_rooms(
    sio_connect: SioConnect, ws_connect: Connect, service: Service
) -> None:
    """Room R of /chat is not room R of / (shared with native) nor of /game."""
    root, chat1, chat2, game = (
        await sio_connect("/"),
        await sio_connect("/chat"),
        await sio_connect("/chat"),
        await sio_connect("/game"),
    )
    native = await ws_connect()
    for peer in (root, chat1, chat2, game):
        await peer.request("join-room", {"room": "R"})
    await native.request({"type": "join-room", "room": "R"})
    assert service.rooms_info() == {"R": 2, "/chat#R": 2, "/game#R": 1}

    ack = await chat1.call("broadcast", {"message": "c", "room": "R"})
    assert ack["room"] == "R"
    for peer in (chat1, chat2):
        assert (await peer.recv())[1] == ack
    await native.send({"type": "broadcast", "message": "n", "room": "R"})
    assert (await root.recv())[1]["message"] == "n"
    assert (await native.recv())["message"] == "n"
    await game.expect_silence(0.1)
    await chat2.expect_silence(0.1)

    # A broadcast to all stays in its namespace; native clients are in "/".
    await chat2.emit("broadcast", {"message": "chat-all"})
    for peer in (chat1, chat2):
        assert (await peer.recv())[1]["message"] == "chat-all"
    await native.send({"type": "broadcast", "message": "root-all"})
    assert (await root.recv())[1]["message"] == "root-all"
    assert (await native.recv())["message"] == "root-all"
    for peer in (chat1, chat2, game):
        await peer.expect_silence(0.1)


@pytest.mark.config({"socketio": {"namespaces": ["/chat"]}})
async def test_unlisted_namespace_is_refused(port: int, sio_connect: SioConnect) -> None:
    """Only the configured namespaces accept connections."""
    await sio_connect("/chat")
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            f"http://127.0.0.1:{port}", namespaces=["/"], transports=["websocket"], wait_timeout=5
        )
    await client.disconnect()


@pytest.mark.config({"socketio": {"enabled": False}})
async def test_disabled(port: int) -> None:
    """socketio.enabled false: /socket.io/ is not served."""
    client = tornado.httpclient.AsyncHTTPClient()
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    response = await client.fetch(url, raise_error=False)
    assert response.code == 404


@pytest.mark.config({"socketio": {"cors_allowed_origins": ["https://app.example"]}})
async def test_cors_origins(port: int) -> None:
    """A listed origin is allowed; any other is refused with 400."""
    client = tornado.httpclient.AsyncHTTPClient()
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    ok = await client.fetch(url, headers={"Origin": "https://app.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    bad = await client.fetch(url, headers={"Origin": "https://evil.example"}, raise_error=False)
    assert bad.code == 400


# ---------------------------------------------------------------- disconnects


async def test_disconnect_cleanup(sio_connect: SioConnect, service: Service) -> None:
    """Disconnected clients leave no client and no room behind."""
    a, b = await sio_connect(), await sio_connect()
    for peer in (a, b):
        await peer.request("join-room", {"room": "gone"})
    await a.close()
    await eventually(lambda: service.connected_count() == 1)
    assert service.rooms_info() == {"gone": 1}
    await b.close()
    await eventually(lambda: service.connected_count() == 0)
    assert service.rooms_info() == {} and service.clients_info() == []


async def raw_connect(port: int) -> tornado.websocket.WebSocketClientConnection:
    """A bare Engine.IO WebSocket connected to namespace "/" (welcome read)."""
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    conn = await tornado.websocket.websocket_connect(url)
    assert (await conn.read_message() or "").startswith("0{")  # Engine.IO open
    await conn.write_message("40")
    assert (await conn.read_message() or "").startswith("40{")  # Socket.IO connect
    assert (await conn.read_message() or "").startswith('42["welcome"')
    return conn


async def test_namespace_disconnect_is_logged(
    port: int, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A client's Socket.IO disconnect packet is logged as 1000 closed by client."""
    caplog.set_level(logging.INFO, logger="miaws")
    conn = await raw_connect(port)
    await conn.write_message('42["join-room",{"room":"gone"}]')
    await conn.read_message()
    await conn.write_message("41")
    await eventually(lambda: service.connected_count() == 0)
    conn.close()
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1
    assert "transport=socket.io code=1000" in lines[0] and "closed by client" in lines[0]
    assert "rooms=[gone]" in lines[0]


async def test_dropped_connection_is_logged(
    port: int, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection dropped without a Socket.IO disconnect is removed and logged as 1005."""
    caplog.set_level(logging.INFO, logger="miaws")
    conn = await raw_connect(port)
    conn.close()
    await eventually(lambda: service.connected_count() == 0)
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "code=1005" in lines[0] and "transport closed" in lines[0]


async def test_handler_exception_closes_with_1011(
    sio_connect: SioConnect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises disconnects that client alone, logged with 1011 and a traceback."""
    caplog.set_level(logging.INFO, logger="miaws")
    bad, good = await sio_connect(), await sio_connect()
    await bad.emit("crash", {})
    await eventually(lambda: not bad.client.connected)
    await eventually(lambda: service.connected_count() == 1)
    assert (await good.request("ping", {}))[1][0] == "pong"
    assert any(r.exc_info for r in caplog.records if "handler failed" in r.getMessage())
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "code=1011" in lines[0] and "internal error" in lines[0]


@pytest.mark.config({"limits": {"max_message_bytes": 1000}})
async def test_message_over_the_limit(sio_connect: SioConnect, service: Service) -> None:
    """A message over limits.max_message_bytes closes that connection; smaller ones pass."""
    peer = await sio_connect()
    ack = await peer.call("echo", {"message": "x" * 800})
    assert ack["original"] == "x" * 800
    await peer.emit("echo", {"message": "x" * 2000})
    await eventually(lambda: service.connected_count() == 0)


async def test_server_close_reaches_client(
    sio_connect: SioConnect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Client.close() disconnects a Socket.IO client and logs the code it was given."""
    caplog.set_level(logging.INFO, logger="miaws")
    peer = await sio_connect()
    (client,) = service.local.clients()
    client.close(1008, "policy")
    await eventually(lambda: not peer.client.connected)
    await eventually(lambda: service.connected_count() == 0)
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert "code=1008" in lines[0] and "policy" in lines[0]


@pytest.mark.config(
    {
        "socketio": {"namespaces": ["/", "/chat"]},
        "history": {"rooms": [{"match": "feed*", "size": 10, "ttl": 60}]},
    }
)
async def test_room_history_in_another_namespace(
    sio_connect: SioConnect, ws_connect: Connect
) -> None:
    """Defect 14.1: room feed of /chat keeps its own history.  Before the fix a /chat join
    read the history of / (seq 3 here) and /chat broadcasts were never stamped."""
    native = await ws_connect()
    await native.request({"type": "join-room", "room": "feed"})
    for i in range(3):
        await native.send({"type": "broadcast", "room": "feed", "message": i})
    assert [(await native.recv())["seq"] for _ in range(3)] == [1, 2, 3]

    chat = await sio_connect("/chat")
    _, (event, reply) = await chat.request("join-room", {"room": "feed"})
    assert event == "room-joined" and reply["seq"] == 0, reply
    await chat.emit("broadcast", {"message": "c", "room": "feed"})
    event, got = await chat.recv()
    assert (event, got["message"], got["room"]) == ("broadcast", "c", "feed")
    assert (got["epoch"], got["seq"]) == (reply["epoch"], 1)

    late = await sio_connect("/chat")
    since = {"epoch": reply["epoch"], "seq": 0}
    _, (event, rejoined) = await late.request("join-room", {"room": "feed", "since": since})
    assert (event, rejoined["recovered"], rejoined["seq"]) == ("room-joined", True, 1)
    event, missed = await late.recv()
    assert (event, missed["message"], missed["seq"]) == ("broadcast", "c", 1)
    await native.expect_silence(0.1)


# ---------------------------------------------------------------- compression


async def test_websocket_negotiates_no_compression(port: int) -> None:
    """Compression follows miaws's setting (off; Engine.IO's own handler offers
    permessage-deflate to every WebSocket): a client offering it gets a 101 without
    Sec-WebSocket-Extensions."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
    finally:
        writer.close()
    assert head.startswith("HTTP/1.1 101"), head
    assert "sec-websocket-extensions" not in head.lower(), head


async def test_polling_is_not_compressed(service: Service) -> None:
    """The polling transport too: Engine.IO's http_compression (on by default) is off."""
    assert service.socketio is not None
    assert service.socketio.sio.eio.http_compression is False
