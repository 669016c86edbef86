"""``miaws health`` and ``miaws check``: the wire contract, tried against a running server.

:class:`Peer` is a small JSON WebSocket client with timeouts; the test suite uses it too.
Each scenario is an async function that raises :class:`CheckFailed` with what it saw.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection, websocket_connect

from miaws.core.errors import MiawsError, refusal_is_final, refused_upgrade_text

__all__ = ["Peer", "CheckFailed", "Refused", "SCENARIOS", "run_health", "run_check"]

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
CLIENT_ID = re.compile(r"\d{13,}-[a-z0-9]{6,}\Z")


class CheckFailed(MiawsError, AssertionError):
    """A scenario saw something the contract does not allow."""


class Refused(MiawsError):
    """``miaws check`` stopped: the server refused an upgrade with a status that retrying
    will not change (401, 403, 404, ...); results holds the scenarios run before."""

    def __init__(self, text: str, results: list[tuple[str, bool, str]]) -> None:
        super().__init__(text)
        self.results = results


def refusal(url: str, exc: HTTPClientError) -> str | None:
    """The one line for a refused upgrade; None for tornado's 599 (no HTTP answer)."""
    if exc.code == 599:
        return None
    body = exc.response.body if exc.response is not None else None
    return refused_upgrade_text(url, exc.code, exc.message or "", body)


class Peer:
    """One WebSocket connection speaking JSON, with bounded waits."""

    def __init__(self, conn: WebSocketClientConnection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, timeout: float = 5.0, **kw: Any) -> Peer:
        conn = await asyncio.wait_for(websocket_connect(url, **kw), timeout)
        peer = cls(conn, timeout)
        peer.welcome = await peer.recv()
        return peer

    async def send(self, message: Any) -> None:
        text = message if isinstance(message, (str, bytes)) else json.dumps(message)
        await self.conn.write_message(text, binary=isinstance(text, bytes))

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; CheckFailed on timeout or close."""
        try:
            text = await asyncio.wait_for(self.conn.read_message(), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise CheckFailed("no message within the timeout") from None
        if text is None:
            raise CheckFailed(f"connection closed (code {self.conn.close_code})")
        result: dict[str, Any] = json.loads(text)
        return result

    async def request(self, message: Any) -> dict[str, Any]:
        await self.send(message)
        return await self.recv()

    async def expect_silence(self, seconds: float = 0.2) -> None:
        """Nothing arrives within seconds (a ping round trip proves the link is live)."""
        try:
            text = await asyncio.wait_for(self.conn.read_message(), seconds)
        except asyncio.TimeoutError:
            return
        raise CheckFailed(f"unexpected message {text!r}")

    async def closed_with(self, timeout: float | None = None) -> int | None:
        """Wait for the server to close; the close code it sent."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(self.conn.read_message(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
            if msg is None:
                return self.conn.close_code
        raise CheckFailed("the server did not close the connection")

    def close(self) -> None:
        """Close with 1000 (normal closure); without a code the server would log 1005."""
        self.conn.close(1000)


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def expect_type(msg: dict[str, Any], kind: str, **fields: Any) -> None:
    expect(msg.get("type") == kind, f"expected {kind}, got {msg}")
    expect(TIMESTAMP.match(str(msg.get("timestamp", ""))) is not None, f"bad timestamp in {msg}")
    for key, value in fields.items():
        expect(msg.get(key) == value, f"expected {key}={value!r} in {msg}")


def expect_error(msg: dict[str, Any], code: str, **fields: Any) -> None:
    expect_type(msg, "error", code=code, **fields)
    expect(
        isinstance(msg.get("message"), str) and msg["message"] != "",
        f"error without a message: {msg}",
    )


Scenario = Callable[[Callable[[], Awaitable[Peer]], int], Awaitable[None]]
SCENARIOS: list[tuple[str, Scenario]] = []


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS.append((name, fn))
        return fn

    return register


@scenario("welcome on connect")
async def _welcome(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    expect_type(p.welcome, "welcome", message="Connected to WebSocket server")
    expect(
        CLIENT_ID.match(str(p.welcome.get("clientId"))) is not None,
        f"bad clientId {p.welcome.get('clientId')!r}",
    )


@scenario("ping -> pong, id copied")
async def _ping(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    expect_type(await p.request({"type": "ping"}), "pong")
    expect_type(await p.request({"type": "ping", "id": "a-1"}), "pong", id="a-1")
    expect_type(await p.request({"type": "ping", "id": 7}), "pong", id=7)


@scenario("echo -> original")
async def _echo(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    value = {"nested": [1, "two", None, True], "ü": "✓"}
    expect_type(
        await p.request({"type": "echo", "message": value, "id": 3}), "echo", original=value, id=3
    )
    expect_error(await p.request({"type": "echo"}), "invalid-message")


@scenario("broadcast reaches everyone, sender included")
async def _broadcast(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    a, b = await connect(), await connect()
    await a.send({"type": "broadcast", "message": {"n": 1}})
    for peer in (a, b):
        msg = await peer.recv()
        while msg.get("type") == "broadcast" and msg.get("from") != a.welcome["clientId"]:
            msg = await peer.recv()  # another client's broadcast on a shared server
        expect_type(msg, "broadcast", message={"n": 1}, **{"from": a.welcome["clientId"]})


@scenario("join-room, twice is fine")
async def _join(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    for _ in range(2):
        expect_type(
            await p.request({"type": "join-room", "room": "check.room-1", "id": 1}),
            "room-joined",
            room="check.room-1",
            id=1,
        )


@scenario("room broadcast reaches members only")
async def _room_broadcast(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    room = f"check:{int(time.time() * 1000)}"
    a, b, c = await connect(), await connect(), await connect()
    for peer in (a, b):
        expect_type(await peer.request({"type": "join-room", "room": room}), "room-joined")
    await a.send({"type": "broadcast", "message": "hi", "room": room})
    for peer in (a, b):
        expect_type(
            await peer.recv(),
            "broadcast",
            message="hi",
            room=room,
            **{"from": a.welcome["clientId"]},
        )
    await c.expect_silence()


@scenario("room broadcast from a non-member: not-in-room, nobody gets it")
async def _room_not_member(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    room = f"check-nm:{int(time.time() * 1000)}"
    a, b = await connect(), await connect()
    expect_type(await b.request({"type": "join-room", "room": room}), "room-joined")
    expect_error(
        await a.request({"type": "broadcast", "message": "x", "room": room, "id": 9}),
        "not-in-room",
        id=9,
    )
    await b.expect_silence()


@scenario("leave-room; leaving again: not-in-room")
async def _leave(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    await p.request({"type": "join-room", "room": "check-leave"})
    expect_type(
        await p.request({"type": "leave-room", "room": "check-leave", "id": "l"}),
        "room-left",
        room="check-leave",
        id="l",
    )
    expect_error(
        await p.request({"type": "leave-room", "room": "check-leave", "id": "l2"}),
        "not-in-room",
        id="l2",
    )


@scenario("invalid-json (and empty frame); connection stays open")
async def _invalid_json(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    expect_error(await p.request("{not json"), "invalid-json")
    expect_error(await p.request(""), "invalid-json")
    expect_type(await p.request({"type": "ping"}), "pong")


@scenario("invalid-message: not an object, no string type")
async def _invalid_message(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    for bad in ("[1,2]", '"ping"', "42", "null", '{"message":1}', '{"type":5}'):
        expect_error(await p.request(bad), "invalid-message")
    expect_type(await p.request({"type": "ping"}), "pong")


@scenario("unknown-type, case-sensitive, server-only types")
async def _unknown(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    for kind in ("no-such-type", "PING", "welcome", "pong", "error"):
        expect_error(await p.request({"type": kind, "id": "u"}), "unknown-type", id="u")


@scenario("bad room name: invalid-message naming room")
async def _bad_room(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    for msg in (
        {"type": "join-room", "room": "has space"},
        {"type": "join-room", "room": ""},
        {"type": "leave-room", "room": "x" * 65},
        {"type": "broadcast", "message": 1, "room": "bad/room"},
        {"type": "join-room"},
    ):
        reply = await p.request(msg)
        expect_error(reply, "invalid-message")
        expect("room" in json.dumps(reply.get("details")), f"details must name room: {reply}")


@scenario("bad id: invalid-message, id not copied")
async def _bad_id(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    for bad in (1.5, "x" * 65, {"a": 1}, True):
        reply = await p.request({"type": "ping", "id": bad})
        expect_error(reply, "invalid-message")
        expect("id" not in reply, f"a bad id was copied: {reply}")


@scenario("replies in request order")
async def _order(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    for i in range(50):
        await p.send(
            {"type": "ping", "id": i} if i % 2 else {"type": "echo", "message": i, "id": i}
        )
    ids = [(await p.recv()).get("id") for _ in range(50)]
    expect(ids == list(range(50)), f"out of order: {ids}")


@scenario("message of exactly the limit accepted; one byte more: close 1009")
async def _size(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    prefix = '{"type":"echo","message":"'
    frame = prefix + "a" * (limit - len(prefix) - 2) + '"}'
    expect(len(frame.encode()) == limit, "internal: frame size")
    expect_type(await p.request(frame), "echo")
    await p.send(frame[:-2] + 'a"}')
    code = await p.closed_with()
    expect(code == 1009, f"expected close 1009, got {code}")


@scenario("binary frame: close 1003")
async def _binary(connect: Callable[[], Awaitable[Peer]], limit: int) -> None:
    p = await connect()
    await p.send(b'{"type":"ping"}')
    code = await p.closed_with()
    expect(code == 1003, f"expected close 1003, got {code}")


HEALTHY, FAILED, DEGRADED = 0, 1, 3
"""``miaws health`` exit codes."""


async def run_health(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Connect, expect the welcome, ping, expect the pong; then read ``GET /health`` for
    ``degraded`` (the node serves its own clients but its broker is down).  Returns the exit
    code and one line."""
    started = time.monotonic()
    try:
        peer = await Peer.connect(url, timeout)
        expect_type(peer.welcome, "welcome")
        expect_type(await peer.request({"type": "ping"}), "pong")
        peer.close()
    except HTTPClientError as exc:
        return FAILED, f"FAIL {refusal(url, exc) or f'{url}: {exc}'}"
    except (CheckFailed, OSError, asyncio.TimeoutError, ValueError) as exc:
        return FAILED, f"FAIL {url}: {exc or type(exc).__name__}"
    ms = (time.monotonic() - started) * 1000
    line = f"{url}: welcome clientId={peer.welcome.get('clientId')}, pong in {ms:.0f} ms"
    status = await asyncio.get_running_loop().run_in_executor(None, _health_status, url, timeout)
    if status == "degraded":
        return DEGRADED, f"DEGRADED {line}; /health says degraded (broker unreachable)"
    return HEALTHY, f"OK {line}"


def _health_status(url: str, timeout: float) -> str | None:
    """The ``status`` of the server's ``GET /health``, or None when it cannot be read."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    try:
        with urllib.request.urlopen(f"{scheme}://{parts.netloc}/health", timeout=timeout) as r:
            status = json.loads(r.read()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


async def run_check(
    url: str, limit: int = 65536, timeout: float = 5.0
) -> list[tuple[str, bool, str]]:
    """Every scenario against url: (name, passed, detail).  Refused when an upgrade is
    refused for good (the other scenarios would only repeat it); a 429 or 5xx refusal fails
    that scenario only."""
    results = []
    for name, fn in SCENARIOS:
        peers: list[Peer] = []

        async def connect(peers: list[Peer] = peers) -> Peer:
            peer = await Peer.connect(url, timeout)
            peers.append(peer)
            return peer

        try:
            await asyncio.wait_for(fn(connect, limit), timeout * 4)
            results.append((name, True, ""))
        except HTTPClientError as exc:
            text = refusal(url, exc)
            if text is not None and refusal_is_final(exc.code):
                raise Refused(text, results) from None
            results.append((name, False, text or str(exc)))
        except (CheckFailed, OSError, asyncio.TimeoutError, ValueError, KeyError) as exc:
            results.append((name, False, str(exc) or type(exc).__name__))
        finally:
            for peer in peers:
                peer.close()
    return results
