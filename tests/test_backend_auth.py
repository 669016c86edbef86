"""Backend-decided connect (``auth.mode: proxy``) on both transports and backend-decided joins
(``rooms.join_proxy_url``), against a real HTTP backend on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from conftest import Connect
from http_backend import Seen, TestBackend, reply
from sio_helpers import SioPeer
from test_auth import refused_status
from test_socketio_security import refused
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from miaws.cli.check import expect_error, expect_type
from miaws.service import Service

AUTH = {"auth": {"mode": "proxy", "proxy_url": "BACKEND/connect"}}
SESSIONS = {
    "session=good": {"user": "alice", "rooms": ["lobby", "team:*"], "info": {"plan": "pro"}},
    "session=anyroom": {"user": "bob"},
}


async def connect_script(seen: Seen) -> web.StreamResponse:
    """The connect backend: a known session cookie is accepted, banned is 403, others 401."""
    cookie = seen.body["headers"].get("cookie", "")
    if cookie in SESSIONS:
        return web.json_response(SESSIONS[cookie])
    if cookie == "session=banned":
        return web.json_response({"reason": "account suspended"}, status=403)
    return web.json_response({"reason": "unknown session"}, status=401)


def with_cookie(url: str, cookie: str, **headers: str) -> HTTPRequest:
    return HTTPRequest(url, headers={"Cookie": cookie, **headers})


@pytest.mark.config(AUTH)
async def test_native_connect_accepted_with_the_backends_identity(
    ws_connect: Connect, ws_url: str, backend: TestBackend, service: Service
) -> None:
    """The chosen upgrade headers (cookie, authorization; not others) and the query go to the
    backend; its user, rooms and info become the client's: rooms limit joins."""
    backend.route("/connect", connect_script)
    peer = await ws_connect(
        with_cookie(f"{ws_url}?room=x", "session=good", Authorization="Basic x", X_Other="1")
    )
    expect_type(peer.welcome, "welcome")
    (seen,) = backend.calls("/connect")
    assert seen.body == {
        "headers": {"cookie": "session=good", "authorization": "Basic x"},
        "query": {"room": "x"},
    }
    assert [c["user"] for c in service.clients_info()] == ["alice"]
    expect_type(await peer.request({"type": "join-room", "room": "team:a"}), "room-joined")
    expect_error(await peer.request({"type": "join-room", "room": "admin"}), "forbidden")


@pytest.mark.config(AUTH)
async def test_native_connect_refused_before_the_upgrade(
    ws_url: str, backend: TestBackend, service: Service
) -> None:
    """The backend's 401 and 403 are the upgrade's status (with its reason); a failing
    backend (500, an answer that is not {user, rooms, info}) is 503 with Retry-After."""
    backend.route("/connect", connect_script)
    assert await refused_status(ws_url, {"Cookie": "session=nope"}) == 401
    assert await refused_status(ws_url, {"Cookie": "session=banned"}) == 403
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(with_cookie(ws_url, "session=banned"))
    assert b"account suspended" in (info.value.response.body if info.value.response else b"")
    for broken in (reply(status=500), reply({"user": 5}), reply(raw=b"ok")):
        backend.route("/connect", broken)
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(with_cookie(ws_url, "session=good"))
        assert info.value.code == 503
        assert info.value.response is not None
        assert info.value.response.headers["Retry-After"] == "1"
    assert service.connected_count() == 0


@pytest.mark.config(AUTH)
async def test_socketio_connect_accepted_and_refused(
    port: int, backend: TestBackend, service: Service
) -> None:
    """Socket.IO's connect goes through the same backend: accepted with its identity (the
    auth payload's token is sent too), refused with connect_error giving the reason."""
    backend.route("/connect", connect_script)
    peer = await SioPeer.connect(
        f"http://127.0.0.1:{port}", headers={"Cookie": "session=good"}, auth={"token": "t1"}
    )
    try:
        assert [c["user"] for c in service.clients_info()] == ["alice"]
        seen = backend.calls("/connect")[-1]
        assert seen.body["headers"] == {"cookie": "session=good"}
        assert seen.body["token"] == "t1"
    finally:
        await peer.close()
    assert "unknown session" in await refused(port, headers={"Cookie": "session=nope"})
    assert "account suspended" in await refused(port, headers={"Cookie": "session=banned"})
    backend.route("/connect", reply(status=503))
    assert "backend unavailable" in await refused(port, headers={"Cookie": "session=good"})


# python-socketio's client waits for its pending long-poll before a disconnect completes; a
# short heartbeat keeps that wait short (as in test_socketio.py).
@pytest.mark.config({**AUTH, "heartbeat": {"interval": 1, "timeout": 1}})
async def test_socketio_polling_connect(port: int, backend: TestBackend, service: Service) -> None:
    """Over Engine.IO long-polling the cookie of the polling request reaches the backend too."""
    backend.route("/connect", connect_script)
    peer = await SioPeer.connect(
        f"http://127.0.0.1:{port}", transports=["polling"], headers={"Cookie": "session=good"}
    )
    try:
        assert [c["user"] for c in service.clients_info()] == ["alice"]
    finally:
        await peer.close()


@pytest.mark.config({"auth": {**AUTH["auth"], "proxy_cache_seconds": 30}})
async def test_answers_cached_when_asked(
    ws_connect: Connect, ws_url: str, backend: TestBackend
) -> None:
    """With auth.proxy_cache_seconds the same headers are asked once (acceptance and
    refusal alike); other headers are asked anew."""
    backend.route("/connect", connect_script)
    for _ in range(2):
        await ws_connect(with_cookie(ws_url, "session=good"))
        assert await refused_status(ws_url, {"Cookie": "session=nope"}) == 401
    assert len(backend.calls("/connect")) == 2
    await ws_connect(with_cookie(ws_url, "session=anyroom"))
    assert len(backend.calls("/connect")) == 3


@pytest.mark.config(AUTH)
async def test_no_cache_by_default(ws_connect: Connect, ws_url: str, backend: TestBackend) -> None:
    """Without auth.proxy_cache_seconds every connection asks the backend."""
    backend.route("/connect", connect_script)
    for _ in range(2):
        await ws_connect(with_cookie(ws_url, "session=good"))
    assert len(backend.calls("/connect")) == 2


JOIN = {
    **AUTH,
    "rooms": {"join_proxy_url": "BACKEND/join"},
    "plugins": {"enabled": ["ping", "echo", "broadcast", "rooms", "proxy"]},
    "proxy": {"types": [{"type": "whoami", "url": "BACKEND/whoami"}]},
}


async def join_script(seen: Seen) -> web.StreamResponse:
    """The join backend: rooms open:* are allowed; anything else is for members only."""
    if seen.body["room"].startswith("open:"):
        return web.Response(status=204)
    return web.json_response({"reason": "members only"}, status=403)


@pytest.mark.config(JOIN)
async def test_join_allowed_and_refused_by_the_backend(
    ws_connect: Connect, ws_url: str, backend: TestBackend, service: Service
) -> None:
    """Each join asks the backend with the client's identity (user and the connect
    backend's info): 2xx joins, 403 is forbidden with its reason; a joined room is not
    asked again; a failing join backend is backend-error and nobody joins."""
    backend.route("/connect", connect_script)
    backend.route("/join", join_script)
    peer = await ws_connect(with_cookie(ws_url, "session=anyroom"))
    expect_type(await peer.request({"type": "join-room", "room": "open:1"}), "room-joined")
    (seen,) = backend.calls("/join")
    assert seen.body == {
        "room": "open:1",
        "namespace": "/",
        "clientId": peer.welcome["clientId"],
        "user": "bob",
        "info": None,
        "transport": "ws",
        "rooms": [],
    }
    answer = await peer.request({"type": "join-room", "room": "vip", "id": 9})
    expect_error(answer, "forbidden", id=9, message="members only", details={"room": "vip"})
    expect_type(await peer.request({"type": "join-room", "room": "open:1"}), "room-joined")
    assert len(backend.calls("/join")) == 2  # open:1 again: a member already
    backend.route("/join", reply(status=500))
    expect_error(await peer.request({"type": "join-room", "room": "open:2"}), "backend-error")
    (client,) = service.clients_info()
    assert client["rooms"] == ["open:1"]


@pytest.mark.config(JOIN)
async def test_connect_info_reaches_proxied_types(
    ws_connect: Connect, ws_url: str, backend: TestBackend
) -> None:
    """The connect backend's user and info travel with every proxied message; a join the
    type's backend asks for also goes through the join backend (refused: forbidden)."""
    backend.route("/connect", connect_script)
    backend.route("/join", join_script)
    backend.route("/whoami", reply({"you": "?"}))
    peer = await ws_connect(with_cookie(ws_url, "session=good"))
    expect_type(await peer.request({"type": "whoami"}), "whoami.result", you="?")
    seen = backend.calls("/whoami")[-1]
    assert (seen.body["user"], seen.body["info"]) == ("alice", {"plan": "pro"})
    # alice's rooms from the connect backend (lobby, team:*) do not list open:7: refused
    # before the join backend is asked
    backend.route("/whoami", reply({"miaws": {"join": ["open:7"]}}))
    expect_error(await peer.request({"type": "whoami"}), "forbidden")
    bob = await ws_connect(with_cookie(ws_url, "session=anyroom"))
    expect_type(await bob.request({"type": "whoami"}), "whoami.result")
    assert [s.body["user"] for s in backend.calls("/join")] == ["bob"]
    backend.route("/whoami", reply({"miaws": {"join": ["secret"]}}))
    expect_error(await bob.request({"type": "whoami"}), "forbidden", message="members only")


_ = Any
