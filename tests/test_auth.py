"""Authentication and origins over real sockets: JWT (HS256, RS256), static tokens, the late
``auth`` message, rooms from the token, the origin allow-list."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import Connect, RawConnect
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from miaws.cli.check import expect_error, expect_type
from miaws.config import ConfigError, build_settings
from miaws.service import Service
from miaws.transport.auth import Authenticator, AuthError, Identity, room_allowed
from miaws.transport.origins import origin_allowed

SECRET = "test-secret-that-is-long-enough-for-hs256"
JWT = {"auth": {"mode": "jwt", "jwt_secret": SECRET}}


def hs256(sub: Any = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, SECRET, "HS256")


async def refused_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of an upgrade that is refused."""
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(HTTPRequest(url, headers=headers or {}))
    return info.value.code


@pytest.mark.config(JWT)
async def test_jwt_in_query_sets_user(ws_connect: Connect, ws_url: str, service: Service) -> None:
    """A valid token in ?token= connects; its subject is the client's user in the registry."""
    peer = await ws_connect(f"{ws_url}?token={hs256('alice')}")
    expect_type(peer.welcome, "welcome")
    assert [c["user"] for c in service.clients_info()] == ["alice"]


@pytest.mark.config(JWT)
async def test_jwt_in_authorization_header(ws_connect: Connect, ws_url: str) -> None:
    """A valid token in Authorization: Bearer connects."""
    request = HTTPRequest(ws_url, headers={"Authorization": f"Bearer {hs256()}"})
    peer = await ws_connect(request)
    expect_type(await peer.request({"type": "ping"}), "pong")


@pytest.mark.config(JWT)
async def test_bad_tokens_refused_401_before_upgrade(ws_url: str, service: Service) -> None:
    """No token, a bad signature, an expired token, alg none, no sub: HTTP 401, nobody listed."""
    expired = jwt.encode({"sub": "a", "exp": int(time.time()) - 5}, SECRET, "HS256")
    forged = jwt.encode({"sub": "a"}, "another-secret-that-is-long-enough-for-hs", "HS256")
    unsigned = jwt.encode({"sub": "a"}, None, "none")
    no_sub = jwt.encode({"user": "a"}, SECRET, "HS256")
    assert await refused_status(ws_url) == 401
    for token in (expired, forged, unsigned, no_sub, "garbage"):
        assert await refused_status(f"{ws_url}?token={token}") == 401, token
    assert await refused_status(ws_url, {"Authorization": f"Bearer {forged}"}) == 401
    assert service.connected_count() == 0


@pytest.mark.config(JWT)
async def test_rooms_claim_limits_joins(ws_connect: Connect, ws_url: str) -> None:
    """A token listing rooms (exact or prefix*) may join those, and gets forbidden elsewhere."""
    peer = await ws_connect(f"{ws_url}?token={hs256(rooms=['lobby', 'team:*'])}")
    for room in ("lobby", "team:blue"):
        expect_type(await peer.request({"type": "join-room", "room": room}), "room-joined")
    reply = await peer.request({"type": "join-room", "room": "admin", "id": 4})
    expect_error(reply, "forbidden", id=4)
    assert reply["details"] == {"room": "admin"}
    # A room it may not join is a room it cannot broadcast to either.
    reply = await peer.request({"type": "broadcast", "message": 1, "room": "admin"})
    expect_error(reply, "not-in-room")


@pytest.fixture
def rsa_keys(tmp_path: Path) -> tuple[Any, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    return key, path


ADMIN_ONLY = """
from miaws import Forbidden, hookimpl

@hookimpl
def authorize_message(client, message):
    if message["type"] == "broadcast" and "room" not in message and client.user != "admin":
        raise Forbidden("only admin may broadcast to everyone")
"""


@pytest.fixture
def config_data(
    request: pytest.FixtureRequest, rsa_keys: tuple[Any, Path], tmp_path: Path
) -> dict[str, Any]:
    marker = request.node.get_closest_marker("config")
    if marker:
        return dict(marker.args[0])
    if "admin_hook" in request.node.name:
        (tmp_path / "admin_only.py").write_text(ADMIN_ONLY)
        plugins = {"paths": [str(tmp_path)], "enabled": ["ping", "broadcast", "admin_only"]}
        return {**JWT, "plugins": plugins}
    if "rs256" in request.node.name:
        return {"auth": {"mode": "jwt", "jwt_public_key": str(rsa_keys[1]), "jwt_audience": "app"}}
    return {}


async def test_rs256_public_key_file(
    ws_connect: Connect, ws_url: str, rsa_keys: tuple[Any, Path], service: Service
) -> None:
    """RS256 with the public key from a file; audience checked; an HS256 token is refused."""
    key = rsa_keys[0]
    good = jwt.encode({"sub": "bob", "aud": "app"}, key, "RS256")
    wrong_aud = jwt.encode({"sub": "bob", "aud": "other"}, key, "RS256")
    await ws_connect(f"{ws_url}?token={good}")
    assert [c["user"] for c in service.clients_info()] == ["bob"]
    assert await refused_status(f"{ws_url}?token={wrong_aud}") == 401
    # Algorithm confusion: the public key's text used as an HS256 secret must not pass.
    confused = jwt.encode({"sub": "x", "aud": "app"}, SECRET, "HS256")
    assert await refused_status(f"{ws_url}?token={confused}") == 401


TOKENS = {
    "auth": {
        "mode": "token",
        "tokens": {"t-alice": "alice", "t-bot": {"user": "bot", "rooms": ["feed"]}},
    }
}


@pytest.mark.config(TOKENS)
async def test_static_tokens(ws_connect: Connect, ws_url: str, service: Service) -> None:
    """Static tokens: user names in the registry, rooms from the entry, unknown token 401."""
    await ws_connect(f"{ws_url}?token=t-alice")
    bot = await ws_connect(f"{ws_url}?token=t-bot")
    assert sorted(c["user"] for c in service.clients_info()) == ["alice", "bot"]
    expect_type(await bot.request({"type": "join-room", "room": "feed"}), "room-joined")
    expect_error(await bot.request({"type": "join-room", "room": "chat"}), "forbidden")
    assert await refused_status(f"{ws_url}?token=t-nobody") == 401


@pytest.mark.config({**TOKENS, "logging": {"level": "debug"}})
async def test_token_not_in_access_log(
    ws_connect: Connect, ws_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The access log line of an upgrade does not carry the token."""
    caplog.set_level(logging.INFO, "tornado.access")
    await ws_connect(f"{ws_url}?a=1&token=t-alice")
    with pytest.raises(HTTPClientError):
        await websocket_connect(f"{ws_url}?token=t-secret-guess")
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert len(lines) == 2 and all("token=***" in line for line in lines)
    assert not any("t-alice" in line or "t-secret-guess" in line for line in lines)


LATE = {"auth": {"mode": "token", "tokens": {"t-late": "late"}, "late_timeout": 0.5}}


@pytest.mark.config(LATE)
async def test_late_auth_message(raw_connect: RawConnect, service: Service) -> None:
    """Without a token, the first message {"type":"auth"} authenticates; the welcome follows."""
    raw = await raw_connect()
    assert raw.status == 101
    assert service.connected_count() == 0  # not in the registry, gets no broadcast
    raw.send_json({"type": "auth", "token": "t-late"})
    expect_type(await raw.read_json(), "welcome")
    raw.send_json({"type": "ping", "id": 1})
    expect_type(await raw.read_json(), "pong", id=1)
    assert [c["user"] for c in service.clients_info()] == ["late"]


@pytest.mark.config(LATE)
async def test_late_auth_failures_close_1008(raw_connect: RawConnect, service: Service) -> None:
    """A bad token, another first message, or silence past late_timeout: close 1008."""
    bad = await raw_connect()
    bad.send_json({"type": "auth", "token": "wrong"})
    other = await raw_connect()
    other.send_json({"type": "ping"})
    silent = await raw_connect()
    started = time.monotonic()
    assert await bad.close_code() == 1008
    assert await other.close_code() == 1008
    assert await silent.close_code() == 1008
    assert 0.4 < time.monotonic() - started < 3
    assert service.connected_count() == 0
    # A token in the URL is still checked before the upgrade.
    assert (await raw_connect("/ws?token=wrong")).status == 401


ORIGINS = {"security": {"allowed_origins": ["https://app.example.com", "https://*.example.org"]}}


@pytest.mark.config(ORIGINS)
async def test_origin_allow_list(ws_connect: Connect, ws_url: str, port: int) -> None:
    """Listed origins, same-origin pages and clients without Origin connect; others get 403."""
    for origin in (
        "https://app.example.com",
        "https://a.b.example.org",
        f"http://127.0.0.1:{port}",
    ):
        await ws_connect(HTTPRequest(ws_url, headers={"Origin": origin}))
    await ws_connect(ws_url)
    for origin in ("https://evil.example.net", "http://app.example.com", "https://example.org"):
        assert await refused_status(ws_url, {"Origin": origin}) == 403, origin


def test_origin_allowed_function() -> None:
    """origin_allowed: empty list allows all; exact, subdomain pattern and * entries."""
    assert origin_allowed("https://x.com", [])
    assert origin_allowed(None, ["https://a.com"])
    assert origin_allowed("HTTPS://A.com/", ["https://a.com"])
    assert not origin_allowed("https://a.com:8443", ["https://a.com"])
    assert origin_allowed("https://deep.sub.a.com", ["https://*.a.com"])
    assert not origin_allowed("https://evil-a.com", ["https://*.a.com"])
    assert origin_allowed("null", ["*"])


def test_identify_is_transport_neutral() -> None:
    """identify() reads query (str, bytes or lists), then the header, then extra."""
    auth = Authenticator(build_settings(JWT, environ={}))
    token = hs256("carol", rooms=["r"])
    expected = Identity("carol", frozenset({"r"}))
    assert auth.identify({}, {"token": [token.encode()]}) == expected
    assert auth.identify({"authorization": f"bearer {token}"}, {}) == expected
    assert auth.identify({}, {}, extra=token) == expected
    with pytest.raises(AuthError, match="no token"):
        auth.identify({}, {})
    with pytest.raises(AuthError, match="rooms"):
        auth.check(hs256(rooms="not-a-list"))
    assert room_allowed("a", None) and not room_allowed("b", frozenset({"a"}))


@pytest.mark.parametrize(
    ("auth", "fragment"),
    [
        ({"mode": "jwt"}, "neither auth.jwt_secret nor auth.jwt_public_key"),
        ({"mode": "token"}, "auth.tokens is empty"),
        ({"mode": "token", "tokens": {"t": {"name": "x"}}}, "auth.tokens has an entry"),
        ({"mode": "jwt", "jwt_public_key": "/nonexistent.pem"}, "auth.jwt_public_key"),
        ({"mode": "jwt", "jwt_public_key": "-----BEGIN x"}, "not an RSA public key"),
        ({"mode": "oauth"}, "auth.mode has value 'oauth'"),
    ],
)
def test_bad_auth_config(auth: dict[str, Any], fragment: str) -> None:
    """An auth setting that cannot work stops start-up with a line naming the key."""
    with pytest.raises(ConfigError, match=fragment):
        Service.from_settings(build_settings({"auth": auth}, source="c.yaml", environ={}))


def test_jwt_secret_from_environment() -> None:
    """MIAWS_JWT_SECRET is kept as text, even when it looks like a number."""
    secret = "12345678901234567890123456789012"
    settings = build_settings({"auth": {"mode": "jwt"}}, environ={"MIAWS_JWT_SECRET": secret})
    assert settings.auth.jwt_secret == secret
    token = jwt.encode({"sub": "n"}, secret, "HS256")
    assert Authenticator(settings).check(token).user == "n"


async def test_admin_hook_sees_the_token_user(ws_connect: Connect, ws_url: str) -> None:
    """A plugin's authorize_message sees client.user from the token and can deny by it."""
    admin = await ws_connect(f"{ws_url}?token={hs256('admin')}")
    user = await ws_connect(f"{ws_url}?token={hs256('mallory')}")
    reply = await user.request({"type": "broadcast", "message": "hi", "id": 1})
    expect_error(reply, "forbidden", id=1, message="only admin may broadcast to everyone")
    await admin.send({"type": "broadcast", "message": "hi"})
    for peer in (admin, user):
        expect_type(await peer.recv(), "broadcast", message="hi")
