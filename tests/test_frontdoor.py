"""The front door (issue 15), seen from raw sockets on 127.0.0.1: request-head and keep-alive
timeouts, descriptor exhaustion, bounded error replies, liveness and readiness, drain."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import websockets
from conftest import RawConnect
from helpers import ServerProcess, free_port
from rawws import RawWS

from miaws.core.errors import QUOTE_LIMIT, bounded, clip
from miaws.service import Service
from miaws.transport.accept import connection_cap

ROOT = Path(__file__).resolve().parent.parent
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


NOFILE = 128  # the server's descriptor limit in the exhaustion test (soft and hard)


async def _http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """GET path on an open keep-alive connection: the status (the body is read and dropped)."""
    return (await http_get(reader, writer, path))[0]


async def http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str], bytes]:
    """GET path on an open keep-alive connection: status, headers (lower-case), body."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin1")
    lines = head.split("\r\n")
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return int(lines[0].split(" ", 2)[1]), headers, body


async def test_descriptor_exhaustion_pauses_accept_and_recovers(tmp_path: Path) -> None:
    """``miaws serve`` under ``ulimit -n 128``, and 200 connections that send nothing (they do
    not count as clients, so only the descriptors stop them): accept pauses instead of spinning
    on EMFILE; the clients already in are served, /health answers on an open keep-alive
    connection; a bounded number of log lines; CPU stays low; once the idle ones leave, new
    clients are accepted again."""
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text("server:\n  host: 127.0.0.1\n  header_timeout: 60\nlogging:\n  level: info\n")
    log_path = tmp_path / "server.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "miaws", "serve", "--port", str(port), "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit,
        )
    try:
        await _exhaust(port, proc.pid, log_path)
    finally:
        proc.kill()
        proc.wait(5)
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert f"file descriptors: this process may open {NOFILE}" in text


async def _exhaust(port: int, pid: int, log_path: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.transport.abort()
            break
        except OSError:
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.1)
    clients = [await RawWS.open(port) for _ in range(5)]
    for c in clients:
        assert c.status == 101 and (await c.read_json())["type"] == "welcome"
    http = await asyncio.open_connection("127.0.0.1", port)
    assert await _http_get(*http, "/health") == 200
    idle = []
    for _ in range(200):  # more than the server has descriptors: the rest wait in its backlog
        idle.append(await asyncio.open_connection("127.0.0.1", port))
    await asyncio.sleep(1.0)  # saturated by now
    metrics = ""
    process = psutil.Process(pid)
    cpu_before, lines_before = process.cpu_times(), len(log_path.read_text().splitlines())
    t0 = time.monotonic()
    for _ in range(10):  # 3 s saturated: the open connections are served meanwhile
        for c in clients:
            c.send_json({"type": "ping", "id": "p"})
            assert (await c.read_json())["type"] == "pong"
        assert await _http_get(*http, "/health") == 200
        await asyncio.sleep(0.3)
    elapsed = time.monotonic() - t0
    cpu_after = process.cpu_times()
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / elapsed
    lines = log_path.read_text().splitlines()
    print(f"saturated: {cpu:.1%} of a core over {elapsed:.1f} s, {len(lines)} log lines")
    assert cpu < 0.25, f"{cpu:.1%} of a core while saturated"
    assert len(lines) - lines_before <= 3, lines[lines_before:]
    assert sum("out of file descriptors" in line for line in lines) >= 1
    # /metrics needs no new descriptor on the open connection either
    w = http[1]
    w.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(http[0].readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    metrics = (await asyncio.wait_for(http[0].readexactly(length), 5)).decode()
    exhausted = [m for m in metrics.splitlines() if m.startswith("miaws_accept_exhausted_total")]
    assert exhausted and float(exhausted[0].split()[1]) >= 1, exhausted
    for _, writer in idle:
        writer.transport.abort()
    newcomer = await asyncio.wait_for(RawWS.open(port), 10)  # accepted again
    assert newcomer.status == 101 and (await newcomer.read_json())["type"] == "welcome"
    for c in [*clients, newcomer]:
        c.abort()
    http[1].transport.abort()


def test_the_connection_cap_is_derived_from_the_descriptor_limit(service: Service) -> None:
    """limits.max_connections 0: the soft RLIMIT_NOFILE (raised to the hard one at start)
    less 10% and 32; a configured figure wins."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or soft == hard
    assert service.max_connections() == connection_cap(soft) == soft - soft // 10 - 32
    assert connection_cap(1024) == 890


@pytest.mark.config({"limits": {"max_connections": 7}})
def test_a_configured_connection_cap_wins(service: Service) -> None:
    assert service.max_connections() == 7


BIG = "x" * 60_000


@pytest.mark.parametrize(
    "message",
    [
        {"type": "join-room", "room": BIG},  # schema: too long, pattern
        {"type": BIG},  # unknown type
        {"type": "join-room", "room": "lobby", "since": {"epoch": "e", "seq": 0, BIG: 1}},
        {
            "type": "join-room",
            "room": [BIG[:30_000], BIG[:30_000]],
        },  # not a string: the list is quoted
        {"type": "join-room", "room": "lobby", "since": {"epoch": BIG, "seq": 0}},
    ],
    ids=["long-string", "unknown-type", "long-key", "list", "nested"],
)
async def test_an_error_reply_quotes_a_bounded_part_of_the_value(
    raw_connect: RawConnect, message: dict[str, object]
) -> None:
    """A 60 KB invalid message is answered with an error under 2 KB: each quoted value is cut
    at 256 characters and ends with '…' (the issue measured a 130 KB reply to 65 KB)."""
    conn = await raw_connect()
    assert (await conn.read_json())["type"] == "welcome"
    text = json.dumps(message)
    assert len(text) > 60_000
    conn.send_text(text)
    frame = await conn.read_frame()
    assert frame is not None and frame[0] == 0x1
    reply = json.loads(frame[1])
    assert reply["type"] == "error" and reply["code"] in ("invalid-message", "unknown-type")
    assert len(frame[1]) < 2048, len(frame[1])
    assert "x" * 257 not in frame[1].decode()
    assert "…" in frame[1].decode()


def test_bounded_keeps_small_values_and_cuts_large_ones() -> None:
    assert bounded({"path": "/room", "reason": "too long"}) == {
        "path": "/room",
        "reason": "too long",
    }
    assert clip("a" * 300) == "a" * QUOTE_LIMIT + "…"
    deep = bounded({"a": list(range(100)), "b": {"c": {"d": {"e": {"f": 1}}}}})
    assert deep["a"][-1] == "…" and len(deep["a"]) == 17
    assert deep["b"]["c"]["d"]["e"] == "…"


async def test_livez_and_readyz(port: int) -> None:
    """/livez: 200 while the process serves; /readyz: 200 with room for clients."""
    conn = await asyncio.open_connection("127.0.0.1", port)
    try:
        status, _, body = await http_get(*conn, "/livez")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        status, _, body = await http_get(*conn, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
    finally:
        conn[1].transport.abort()


@pytest.mark.config({"limits": {"max_connections": 1}})
async def test_readyz_is_503_at_the_connection_cap(port: int, raw_connect: RawConnect) -> None:
    """At limits.max_connections the node is not ready (503, reason full, Retry-After), and
    ready again once a client leaves; /livez and /health stay 200 throughout."""
    conn = await asyncio.open_connection("127.0.0.1", port)
    try:
        client = await raw_connect()
        assert (await client.read_json())["type"] == "welcome"
        status, headers, body = await http_get(*conn, "/readyz")
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body) == {
            "ready": False,
            "reason": "full",
            "connections": 1,
            "max_connections": 1,
        }
        assert (await http_get(*conn, "/livez"))[0] == 200
        assert (await http_get(*conn, "/health"))[0] == 200
        client.abort()
        deadline = time.monotonic() + 5
        while (await http_get(*conn, "/readyz"))[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        conn[1].transport.abort()


DRAIN_CLIENTS = 1000
DRAIN_SECONDS = 5


async def test_sigterm_drains_clients_in_even_batches(
    server_process: Callable[..., ServerProcess],
) -> None:
    """shutdown.drain_seconds 5 and 1000 raw clients: on SIGTERM the node stops accepting,
    /readyz answers 503 (on a keep-alive connection opened before), every client gets 1001,
    no one-second bucket holds more than twice the mean number of closes, and the process
    exits once they are gone."""
    server = server_process(
        "server:\n  host: 127.0.0.1\nheartbeat:\n  interval: 0\n  timeout: 0\n"
        f"shutdown:\n  drain_seconds: {DRAIN_SECONDS}\nlogging:\n  level: warning\n"
    )
    clients = []
    for _ in range(DRAIN_CLIENTS):
        clients.append(await RawWS.open(server.port))
    for c in clients:
        assert c.status == 101 and (await c.read_json())["type"] == "welcome"
    http = await asyncio.open_connection("127.0.0.1", server.port)
    assert (await http_get(*http, "/readyz"))[0] == 200
    closes: list[tuple[float, int | None]] = []

    async def wait_close(c: RawWS) -> None:
        code = await c.close_code(timeout=DRAIN_SECONDS + 5)
        closes.append((time.monotonic(), code))

    waiting = [asyncio.ensure_future(wait_close(c)) for c in clients]
    await asyncio.sleep(0.2)
    sigterm = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    status, _, body = await http_get(*http, "/readyz")
    assert status == 503 and json.loads(body)["reason"] == "draining"
    await asyncio.wait_for(asyncio.gather(*waiting), DRAIN_SECONDS + 10)
    for c in clients:
        c.abort()
    http[1].transport.abort()
    assert [code for _, code in closes] == [1001] * DRAIN_CLIENTS
    buckets = Counter(int(t - sigterm) for t, _ in closes)
    mean = DRAIN_CLIENTS / (max(buckets) + 1)
    print(f"closes per second after SIGTERM: {[buckets[i] for i in range(max(buckets) + 1)]}")
    assert max(buckets) + 1 >= DRAIN_SECONDS - 1, buckets  # spread over the window
    assert max(buckets.values()) <= 2 * mean, buckets
    server.proc.wait(5)
    assert server.proc.returncode == 0, server.output()[-2000:]


async def test_the_compliance_echo_server_echoes_text_and_binary() -> None:
    """compliance/echo_server.py (what the Autobahn cases run against, outside CI): no
    welcome, text back as text, binary as binary, a message over 64 KiB accepted."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "compliance" / "echo_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                await asyncio.sleep(0.1)
        async with ws:
            for message in ("hello", b"\x00\xffbinary", "x" * 200_000):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 5) == message
    finally:
        proc.terminate()
        proc.wait(10)
