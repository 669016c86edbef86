"""The front door (issue 15), seen from raw sockets on 127.0.0.1: request-head and keep-alive
timeouts, descriptor exhaustion, bounded error replies, liveness and readiness, drain."""

from __future__ import annotations

import asyncio
import time

import pytest

HEAD_TIMEOUT = {"server": {"header_timeout": 0.5, "idle_timeout": 1.0}}


async def closed_after(port: int, data: bytes, timeout: float = 5.0) -> tuple[float, bytes]:
    """Send data, then nothing: (seconds until the server ends the connection, what it sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(data)
    received = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            received += chunk
    except ConnectionError:
        pass
    finally:
        writer.transport.abort()
    return time.monotonic() - start, received


@pytest.mark.config(HEAD_TIMEOUT)
@pytest.mark.parametrize(
    "partial",
    [
        b"",
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"POST /api/publish HTTP/1.1\r\nHost: 127",
    ],
    ids=["nothing", "upgrade", "http", "half-a-line"],
)
async def test_a_partial_request_head_is_closed_after_header_timeout(
    port: int, partial: bytes
) -> None:
    """A connection that has not sent a complete head within server.header_timeout is closed,
    on the upgrade path and on Tornado's HTTP path alike, without a response."""
    took, received = await closed_after(port, partial)
    assert 0.4 < took < 3.0
    assert received == b""


@pytest.mark.config(HEAD_TIMEOUT)
async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(port: int) -> None:
    """After a complete request and its response, a keep-alive connection waits at most
    server.idle_timeout for the next head (Tornado's idle_connection_timeout, 3600 s by default)."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    took, received = await closed_after(port, request)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert 0.9 < took < 4.0


@pytest.mark.config(HEAD_TIMEOUT)
async def test_a_slow_but_timely_head_is_served(port: int) -> None:
    """The deadline is for the whole head, not per byte: one that arrives in pieces within it
    is answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            writer.write(piece)
            await asyncio.sleep(0.1)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200 ")
    finally:
        writer.transport.abort()
