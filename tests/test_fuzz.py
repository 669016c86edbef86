"""Property-based fuzzing (hypothesis): whatever a client sends, every reply is a contract
message, every close a contract close code, and the server stays healthy.

Two levels: the sans-I/O core (any text into ``Dispatcher.handle``), and a real ``miaws serve``
process fed random frames, JSON and raw bytes over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ServerProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawws import RawWS, client_frame, close_code

from miaws.broker.memory import MemoryBroker
from miaws.cli.check import TIMESTAMP
from miaws.config import build_settings
from miaws.core.clock import Clock
from miaws.core.dispatch import Dispatcher
from miaws.core.errors import ERROR_CODES
from miaws.core.model import Client, Encoded
from miaws.core.plugins import build_registry
from miaws.core.ratelimit import RateLimiter
from miaws.core.registry import LocalRegistry
from miaws.transport.frames import text_frame

SERVER_TYPES = {"welcome", "pong", "echo", "broadcast", "room-joined", "room-left", "error"}
# what a client can earn (1002 a bad close frame, 1007 text not UTF-8); 1011 would be a bug
CLOSE_CODES = {1002, 1003, 1007, 1008, 1009, 1013}
CLIENT_TYPES = ["ping", "echo", "broadcast", "join-room", "leave-room"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
rooms = st.sampled_from(["r1", "r2", "", "bad room", "x" * 65, "ok:1.a-b_c"]) | st.text(max_size=8)
ids = st.integers() | st.text(max_size=70) | st.floats() | st.booleans() | json_values
messages = st.fixed_dictionaries(
    {"type": st.sampled_from([*CLIENT_TYPES, "auth", "welcome", "PING"]) | st.text(max_size=10)},
    optional={"id": ids, "room": rooms, "message": json_values, "extra": json_values},
)
tricky = st.sampled_from(
    [
        "",
        " ",
        "{",
        "null",
        "[]",
        '{"type":"echo","message":NaN}',
        '{"type":"echo","message":1e999}',
        '{"type":"echo","message":"\\ud800"}',
        '{"type":"echo","message":' + "[" * 200 + "]" * 200 + "}",
        '{"type":"ping","id":' + "9" * 400 + "}",
        '{"type":"ping"} trailing',
        '{"type":"ping","type":"echo"}',
    ]
)
texts = (
    messages.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=60)
    | tricky
    | messages.map(lambda m: json.dumps(m, ensure_ascii=False))
)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str | bytes) -> dict[str, Any]:
    """Parse as a browser would: NaN and Infinity are not JSON."""
    msg: dict[str, Any] = json.loads(text, parse_constant=_no_constant)
    return msg


def check_contract(msg: dict[str, Any]) -> None:
    """One server message: a known type, a JS timestamp, a documented error code."""
    assert msg.get("type") in SERVER_TYPES, msg
    assert TIMESTAMP.match(str(msg.get("timestamp", ""))), msg
    if msg["type"] == "error":
        assert msg.get("code") in ERROR_CODES, msg
        assert isinstance(msg.get("message"), str) and msg["message"], msg


# ------------------------------------------------------------------ sans-I/O core


class Sink(Client):
    """A client of the core alone: keeps what it is sent and how it was closed."""

    __slots__ = ("got", "closed")

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id, "test")
        self.got: list[str] = []
        self.closed: int | None = None

    def deliver(self, message: Encoded) -> None:
        text_frame(message)  # every message must encode to a frame
        self.got.append(message.text)

    def close(self, code: int, reason: str = "") -> None:
        self.closed = code


@pytest.fixture(scope="module")
def core() -> Dispatcher:
    data = {"limits": {"max_rooms_per_client": 3, "max_room_members": 2}}
    dispatcher = Dispatcher(
        build_registry(build_settings({}, environ={}).plugin_sources()),
        MemoryBroker(LocalRegistry()),
        Clock(lambda: 1_700_000_000.0),
        build_settings(data, environ={}).limits,
    )
    ticks = iter(range(10**9))
    dispatcher.limiter = RateLimiter(50, 5, 20, now=lambda: next(ticks) * 0.01)
    return dispatcher


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(texts, min_size=1, max_size=8))
def test_core_any_text_gives_contract_replies(core: Dispatcher, frames: list[str]) -> None:
    """Dispatcher.handle: any text -> contract messages (never an exception); broadcasts and
    closes included, with the rate limiter and room limits on."""
    broker = core.rooms
    assert isinstance(broker, MemoryBroker)
    hub = broker.registry
    client, other = Sink("a"), Sink("b")
    hub.add(client)
    hub.add(other)
    try:
        for text in frames:
            result = core.handle(client, text)
            assert isinstance(result, list)
            for out in result:
                encoded = Encoded(out.payload)
                assert text_frame(encoded).endswith(encoded.text.encode())
                check_contract(strict_json(encoded.text))
                if out.broadcast:
                    broker.publish(out.payload, out.room, client.namespace)
                else:
                    client.send(out.payload)
            assert client.closed in (None, 1008)
        for text in client.got + other.got:
            check_contract(strict_json(text))
    finally:
        hub.remove(client)
        hub.remove(other)
    assert hub.count() == 0 and hub.rooms() == {}


# ------------------------------------------------------------------ a real server

FUZZ_CONFIG = """
server: {host: 127.0.0.1}
heartbeat: {interval: 0}
limits:
  max_message_bytes: 4096
  messages_per_second: 2000
  burst: 6
  flood_close_after: 4
  max_rooms_per_client: 3
  max_room_members: 5
"""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(FUZZ_CONFIG, Path(tmp_path_factory.mktemp("fuzz")))
    server.wait_ready()
    yield server
    server.stop()


def health(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http}/health", timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


frame_items = st.one_of(
    texts.map(lambda t: ("text", t)),
    st.binary(max_size=20).map(lambda b: ("binary", b)),
    st.integers(4097, 6000).map(
        lambda n: ("oversize", '{"type":"echo","message":"' + "a" * n + '"}')
    ),
    st.binary(min_size=1, max_size=4).map(lambda b: ("invalid-utf8", b"\xff" + b)),
)


async def exchange(port: int, items: list[tuple[str, Any]], garbage: bytes) -> list[str]:
    """Send the items and then a sentinel ping; return what went wrong (nothing, ideally)."""
    problems: list[str] = []
    conn = await RawWS.open(port)
    try:
        check_contract(await conn.read_json())
        protocol_error = False
        for kind, value in items:
            if kind == "text":
                conn.send_text(value)
            elif kind == "oversize":
                conn.send_text(value)
            elif kind == "binary":
                conn.send_raw(client_frame(value, 0x2))
            else:
                conn.send_raw(client_frame(value, 0x1))
                protocol_error = True
        conn.send_json({"type": "ping", "id": "sentinel"})
        timeout = 5.0
        while True:
            frame = await conn.read_frame(timeout=timeout)
            if frame is None:
                if not (protocol_error or garbage):
                    problems.append("connection dropped without a close frame")
                break
            opcode, payload = frame
            if opcode == 0x8:
                if close_code(payload) not in CLOSE_CODES:
                    problems.append(f"close code {close_code(payload)}")
                break
            if opcode == 0x1:
                msg = strict_json(payload)
                check_contract(msg)
                if msg.get("id") == "sentinel" and msg["type"] in ("pong", "error"):
                    if not garbage:
                        break
                    conn.send_raw(garbage)  # then read what comes, briefly
                    timeout = 0.3
            else:
                problems.append(f"unexpected opcode {opcode}")
    except asyncio.TimeoutError:
        if timeout == 5.0:  # (after garbage: maybe an unfinished frame the server waits for)
            problems.append("no reply and no close within 5 s")
    finally:
        conn.abort()
    return problems


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    items=st.lists(frame_items, min_size=1, max_size=6),
    garbage=st.just(b"") | st.binary(min_size=1, max_size=40),
)
def test_real_endpoint_fuzz(
    fuzz_server: ServerProcess, items: list[tuple[str, Any]], garbage: bytes
) -> None:
    """Random frames, JSON and raw bytes at a real server: contract replies or contract close
    codes only; afterwards the server is healthy and its registry empty again."""
    problems = asyncio.run(asyncio.wait_for(exchange(fuzz_server.port, items, garbage), 8))
    assert problems == []
    assert fuzz_server.proc.poll() is None
    for _ in range(100):
        body = health(fuzz_server)
        if body["connections"] == 0:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert body["status"] == "ok" and body["connections"] == 0 and body["rooms"] == 0
    assert "Traceback" not in fuzz_server.output()
