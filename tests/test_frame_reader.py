"""The batching frame reader and corked writes, seen from a raw socket client.

Frames are written by hand so that the tests control how they are split into TCP writes:
many frames in one write, one frame spread over many writes, fragmented messages, control
frames between fragments, and a close frame right after requests.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from rawws import client_frame

from miaws.service import Service

MASK = b"\x11\x22\x33\x44"


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame with a fixed mask."""
    return client_frame(payload, opcode, fin, rsv, MASK)


def text(message: dict[str, Any]) -> bytes:
    return frame(json.dumps(message).encode())


class Raw:
    """A WebSocket client on a bare socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 101")
        raw = cls(reader, writer)
        opcode, payload = await raw.read()
        assert opcode == 0x1 and json.loads(payload)["type"] == "welcome"
        return raw

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; server frames are never masked."""
        head = await asyncio.wait_for(self.reader.readexactly(2), 5)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return head[0] & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), 5)

    async def json(self) -> dict[str, Any]:
        opcode, payload = await self.read()
        assert opcode == 0x1
        result: dict[str, Any] = json.loads(payload)
        return result

    async def dropped(self) -> bool:
        """True if the server closes the TCP connection (without more data) within 5 s."""
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    def close(self) -> None:
        self.writer.close()


SLOW_PLUGIN = """
import asyncio
from miaws import MessageType, hookimpl

async def handle_slow(ctx, message):
    await asyncio.sleep(0.05)
    return {"type": "slow-done"}

@hookimpl
def register_message_types():
    return [MessageType("slow", handle_slow, schema={"type": "object"})]
"""


@pytest.fixture
def config_data(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The test's ``config`` marker; tests named ``*async_handler*`` also get a plugin whose
    ``slow`` handler is a coroutine."""
    marker = request.node.get_closest_marker("config")
    data: dict[str, Any] = dict(marker.args[0]) if marker else {}
    if "async_handler" in request.node.name:
        (tmp_path / "slow.py").write_text(SLOW_PLUGIN)
        data["plugins"] = {"paths": [str(tmp_path)], "enabled": ["ping", "echo", "slow"]}
    return data


@pytest.fixture
def raw(port: int) -> Any:
    opened: list[Raw] = []

    async def connect() -> Raw:
        client = await Raw.connect(port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


async def test_many_frames_in_one_write_answered_in_order(raw: Any) -> None:
    client = await raw()
    await client.send(b"".join(text({"type": "echo", "message": i, "id": i}) for i in range(300)))
    for i in range(300):
        reply = await client.json()
        assert (reply["type"], reply["original"], reply["id"]) == ("echo", i, i)


@pytest.mark.config({"limits": {"max_message_bytes": 100_000}})
async def test_frame_split_over_many_writes(raw: Any) -> None:
    """Headers with 7-, 16- and 64-bit lengths, written a few bytes at a time."""
    client = await raw()
    for size in (10, 300, 70_000):
        data = text({"type": "echo", "message": "x" * size})
        step = 3 if size < 1000 else 7000
        for i in range(0, len(data), step):
            await client.send(data[i : i + step])
            await asyncio.sleep(0)
        assert (await client.json())["original"] == "x" * size


async def test_fragmented_message_with_ping_between(raw: Any) -> None:
    client = await raw()
    body = json.dumps({"type": "echo", "message": "in three parts"}).encode()
    await client.send(
        frame(body[:5], fin=False)
        + frame(b"are you there", opcode=0x9)
        + frame(body[5:12], opcode=0x0, fin=False)
    )
    assert await client.read() == (0xA, b"are you there")
    await client.send(frame(body[12:], opcode=0x0))
    assert (await client.json())["original"] == "in three parts"


async def test_replies_go_before_the_close_frame(raw: Any, service: Service) -> None:
    client = await raw()
    requests = b"".join(text({"type": "echo", "message": i}) for i in range(3))
    await client.send(requests + frame(struct.pack("!H", 1000), opcode=0x8))
    assert [(await client.json())["original"] for _ in range(3)] == [0, 1, 2]
    assert await client.read() == (0x8, struct.pack("!H", 1000))
    assert await client.dropped()


@pytest.mark.config({"limits": {"max_message_bytes": 100}})
async def test_size_limit_counts_all_fragments(raw: Any) -> None:
    client = await raw()
    await client.send(frame(b"x" * 60, fin=False) + frame(b"x" * 60, opcode=0x0))
    opcode, payload = await client.read()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009


@pytest.mark.config({"limits": {"max_message_bytes": 100}})
async def test_size_limit_from_the_header_alone(raw: Any) -> None:
    """An oversized frame is refused as soon as its header arrives."""
    client = await raw()
    await client.send(frame(b"x" * 5000)[:8])
    opcode, payload = await client.read()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009


@pytest.mark.parametrize(
    "bad",
    [
        frame(b"{}", rsv=0x40),  # an extension that was not negotiated
        frame(b"x" * 130, opcode=0x9),  # a control frame over 125 bytes
        frame(b"", opcode=0x9, fin=False),  # a fragmented control frame
        frame(b"{}", opcode=0x0),  # a continuation of nothing
        frame(b"{", fin=False) + frame(b"{}"),  # a new message inside a fragmented one
    ],
)
async def test_protocol_violation_drops_only_that_client(raw: Any, bad: bytes) -> None:
    client, other = await raw(), await raw()
    await client.send(text({"type": "ping"}) + bad)
    assert (await client.json())["type"] == "pong"  # what came before is still answered
    assert await client.dropped()
    await other.send(text({"type": "ping"}))
    assert (await other.json())["type"] == "pong"


async def test_broadcast_from_one_read_reaches_everyone_in_order(raw: Any) -> None:
    sender, receiver = await raw(), await raw()
    await sender.send(
        b"".join(text({"type": "broadcast", "message": i}) for i in range(50))
        + text({"type": "ping", "id": "last"})
    )
    assert [(await receiver.json())["message"] for _ in range(50)] == list(range(50))
    assert [(await sender.json())["message"] for _ in range(50)] == list(range(50))
    assert (await sender.json())["id"] == "last"


async def test_replies_are_compact_utf8_json(raw: Any) -> None:
    """The bytes on the wire: no spaces after separators, non-ASCII not escaped, and
    values beyond what orjson handles (a 100-digit integer) still echoed exactly."""
    client = await raw()
    big = 10**100
    await client.send(
        frame(b'{"type":"echo","message":{"s":"h\xc3\xa9llo \xe2\x9c\x93","n":[1,2.5,%d]}}' % big)
    )
    _, payload = await client.read()
    assert b'"original":{"s":"h\xc3\xa9llo \xe2\x9c\x93","n":[1,2.5,' + str(big).encode() in payload
    assert b", " not in payload and b'": ' not in payload and b"\\u" not in payload


async def test_frames_after_an_async_handler_wait_for_it(raw: Any) -> None:
    """Frames read together with a message whose handler is a coroutine are handled only
    once it has finished: replies keep the order of the requests."""
    client = await raw()
    await client.send(
        text({"type": "echo", "message": 1})
        + text({"type": "slow", "id": "s"})
        + text({"type": "ping", "id": "p"})
    )
    replies = [await client.json() for _ in range(3)]
    assert [r["type"] for r in replies] == ["echo", "slow-done", "pong"]


@pytest.mark.config({"limits": {"max_queued_bytes": 64 * 1024 * 1024}})
async def test_a_busy_connection_does_not_hold_up_the_others(
    raw: Any, http_server_port: tuple[socket.socket, int]
) -> None:
    """Fair turns: a connection whose requests are all waiting is handled one read (one
    recv, 8 KiB) at a time, and the other connections get their turns in between, instead
    of after its whole backlog (a reader that drains whatever is buffered before yielding
    fails here)."""
    listener = http_server_port[0]  # connections accepted from now on inherit its buffer size
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    busy, other, observer = await raw(), await raw(), await raw()
    frames = [text({"type": "broadcast", "message": i}) for i in range(20_000)]
    data = b"".join(frames)
    # The server runs on this event loop: without yielding to it, hand the kernel the busy
    # client's whole backlog, then the other client's one request.  When the server runs
    # next, everything is waiting to be read.
    # (As much of it as the kernel takes: net.core.rmem_max caps the buffer.)
    busy_fd = busy.writer.get_extra_info("socket").fileno()
    sent = 0
    try:
        while sent < len(data):
            sent += os.write(busy_fd, data[sent : sent + 65536])
    except BlockingIOError:
        pass
    waiting = sum(1 for end in itertools.accumulate(map(len, frames)) if end <= sent)
    assert sent >= 4 * 65536, "the kernel took too little of the backlog to tell"
    os.write(
        other.writer.get_extra_info("socket").fileno(),
        text({"type": "broadcast", "message": "other"}),
    )
    await busy.send(data[sent:])
    seen = [(await observer.json())["message"] for _ in range(len(frames) + 1)]
    assert seen.index("other") < waiting // 2
