"""The built-in ``proxy`` plugin (``proxy.types``) against a real HTTP backend on 127.0.0.1:
request and reply with the sender's identity, errors, the circuit breaker, and what the
backend may ask (broadcast, join, leave)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Connect
from http_backend import Seen, TestBackend, reply
from sio_helpers import SioPeer
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from miaws.cli.check import expect_error, expect_type
from miaws.service import Service

BUILTINS = ["ping", "echo", "broadcast", "rooms"]


def proxy_config(*types: dict[str, Any], **proxy: Any) -> dict[str, Any]:
    return {
        "plugins": {"enabled": [*BUILTINS, "proxy"]},
        "proxy": {"types": list(types), **proxy},
    }


SUBMIT = {"type": "order.submit", "url": "BACKEND/submit", "forward_headers": ["cookie"]}


@pytest.mark.config(proxy_config(SUBMIT))
async def test_request_reply_with_identity(
    ws_connect: Connect, ws_url: str, backend: TestBackend
) -> None:
    """The message goes to the backend with clientId, user, rooms and the forwarded cookie
    (in the body and as an HTTP header, other headers not); its answer is the reply, typed
    order.submit.result, with the request's id and a timestamp."""
    backend.route("/submit", reply({"total": 3}))
    peer = await ws_connect(HTTPRequest(ws_url, headers={"Cookie": "session=abc", "X-Other": "no"}))
    expect_type(await peer.request({"type": "join-room", "room": "lobby"}), "room-joined")
    answer = await peer.request({"type": "order.submit", "id": 7, "item": "tea"})
    expect_type(answer, "order.submit.result", id=7, total=3)
    (seen,) = backend.calls("/submit")
    assert seen.body == {
        "type": "order.submit",
        "message": {"type": "order.submit", "id": 7, "item": "tea"},
        "clientId": peer.welcome["clientId"],
        "user": None,
        "info": None,
        "transport": "ws",
        "rooms": ["lobby"],
        "headers": {"cookie": "session=abc"},
    }
    assert seen.headers["cookie"] == "session=abc"
    assert "x-other" not in seen.headers
    assert seen.headers["content-type"] == "application/json"


@pytest.mark.config(proxy_config(SUBMIT))
async def test_answer_may_name_its_type_and_an_empty_answer_is_a_result(
    ws_connect: Connect, backend: TestBackend
) -> None:
    """A "type" in the answer is the reply's type; an empty 204 is {"type": "<type>.result"}."""
    peer = await ws_connect()
    backend.route("/submit", reply({"type": "order.accepted", "order": 42}))
    expect_type(await peer.request({"type": "order.submit"}), "order.accepted", order=42)
    backend.route("/submit", reply(status=204))
    answer = await peer.request({"type": "order.submit", "id": "b"})
    assert set(answer) == {"type", "id", "timestamp"}
    expect_type(answer, "order.submit.result", id="b")


@pytest.mark.config(proxy_config({**SUBMIT, "timeout": 1.0}))
async def test_timeout_is_an_error_reply_and_the_connection_lives(
    ws_connect: Connect, backend: TestBackend
) -> None:
    """A backend slower than the type's timeout: error backend-timeout (with the id); the
    same connection goes on, and another client was never held up."""
    backend.route("/submit", reply({"late": True}, delay=2.0))
    peer, other = await ws_connect(), await ws_connect()
    await peer.send({"type": "order.submit", "id": 1})
    started = time.monotonic()
    expect_type(await other.request({"type": "ping"}), "pong")
    assert time.monotonic() - started < 0.9  # before the call ends: not waiting for it
    answer = await peer.recv()
    expect_error(answer, "backend-timeout", id=1)
    assert answer["details"] == {"timeout": 1.0}
    expect_type(await peer.request({"type": "ping"}), "pong")


@pytest.mark.config(proxy_config(SUBMIT))
async def test_error_status_and_unreadable_answers(
    ws_connect: Connect, backend: TestBackend
) -> None:
    """5xx and 4xx are backend-error with the status; text, a JSON list or a bad miaws
    member are backend-error "unreadable answer"; the connection lives through all."""
    peer = await ws_connect()
    for status in (500, 503, 404):
        backend.route("/submit", reply({"error": "x"}, status=status))
        answer = await peer.request({"type": "order.submit", "id": status})
        expect_error(answer, "backend-error", id=status, details={"status": status})
    for bad in (
        reply(raw=b"<html>oops</html>"),
        reply([1, 2]),
        reply({"miaws": {"join": "lobby"}}),
        reply({"type": 5}),
        reply({"miaws": {"broadcast": [{"room": "r"}]}}),
    ):
        backend.route("/submit", bad)
        answer = await peer.request({"type": "order.submit"})
        expect_error(answer, "backend-error", details={"reason": "unreadable answer"})
    expect_type(await peer.request({"type": "ping"}), "pong")


@pytest.mark.config(proxy_config({**SUBMIT, "url": "http://127.0.0.1:9/nothing"}))
async def test_unreachable_backend(ws_connect: Connect) -> None:
    """Nobody listening: backend-error "unreachable", at once."""
    peer = await ws_connect()
    answer = await peer.request({"type": "order.submit"})
    expect_error(answer, "backend-error", details={"reason": "unreachable"})


@pytest.mark.config(proxy_config(SUBMIT, breaker_failures=2, breaker_seconds=1.5))
async def test_circuit_breaker_opens_and_closes(
    ws_connect: Connect,
    backend: TestBackend,
    http_server_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two 500s in a row open the circuit: the next call fails at once without reaching the
    backend, the metric says 2 (open) and /health names it; after breaker_seconds one probe
    goes through, succeeds and closes it (metric 0).  Both changes are logged."""
    caplog.set_level(logging.INFO, "miaws.backend")
    peer = await ws_connect()
    backend.route("/submit", reply(status=500))
    for _ in range(2):
        expect_error(await peer.request({"type": "order.submit"}), "backend-error")
    answer = await peer.request({"type": "order.submit"})
    expect_error(answer, "backend-error", details={"reason": "circuit open"})
    assert len(backend.calls("/submit")) == 2
    name = backend.url
    assert f'miaws_backend_circuit_state{{backend="{name}"}} 2.0' in await metrics(
        http_server_client
    )
    health = json.loads((await http_server_client.fetch("/health")).body)
    assert health["backends"] == {name: "open"}
    assert any("circuit open" in r.getMessage() for r in caplog.records)
    backend.route("/submit", reply({"ok": True}))
    await asyncio.sleep(1.6)
    expect_type(await peer.request({"type": "order.submit"}), "order.submit.result", ok=True)
    text = await metrics(http_server_client)
    assert f'miaws_backend_circuit_state{{backend="{name}"}} 0.0' in text
    assert f'miaws_backend_calls_total{{backend="{name}",outcome="rejected"}} 1.0' in text
    assert any("circuit closed" in r.getMessage() for r in caplog.records)


@pytest.mark.config(proxy_config(SUBMIT, breaker_failures=1, breaker_seconds=1.0))
async def test_failed_probe_opens_the_circuit_again(
    ws_connect: Connect, backend: TestBackend
) -> None:
    """Half-open, the probe fails: open again, failing at once for another breaker_seconds."""
    peer = await ws_connect()
    backend.route("/submit", reply(status=502))
    expect_error(
        await peer.request({"type": "order.submit"}), "backend-error", details={"status": 502}
    )
    await asyncio.sleep(1.1)
    expect_error(
        await peer.request({"type": "order.submit"}), "backend-error", details={"status": 502}
    )
    answer = await peer.request({"type": "order.submit"})
    expect_error(answer, "backend-error", details={"reason": "circuit open"})
    assert len(backend.calls("/submit")) == 2


async def metrics(client: Any) -> str:
    body: bytes = (await client.fetch("/metrics")).body
    return body.decode()


@pytest.mark.config(proxy_config(SUBMIT))
async def test_backend_asks_to_join_leave_and_broadcast(
    ws_connect: Connect, backend: TestBackend, service: Service
) -> None:
    """The answer's miaws member: the sender joins order:42 and leaves cart, gets the reply,
    then the broadcast reaches every member of order:42 (the sender too), once each."""
    sender, member, outsider = await ws_connect(), await ws_connect(), await ws_connect()
    for peer, room in ((sender, "cart"), (member, "order:42")):
        expect_type(await peer.request({"type": "join-room", "room": room}), "room-joined")
    backend.route(
        "/submit",
        reply(
            {
                "order": 42,
                "miaws": {
                    "join": ["order:42"],
                    "leave": ["cart"],
                    "broadcast": {"room": "order:42", "message": {"status": "new"}},
                },
            }
        ),
    )
    expect_type(
        await sender.request({"type": "order.submit", "id": 1}), "order.submit.result", order=42
    )
    for peer in (sender, member):
        expect_type(
            await peer.recv(),
            "broadcast",
            room="order:42",
            message={"status": "new"},
            **{"from": sender.welcome["clientId"]},
        )
    await outsider.expect_silence(0.2)
    (client,) = [c for c in service.clients_info() if c["clientId"] == sender.welcome["clientId"]]
    assert client["rooms"] == ["order:42"]


@pytest.mark.config(proxy_config(SUBMIT))
async def test_broadcast_to_a_room_the_sender_is_not_in(
    ws_connect: Connect, backend: TestBackend
) -> None:
    """A broadcast asked to a room the sender is not in: the error not-in-room is the reply
    (as for a handler that raises) and nobody gets the broadcast."""
    peer, member = await ws_connect(), await ws_connect()
    expect_type(await member.request({"type": "join-room", "room": "r"}), "room-joined")
    backend.route("/submit", reply({"miaws": {"broadcast": [{"room": "r", "message": 1}]}}))
    expect_error(await peer.request({"type": "order.submit", "id": 2}), "not-in-room", id=2)
    await member.expect_silence(0.2)
    await peer.expect_silence(0.1)


@pytest.mark.config(proxy_config(SUBMIT, max_concurrent=1))
async def test_replies_keep_request_order_and_calls_are_capped(
    ws_connect: Connect, backend: TestBackend
) -> None:
    """On one connection a slow call holds the next request until it is answered (replies
    in request order); with max_concurrent 1, two connections' calls reach the backend one
    at a time."""
    delays = iter([0.3, 0.0, 0.2, 0.2])

    async def script(seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(next(delays))
        return web.json_response({"n": seen.body["message"]["n"]})

    backend.route("/submit", script)
    peer = await ws_connect()
    await peer.send({"type": "order.submit", "n": 1})
    await peer.send({"type": "ping", "id": "p"})
    await peer.send({"type": "order.submit", "n": 2})
    first, second, third = await peer.recv(), await peer.recv(), await peer.recv()
    expect_type(first, "order.submit.result", n=1)
    expect_type(second, "pong", id="p")
    expect_type(third, "order.submit.result", n=2)
    a, b = await ws_connect(), await ws_connect()
    await a.send({"type": "order.submit", "n": 3})
    await b.send({"type": "order.submit", "n": 4})
    expect_type(await a.recv(), "order.submit.result", n=3)
    expect_type(await b.recv(), "order.submit.result", n=4)
    assert backend.most_in_flight == 1


async def test_schema_is_checked_before_the_call(
    tmp_path: Path, io_loop: Any, backend: TestBackend
) -> None:
    """A type with a schema file: a message it rejects is invalid-message and the backend
    never hears of it."""
    from miaws.config import build_settings
    from miaws.server import Server

    (tmp_path / "order.submit.json").write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"type": {"const": "order.submit"}, "item": {"type": "string"}},
                "required": ["type", "item"],
            }
        )
    )
    data = proxy_config({**SUBMIT, "url": f"{backend.url}/submit", "schema": "order.submit.json"})
    data["schemas"] = {"path": str(tmp_path)}
    data["server"] = {"host": "127.0.0.1"}
    backend.route("/submit", reply({"ok": 1}))
    server = Server(build_settings(data, source="test", environ={}))
    import socket as socketlib

    sock = socketlib.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    await server.start([sock])
    try:
        from miaws.cli.check import Peer

        peer = await Peer.connect(f"ws://127.0.0.1:{port}/ws")
        answer = await peer.request({"type": "order.submit", "item": 5})
        expect_error(answer, "invalid-message")
        expect_type(
            await peer.request({"type": "order.submit", "item": "tea"}), "order.submit.result"
        )
        assert len(backend.calls("/submit")) == 1
        peer.close()
    finally:
        await server.stop(grace=0)


@pytest.mark.config(proxy_config(SUBMIT))
async def test_socketio_client(port: int, backend: TestBackend) -> None:
    """Over Socket.IO: the ack and the event carry the backend's reply; the cookie of the
    Engine.IO request is forwarded; transport is socket.io."""
    backend.route("/submit", reply({"total": 1}))
    peer = await SioPeer.connect(f"http://127.0.0.1:{port}", headers={"Cookie": "s=1"})
    try:
        ack, (event, payload) = await peer.request("order.submit", {"id": 3})
        assert event == "order.submit.result" and ack == payload
        expect_type(payload, "order.submit.result", id=3, total=1)
        (seen,) = backend.calls("/submit")
        assert seen.body["transport"] == "socket.io"
        assert seen.body["headers"] == {"cookie": "s=1"}
    finally:
        await peer.close()


def test_config_errors() -> None:
    """A bad proxy entry stops start-up naming the key."""
    from miaws.config import ConfigError, build_settings

    cases = [
        (proxy_config({"type": "a", "url": "ftp://x"}), "proxy.types[0].url"),
        (proxy_config({"type": "a", "url": "http://x", "timeout": 0}), "proxy.types[0].timeout"),
        (
            proxy_config({"type": "a", "url": "http://x"}, {"type": "a", "url": "http://y"}),
            "proxy.types[1].type",
        ),
        (proxy_config({"type": "a", "url": "http://x", "timeout": 40}), "heartbeat.timeout"),
        ({"proxy": {"types": [{"type": "a", "url": "http://x"}]}}, "plugins.enabled"),
        (proxy_config({"type": "a", "url": "http://x", "nope": 1}), "proxy.types"),
        (proxy_config(max_concurrent=0), "proxy.max_concurrent"),
        ({"auth": {"mode": "proxy"}}, "auth.proxy_url"),
        ({"rooms": {"join_proxy_url": "x"}}, "rooms.join_proxy_url"),
        ({"api": {"idempotency_window": 0}}, "api.idempotency_window"),
    ]
    for data, key in cases:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            build_settings(data, source="test", environ={})


_ = AsyncHTTPClient  # the http_server_client fixture's class


@pytest.mark.config(proxy_config(SUBMIT))
async def test_reload_keeps_the_running_proxy_types(
    http_server_client: Any,
    ws_connect: Connect,
    service: Service,
    tmp_path: Path,
    backend: TestBackend,
) -> None:
    """proxy.* needs a restart: a reload that also changes plugins reports proxy.types as
    such and the registry keeps the running types (not the file's new one)."""
    import yaml

    backend.route("/submit", reply({}))
    path = tmp_path / "config.yaml"
    new_types = [
        SUBMIT | {"url": f"{backend.url}/submit"},
        {"type": "new.one", "url": f"{backend.url}/x"},
    ]
    path.write_text(
        yaml.safe_dump(
            {"plugins": {"enabled": ["ping", "rooms", "proxy"]}, "proxy": {"types": new_types}}
        )
    )
    service.config_path = path
    response = await http_server_client.fetch("/api/reload", method="POST", body="")
    body = json.loads(response.body)
    assert body["applied"] == ["plugins.enabled"]
    assert body["restartRequired"] == ["proxy.types"]
    peer = await ws_connect()
    expect_error(await peer.request({"type": "new.one"}), "unknown-type")
    expect_error(await peer.request({"type": "echo", "message": 1}), "unknown-type")
    expect_type(await peer.request({"type": "order.submit"}), "order.submit.result")
