"""What permessage-deflate costs (issue 15): memory per idle connection and server CPU per
message, compressed against not.

    .venv/bin/python bench/compression.py [--connections 500] [--messages 3000] [--repeat 3]

Starts ``miaws serve`` nodes on free 127.0.0.1 ports (tests/helpers.py's ServerProcess):
``off`` (compression off, the default), ``level 1`` (``compression.enabled``, the default
level) and ``level 6``; and, for what context takeover would cost, a bare Tornado echo
handler with Tornado's own permessage-deflate (``get_compression_options`` ``{}``: both
directions keep their zlib streams for the connection's life).

- **Memory**: the server's RSS (psutil) before and after CONNECTIONS clients connect, each
  sending one compressed 2 KB message and reading the reply (so zlib state, if any is kept,
  has been used), then going idle: the difference over CONNECTIONS.  Clients offer
  permessage-deflate on the compressed rows and not on the plain ones.
- **CPU**: the server's CPU time (user + system, psutil) over MESSAGES echo round trips on 4
  connections with 50 in flight each, per message, for messages of 200 B (under
  ``compression.min_size``: sent as they are), 2 KB and 16 KB of JSON; clients compress what
  they send, as browsers do.  Rows are interleaved, REPEAT times, medians printed.
- **zlib alone**, in this process: CPU microseconds to deflate each payload as the server
  does (``Deflater.compress``, a zlib stream per message) at levels 1 and 6 and to inflate
  it, and the compressed size: the part of the per-message cost that is compression's.
  ``--zlib-only`` prints just this (seconds, not minutes).

Client and servers share the machine: compare rows with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import ServerProcess, free_port  # noqa: E402  (the test suite's process helpers)

from miaws.transport.deflate import Deflater  # noqa: E402
from miaws.transport.frames import encode_frame  # noqa: E402

OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
TIME_LIMIT = 120.0


def payload(size: int) -> str:
    """An echo request of about size bytes of JSON, as an application would send."""
    items, text = [], ""
    i = 0
    while len(text) < size:
        items.append({"id": i, "user": f"user-{i * 7919 % 1000}", "score": i * 37 % 101})
        text = json.dumps({"type": "echo", "message": items})
        i += 1
    return text


class Client:
    """One raw WebSocket connection (asyncio streams), compressing if negotiated."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deflate: bool):
        self.reader, self.writer, self.deflate = reader, writer, deflate
        self.inflater: Any = None

    @classmethod
    async def open(cls, port: int, path: str, offer: bool) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if offer else ""
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{ext}\r\n".encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin1").lower()
        assert head.startswith("http/1.1 101"), head
        client = cls(reader, writer, "permessage-deflate" in head)
        if "server_no_context_takeover" not in head:  # the server's stream spans messages
            client.inflater = zlib.decompressobj(-15)
        return client

    def send(self, text: str) -> None:
        data, rsv = text.encode(), 0
        if self.deflate:
            stream = zlib.compressobj(6, zlib.DEFLATED, -15)
            data, rsv = (stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH))[:-4], 0x40
        frame = encode_frame(0x1, data, mask=os.urandom(4))
        self.writer.write(bytes((frame[0] | rsv,)) + frame[1:])

    async def recv(self) -> bytes:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        data = await self.reader.readexactly(n)
        if b0 & 0x40:
            data = (self.inflater or zlib.decompressobj(-15)).decompress(data + TAIL)
        return data

    def close(self) -> None:
        self.writer.close()


TORNADO_ECHO = """
import asyncio, sys, tornado.web, tornado.websocket
class Echo(tornado.websocket.WebSocketHandler):
    def get_compression_options(self):
        return {}  # Tornado's permessage-deflate: zlib streams kept for the connection
    def open(self):
        self.set_nodelay(True)
        self.write_message('{"type":"welcome"}')
    def on_message(self, m):
        self.write_message(m)
async def main():
    tornado.web.Application([("/ws", Echo)]).listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Tornado:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", TORNADO_ECHO, str(self.port)])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tornado echo server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def config(compression: dict[str, Any] | None) -> str:
    text = "server:\n  host: 127.0.0.1\nheartbeat:\n  interval: 0\n  timeout: 0\n"
    text += "logging:\n  level: warning\nsocketio:\n  enabled: false\n"
    text += "limits:\n  max_message_bytes: 1048576\n  max_queued_bytes: 0\n"
    if compression:
        text += "compression:\n" + "".join(f"  {k}: {v}\n" for k, v in compression.items())
    return text


async def memory(port: int, pid: int, offer: bool, n: int) -> float:
    """Bytes of server RSS per idle connection (see the module docstring)."""
    proc = psutil.Process(pid)
    await asyncio.sleep(0.5)
    before = proc.memory_info().rss
    clients = []
    for i in range(0, n, 100):
        clients += await asyncio.gather(
            *(Client.open(port, "/ws", offer) for _ in range(min(100, n - i)))
        )
    await asyncio.gather(*(c.recv() for c in clients))  # the welcome
    text = payload(2000)
    for c in clients:
        c.send(text)
    await asyncio.gather(*(c.recv() for c in clients))
    await asyncio.sleep(1.0)
    after = proc.memory_info().rss
    for c in clients:
        c.close()
    await asyncio.sleep(0.5)
    return (after - before) / n


async def cpu(port: int, pid: int, offer: bool, size: int, messages: int) -> float:
    """Server CPU microseconds per echo round trip (see the module docstring)."""
    proc = psutil.Process(pid)
    clients = await asyncio.gather(*(Client.open(port, "/ws", offer) for _ in range(4)))
    await asyncio.gather(*(c.recv() for c in clients))
    text = payload(size)
    per, window = messages // 4, 50

    async def run(c: Client) -> None:
        sent = got = 0
        while got < per:
            while sent < per and sent - got < window:
                c.send(text)
                sent += 1
            await c.recv()
            got += 1

    t = proc.cpu_times()
    before = t.user + t.system
    await asyncio.wait_for(asyncio.gather(*(run(c) for c in clients)), TIME_LIMIT)
    t = proc.cpu_times()
    for c in clients:
        c.close()
    return (t.user + t.system - before) / (per * 4) * 1e6


MEMORY_ROWS = [  # (label, server, clients offer permessage-deflate)
    ("off", "off", False),
    ("level 1", "level 1", True),
    ("level 1, plain client", "level 1", False),
    ("tornado, plain client", "tornado", False),
    ("tornado, takeover", "tornado", True),
]
CPU_SERVERS = ["off", "level 1", "level 6"]


def start(name: str, tmp: Path) -> Any:
    if name == "tornado":
        server: Any = Tornado()
    else:
        level = {"off": None, "level 1": {"enabled": "true"}}.get(
            name, {"enabled": "true", "level": 6}
        )
        server = ServerProcess(config(level), tmp)
    server.wait_ready()
    return server


def zlib_alone(rounds: int = 2000) -> None:
    """Print the zlib part of a message's cost (see the module docstring)."""
    for size in (200, 2000, 16000):
        data = payload(size).encode()
        figures, sizes = [], []
        for level in (1, 6):
            deflater = Deflater(level, 0)
            started = time.process_time()
            for _ in range(rounds):
                compressed = deflater.compress(data)
            figures.append((time.process_time() - started) / rounds * 1e6)
            sizes.append(len(compressed))
            if level == 1:
                started = time.process_time()
                for _ in range(rounds):
                    zlib.decompressobj(-15).decompress(compressed + TAIL)
                inflate_us = (time.process_time() - started) / rounds * 1e6
        print(
            f"zlib {len(data):6} B: deflate {figures[0]:6.1f} µs (level 1, to {sizes[0]} B), "
            f"{figures[1]:6.1f} µs (level 6, to {sizes[1]} B); inflate {inflate_us:5.1f} µs"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--zlib-only", action="store_true", help="only the zlib figures")
    args = p.parse_args()
    zlib_alone()
    if args.zlib_only:
        return
    tmp = Path(tempfile.mkdtemp(prefix="miaws-compression-"))
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        # Memory: a fresh server per row (a second round would reuse the memory the first
        # freed), warmed up by 10 connections first.
        for label, name, offer in MEMORY_ROWS:
            server = start(name, tmp)
            try:
                asyncio.run(memory(server.port, server.proc.pid, offer, 10))
                figure = asyncio.run(memory(server.port, server.proc.pid, offer, args.connections))
                rows.setdefault(f"memory {label}", []).append(figure)
            finally:
                server.stop()
    servers = {name: start(name, tmp) for name in CPU_SERVERS}
    try:
        for _ in range(args.repeat):  # interleaved: each round runs every row once
            for size in (200, 2000, 16000):
                for name, server in servers.items():
                    figure = asyncio.run(
                        cpu(server.port, server.proc.pid, name != "off", size, args.messages)
                    )
                    rows.setdefault(f"cpu {size} B {name}", []).append(figure)
    finally:
        for server in servers.values():
            server.stop()
    print(
        f"{args.connections} idle connections, {args.messages} echo round trips, "
        f"medians of {args.repeat} (shared machine)"
    )
    for key, values in rows.items():
        unit = "bytes of RSS per connection" if key.startswith("memory") else "µs CPU per message"
        print(f"{key:40} {statistics.median(values):10,.0f} {unit}")


if __name__ == "__main__":
    main()
