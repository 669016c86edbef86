"""POST /api/publish and the bearer keys of /api/*, over real HTTP and WebSocket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Connect
from redis_server import RedisServer
from sio_helpers import SioPeer
from test_scaling import Start
from tornado.httpclient import AsyncHTTPClient

from miaws.cli.check import Peer, expect_type


async def call(
    client: Any, path: str, body: Any = None, key: str | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """(status, JSON body) of a request; POST when a body is given."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    kw: dict[str, Any] = {"headers": headers, "raise_error": False}
    if raw is not None or body is not None:
        kw.update(method="POST", body=raw if raw is not None else json.dumps(body))
    response = await client.fetch(path, **kw)
    assert response.headers["Content-Type"].startswith("application/json")
    return response.code, json.loads(response.body)


async def test_publish_to_everyone(http_server_client: Any, ws_connect: Connect) -> None:
    """Without a room every client gets a broadcast from "server"; the answer counts them."""
    a, b = await ws_connect(), await ws_connect()
    status, body = await call(http_server_client, "/api/publish", {"message": {"n": 1}})
    assert (status, body) == (200, {"recipients": 2})
    for peer in (a, b):
        msg = await peer.recv()
        expect_type(msg, "broadcast", message={"n": 1}, **{"from": "server"})
        assert "room" not in msg


async def test_publish_to_a_room(http_server_client: Any, ws_connect: Connect) -> None:
    """With a room only its members get it, with the room named; an empty room counts 0."""
    member, outsider = await ws_connect(), await ws_connect()
    await member.request({"type": "join-room", "room": "news"})
    status, body = await call(http_server_client, "/api/publish", {"room": "news", "message": "x"})
    assert (status, body) == (200, {"recipients": 1})
    msg = await member.recv()
    expect_type(msg, "broadcast", message="x", room="news", **{"from": "server"})
    assert set(msg) == {"type", "message", "from", "room", "timestamp"}
    await outsider.expect_silence()
    status, body = await call(http_server_client, "/api/publish", {"room": "empty", "message": 1})
    assert (status, body) == (200, {"recipients": 0})


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not valid JSON"),
        # what json.loads takes but a /ws frame could not carry (clients got null)
        (b'{"message": NaN}', "not valid JSON"),
        (b'{"message": Infinity}', "not valid JSON"),
        (b'{"message": 1e999}', "not valid JSON"),
        (b'{"message": ' + b"[" * 200 + b"]" * 200 + b"}", "not valid JSON"),
        (b'[{"message": 1}, {"message": -Infinity}]', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"room": "r"}', "message is required"),
        (b'{"room": "bad room", "message": 1}', "invalid room name"),
        (b'{"room": 5, "message": 1}', "invalid room name"),
        (b'{"message": 1, "rooms": ["a"]}', "unknown field(s): rooms"),
        (b'{"message": 1, "namespace": "/nope"}', "unknown namespace '/nope'"),
        (b'[{"message": 1}, {"message": 1, "namespace": 5}]', "[1]: unknown namespace 5"),
        (b'{"room": "/chat#r", "message": 1}', "namespace '/chat': send \"namespace\""),
    ],
)
async def test_publish_bad_input_is_400(
    http_server_client: Any, ws_connect: Connect, raw: bytes, needle: str
) -> None:
    """Bad JSON, a bad room or a missing message: 400 with a JSON error; nobody gets anything."""
    peer = await ws_connect()
    status, body = await call(http_server_client, "/api/publish", raw=raw)
    assert status == 400 and needle in body["error"]
    await peer.expect_silence()


@pytest.mark.config({"api": {"keys": ["k-one", "k-two"]}})
@pytest.mark.parametrize(
    "path", ["/api/clients", "/api/rooms", "/api/plugins", "/api/publish", "/api/reload"]
)
async def test_api_keys_guard_every_api_endpoint(http_server_client: Any, path: str) -> None:
    """With keys set: no key 401 (with WWW-Authenticate), a wrong key 403, a right key passes."""
    body = {"message": 1} if path == "/api/publish" else ({} if path == "/api/reload" else None)
    response = await http_server_client.fetch(
        path,
        raise_error=False,
        **({"method": "POST", "body": json.dumps(body)} if body is not None else {}),
    )
    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.body) == {"error": "API key required"}
    status, err = await call(http_server_client, path, body, key="wrong")
    assert (status, err) == (403, {"error": "API key not accepted"})
    status, _ = await call(http_server_client, path, body, key="k-two")
    assert status == 200


@pytest.mark.config({"api": {"keys": ["secret"]}})
async def test_health_and_metrics_stay_open(http_server_client: Any) -> None:
    """/health and /metrics need no key."""
    assert (await http_server_client.fetch("/health")).code == 200
    assert (await http_server_client.fetch("/metrics")).code == 200


async def test_env_key_protects_the_api(
    http_server_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MIAWS_API_KEY alone switches the key check on."""
    assert (await call(http_server_client, "/api/rooms"))[0] == 200
    monkeypatch.setenv("MIAWS_API_KEY", "from-env")
    assert (await call(http_server_client, "/api/rooms"))[0] == 401
    assert (await call(http_server_client, "/api/rooms", key="nope"))[0] == 403
    assert await call(http_server_client, "/api/rooms", key="from-env") == (200, {})


def test_empty_api_key_is_a_config_error() -> None:
    """An empty key in api.keys would be a hole; the config refuses it."""
    from miaws.config import ConfigError, build_settings

    with pytest.raises(ConfigError, match="api.keys has an empty key"):
        build_settings({"api": {"keys": ["ok", " "]}}, environ={})


CHAT = {"socketio": {"namespaces": ["/", "/chat"]}}


@pytest.mark.config(CHAT)
async def test_publish_to_a_namespace_and_its_rooms(
    http_server_client: Any, ws_connect: Connect, port: int
) -> None:
    """``namespace`` picks the Socket.IO namespace: with a room, that namespace's room (not
    the native room of the same name); without one, that namespace's clients.  Default
    ``/`` with a room; neither: everyone.  In a batch under an Idempotency-Key too (#19)."""
    native = await ws_connect()
    await native.request({"type": "join-room", "room": "news"})
    chat = await SioPeer.connect(f"http://127.0.0.1:{port}", "/chat")
    try:
        assert (await chat.call("join-room", {"room": "news"}))["type"] == "room-joined"
        await chat.recv()  # the room-joined event

        async def publish(body: Any, recipients: Any, **headers: str) -> None:
            response = await http_server_client.fetch(
                "/api/publish", method="POST", body=json.dumps(body), headers=headers
            )
            assert json.loads(response.body) == recipients

        async def chat_got(message: Any, **room: str) -> None:
            event, payload = await chat.recv()
            assert event == "broadcast"
            expect_type(payload, "broadcast", message=message, **{"from": "server"}, **room)

        await publish({"room": "news", "namespace": "/chat", "message": 1}, {"recipients": 1})
        await chat_got(1, room="news")
        await publish({"namespace": "/chat", "message": 2}, {"recipients": 1})
        await chat_got(2)
        await native.expect_silence(0.2)
        await publish({"room": "news", "message": 3}, {"recipients": 1})
        expect_type(await native.recv(), "broadcast", message=3, room="news")
        await publish({"namespace": "/", "message": 4}, {"recipients": 1})
        expect_type(await native.recv(), "broadcast", message=4)
        await chat.expect_silence(0.2)
        await publish({"message": 5}, {"recipients": 2})
        await chat_got(5)
        expect_type(await native.recv(), "broadcast", message=5)
        batch = [
            {"room": "news", "namespace": "/chat", "message": 6},
            {"room": "news", "namespace": "/", "message": 7},
        ]
        for _ in range(2):
            await publish(batch, {"results": [{"recipients": 1}] * 2}, **{"Idempotency-Key": "b"})
        await chat_got(6, room="news")
        expect_type(await native.recv(), "broadcast", message=7, room="news")
        await chat.expect_silence(0.2)
        await native.expect_silence(0.2)
    finally:
        await chat.close()


async def test_publish_to_a_namespace_room_on_another_node(
    server_process: Start, redis_server: RedisServer
) -> None:
    """Two nodes on one redis-server: a publish to node a for room news of /chat reaches the
    /chat member on node b, not b's native member of news (#19)."""
    config = (
        "server:\n  host: 127.0.0.1\n"
        f"broker:\n  type: redis\n  url: {redis_server.url}\n"
        'socketio:\n  namespaces: ["/", "/chat"]\n'
    )
    a, b = (server_process(config, env={"REDIS_URL": ""}) for _ in range(2))
    native = await Peer.connect(b.url)
    chat = await SioPeer.connect(b.http, "/chat")
    try:
        expect_type(await native.request({"type": "join-room", "room": "news"}), "room-joined")
        assert (await chat.call("join-room", {"room": "news"}))["type"] == "room-joined"
        await chat.recv()  # the room-joined event
        response = await AsyncHTTPClient().fetch(
            f"{a.http}/api/publish",
            method="POST",
            body=json.dumps({"room": "news", "namespace": "/chat", "message": "far"}),
        )
        assert json.loads(response.body) == {"recipients": 0}  # none on node a
        event, payload = await chat.recv()
        assert event == "broadcast" and payload["message"] == "far"
        assert payload["room"] == "news"
        await native.expect_silence(0.3)
    finally:
        await chat.close()
        native.close()
