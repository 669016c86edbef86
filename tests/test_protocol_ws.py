"""The wire contract over a real socket: every row, every error, every close code."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from conftest import Connect
from helpers import eventually

from miaws.cli.check import SCENARIOS, TIMESTAMP, expect_error, expect_type, run_check
from miaws.service import Service

SCENARIO_NAMES = [name for name, _ in SCENARIOS]


@pytest.mark.parametrize("name", SCENARIO_NAMES)
async def test_contract_scenario(name: str, ws_url: str) -> None:
    """Each scenario of ``miaws check`` passes against the server."""
    results = await run_check(ws_url)
    outcome = {n: (ok, detail) for n, ok, detail in results}
    assert outcome[name] == (True, "")


async def test_welcome_fields(ws_connect: Connect, service: Service) -> None:
    """The welcome carries a clientId the registry knows, and a JS-style timestamp."""
    peer = await ws_connect()
    w = peer.welcome
    assert set(w) == {"type", "clientId", "message", "timestamp"}
    assert TIMESTAMP.match(w["timestamp"])
    assert [c["clientId"] for c in service.clients_info()] == [w["clientId"]]


async def test_pong_has_exactly_type_timestamp_and_id(ws_connect: Connect) -> None:
    """A pong is {type, timestamp} plus the id when one was sent."""
    peer = await ws_connect()
    assert set(await peer.request({"type": "ping"})) == {"type", "timestamp"}
    assert set(await peer.request({"type": "ping", "id": "x"})) == {"type", "timestamp", "id"}


async def test_echo_any_json_value(ws_connect: Connect) -> None:
    """echo returns any JSON value unchanged as original (null and false included)."""
    peer = await ws_connect()
    for value in (None, False, 0, "", [], {"a": [1, {"b": None}]}, "ünïcødé ✓"):
        reply = await peer.request({"type": "echo", "message": value})
        expect_type(reply, "echo", original=value)


async def test_room_broadcast_payload(ws_connect: Connect) -> None:
    """A room broadcast is {type, message, from, room, timestamp}, sender included."""
    a, b = await ws_connect(), await ws_connect()
    for p in (a, b):
        await p.request({"type": "join-room", "room": "r1"})
    await b.send({"type": "broadcast", "message": [1, 2], "room": "r1", "id": 5})
    for p in (a, b):
        msg = await p.recv()
        assert set(msg) == {"type", "message", "from", "room", "timestamp"}
        assert msg["from"] == b.welcome["clientId"] and msg["room"] == "r1"


async def test_broadcast_after_leave_not_received(ws_connect: Connect) -> None:
    """A client that left a room gets no more of its broadcasts."""
    a, b = await ws_connect(), await ws_connect()
    for p in (a, b):
        await p.request({"type": "join-room", "room": "r2"})
    await b.request({"type": "leave-room", "room": "r2"})
    await a.send({"type": "broadcast", "message": "m", "room": "r2"})
    expect_type(await a.recv(), "broadcast", message="m")
    await b.expect_silence()


async def test_schema_details_name_the_path(ws_connect: Connect) -> None:
    """details.path names the failing property."""
    peer = await ws_connect()
    reply = await peer.request({"type": "join-room", "room": "bad room", "id": 1})
    expect_error(reply, "invalid-message", id=1)
    assert reply["details"]["path"] == "/room"
    reply = await peer.request({"type": "echo"})
    assert reply["details"]["path"] == "/message"


async def test_room_name_with_trailing_newline_rejected(ws_connect: Connect) -> None:
    """A room name is checked whole: a trailing newline is invalid."""
    peer = await ws_connect()
    for kind in ("join-room", "leave-room"):
        expect_error(await peer.request({"type": kind, "room": "abc\n"}), "invalid-message")
    reply = await peer.request({"type": "broadcast", "message": 1, "room": "abc\n"})
    expect_error(reply, "invalid-message")


async def test_registry_and_rooms_follow_joins(ws_connect: Connect, service: Service) -> None:
    """clients_info() and the rooms view reflect joins and leaves."""
    a, b = await ws_connect(), await ws_connect()
    await a.request({"type": "join-room", "room": "x"})
    await b.request({"type": "join-room", "room": "x"})
    await b.request({"type": "join-room", "room": "y"})
    assert service.rooms_info() == {"x": 2, "y": 1}
    info = {c["clientId"]: c for c in service.clients_info()}
    assert info[b.welcome["clientId"]]["rooms"] == ["x", "y"]
    assert info[b.welcome["clientId"]]["messagesIn"] == 2
    assert service.connected_count() == 2


async def test_abrupt_disconnect_cleans_up(
    ws_connect: Connect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A client whose TCP connection drops without a close frame is removed and logged 1006."""
    a, b = await ws_connect(), await ws_connect()
    await a.request({"type": "join-room", "room": "gone"})
    caplog.set_level(logging.INFO, "miaws")
    a.conn.protocol.stream.close()  # type: ignore[union-attr]
    await eventually(lambda: service.connected_count() == 1)
    assert service.rooms_info() == {}
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1
    assert a.welcome["clientId"] in lines[0] and "code=1006" in lines[0]
    assert "rooms=[gone]" in lines[0]
    expect_type(await b.request({"type": "ping"}), "pong")


@pytest.mark.parametrize(("code", "meaning"), [(1000, "normal"), (1001, "going away")])
async def test_client_close_code_logged(
    ws_connect: Connect, service: Service, caplog: pytest.LogCaptureFixture, code: int, meaning: str
) -> None:
    """The close code a client sends is logged with its meaning."""
    caplog.set_level(logging.INFO, "miaws")
    peer = await ws_connect()
    peer.conn.close(code)
    await eventually(lambda: service.connected_count() == 0)
    (line,) = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert f"code={code} ({meaning}" in line


async def test_close_without_status_logged_1005(
    ws_connect: Connect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A close frame without a code is logged as 1005 (no status received)."""
    caplog.set_level(logging.INFO, "miaws")
    peer = await ws_connect()
    peer.conn.close()
    await eventually(lambda: service.connected_count() == 0)
    (line,) = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert "code=1005 (no status received" in line


@pytest.mark.config({"heartbeat": {"interval": 0.2, "timeout": 0.2}})
async def test_heartbeat_drops_client_that_does_not_answer(
    ws_connect: Connect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that stops answering pings is logged as dead and removed; others stay."""
    caplog.set_level(logging.INFO, "miaws")
    alive = await ws_connect()
    silent = await ws_connect()
    # Stop the silent client's reading, so it never answers a ping (as a frozen peer would).
    silent.conn.protocol.stream.read_bytes = lambda *a, **k: asyncio.Future()  # type: ignore
    await asyncio.sleep(0)
    await eventually(lambda: service.connected_count() == 1, timeout=5)
    (line,) = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert silent.welcome["clientId"] in line and "dead" in line
    await asyncio.sleep(0.6)  # several heartbeats later the answering client is still there
    expect_type(await alive.request({"type": "ping"}), "pong")
    assert service.connected_count() == 1


@pytest.mark.config({"limits": {"max_message_bytes": 100}})
async def test_size_limit_from_config(ws_connect: Connect, ws_url: str) -> None:
    """limits.max_message_bytes is the limit: exactly it passes, one more closes 1009."""
    results = await run_check(ws_url, limit=100)
    assert dict((n, ok) for n, ok, _ in results)[
        "message of exactly the limit accepted; one byte more: close 1009"
    ]


@pytest.mark.config({"server": {"ws_path": "/live"}})
async def test_ws_path_from_config(ws_connect: Connect, port: int) -> None:
    """server.ws_path moves the endpoint."""
    peer = await ws_connect(f"ws://127.0.0.1:{port}/live")
    expect_type(peer.welcome, "welcome")


FAILING_PLUGIN = """
from miaws import MessageType, hookimpl

def explode(ctx, message):
    raise RuntimeError("boom")

@hookimpl
def register_message_types():
    return [MessageType("explode", explode, schema={"type": "object"})]
"""


def _failing_plugin_dir(tmp: Path) -> str:
    (tmp / "exploder.py").write_text(FAILING_PLUGIN)
    return str(tmp)


@pytest.fixture
def config_data(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, object]:
    marker = request.node.get_closest_marker("config")
    if marker:
        return dict(marker.args[0])
    if "handler_failure" in request.node.name:
        return {
            "plugins": {
                "paths": [_failing_plugin_dir(tmp_path)],
                "enabled": ["ping", "echo", "broadcast", "rooms", "exploder"],
            }
        }
    return {}


async def test_handler_failure_closes_1011(
    ws_connect: Connect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises closes that client with 1011, logs the traceback; others live."""
    caplog.set_level(logging.INFO, "miaws")
    victim, other = await ws_connect(), await ws_connect()
    await victim.send({"type": "explode"})
    assert await victim.closed_with() == 1011
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert tracebacks and "boom" in str(tracebacks[0].exc_info[1])  # type: ignore[index]
    expect_type(await other.request({"type": "ping"}), "pong")
    await eventually(lambda: service.connected_count() == 1)
    assert any("code=1011" in r.getMessage() for r in caplog.records)


async def test_pushes_are_not_delayed(ws_connect: Connect) -> None:
    """A push that follows a reply reaches the client at once: 40 rounds of a ping and,
    2 ms later, another client's broadcast take well under a second.  With Nagle's
    algorithm on, each push waits for the client's delayed ACK of the reply (~40 ms)."""
    client, other = await ws_connect(), await ws_connect()
    started = asyncio.get_running_loop().time()
    for i in range(40):
        await client.send({"type": "ping", "id": i})
        await asyncio.sleep(0.002)
        await other.send({"type": "broadcast", "message": i})
        assert (await client.recv())["type"] == "pong"
        assert (await client.recv())["message"] == i
    assert asyncio.get_running_loop().time() - started < 0.6
