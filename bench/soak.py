"""Soak test: hundreds of clients joining, leaving, broadcasting and dropping abruptly
against a ``miaws serve`` subprocess, then checks that nothing is left behind.

    python bench/soak.py                       # 300 clients for 60 s on the shipped config
    python bench/soak.py --clients 200 --duration 30 --config my.yaml

Phases: a warm-up (the same load, a sixth of the duration) after which the server's RSS is
the baseline; the soak itself, sampling RSS every second; then every client goes (half close
politely, the rest drop their TCP connection without a close frame).  It passes when
``/api/clients`` and ``/api/rooms`` are empty again, no client saw a message outside the wire
contract or an error reply, and the final RSS is within ``--rss-slack`` MiB of the baseline.
Prints its figures; exit code 0 on pass, 1 on failure.  Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

SERVER_TYPES = {"welcome", "pong", "echo", "broadcast", "room-joined", "room-left", "error"}


@dataclass
class Stats:
    connects: int = 0
    polite_closes: int = 0
    abrupt_drops: int = 0
    sent: int = 0
    received: int = 0
    bad: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Server:
    """``miaws serve`` on a free 127.0.0.1 port."""

    def __init__(self, config: str | None) -> None:
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="miaws-soak-")
        cfg = Path(self.dir.name) / "config.yaml"
        base = Path(config).read_text() if config else "{}\n"
        cfg.write_text(base)
        self.log = open(Path(self.dir.name) / "server.log", "w")  # closed in stop()
        command = [sys.executable, "-m", "miaws", "serve", "--config", str(cfg)]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws"

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited early:\n{self.output()}")
            try:
                get_json(f"{self.http}/health")
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("server not ready")

    def output(self) -> str:
        self.log.flush()
        return (Path(self.dir.name) / "server.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        self.dir.cleanup()


async def client_loop(url: str, rooms: list[str], stop: asyncio.Event, stats: Stats) -> None:
    """Connect, act for a while, leave politely or drop abruptly, again until stop."""
    rng = random.Random()

    def on_message(text: str | bytes | None) -> None:
        if text is None:
            return
        stats.received += 1
        try:
            msg = json.loads(text)
        except ValueError:
            stats.bad.append(f"not JSON: {text!r:.80}")
            return
        if msg.get("type") not in SERVER_TYPES or "timestamp" not in msg:
            stats.bad.append(f"not a contract message: {text!r:.80}")
        elif msg["type"] == "error":
            stats.errors[msg.get("code", "?")] += 1

    while not stop.is_set():
        try:
            conn: WebSocketClientConnection = await asyncio.wait_for(
                websocket_connect(url, on_message_callback=on_message), 10
            )
        except (OSError, asyncio.TimeoutError) as exc:
            stats.bad.append(f"connect failed: {exc!r}")
            await asyncio.sleep(0.5)
            continue
        stats.connects += 1
        joined: set[str] = set()
        try:
            for _ in range(rng.randint(5, 30)):
                if stop.is_set():
                    break
                roll = rng.random()
                if roll < 0.25 or not joined:
                    room = rng.choice(rooms)
                    msg: dict[str, Any] = {"type": "join-room", "room": room}
                    joined.add(room)
                elif roll < 0.40:
                    room = rng.choice(sorted(joined))
                    msg = {"type": "leave-room", "room": room}
                    joined.discard(room)
                elif roll < 0.60:
                    msg = {"type": "broadcast", "message": "x" * rng.randint(1, 200)}
                    msg["room"] = rng.choice(sorted(joined))
                elif roll < 0.605:
                    msg = {"type": "broadcast", "message": "to everyone"}
                elif roll < 0.80:
                    msg = {"type": "ping", "id": rng.randint(0, 10**6)}
                else:
                    msg = {"type": "echo", "message": {"n": rng.random()}}
                await conn.write_message(json.dumps(msg))
                stats.sent += 1
                await asyncio.sleep(rng.uniform(0.2, 0.6))
        except Exception as exc:  # any failure is a finding
            stats.bad.append(f"client failed: {exc!r}")
        if rng.random() < 0.5:
            conn.close(1000)
            stats.polite_closes += 1
        else:
            assert conn.protocol is not None and conn.protocol.stream is not None
            conn.protocol.stream.close()  # no close frame: the server sees the TCP drop
            stats.abrupt_drops += 1
        await asyncio.sleep(rng.uniform(0, 0.3))


async def load(url: str, clients: int, seconds: float, rooms: list[str], stats: Stats) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client_loop(url, rooms, stop, stats)) for _ in range(clients)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)


def wait_empty(server: Server, timeout: float = 20) -> tuple[list[Any], dict[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        clients = get_json(f"{server.http}/api/clients")
        rooms = get_json(f"{server.http}/api/rooms")
        if (not clients and not rooms) or time.monotonic() > deadline:
            return clients, rooms
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of soak after warm-up")
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--config", help="config file for the server (default: built-in defaults)")
    p.add_argument("--rss-slack", type=float, default=16.0, help="MiB the RSS may end above")
    args = p.parse_args(argv)
    rooms = [f"soak-{i}" for i in range(args.rooms)]
    server = Server(args.config)
    try:
        server.wait_ready()
        warm = Stats()
        asyncio.run(load(server.ws, args.clients, max(3.0, args.duration / 6), rooms, warm))
        wait_empty(server)
        time.sleep(1)
        baseline = rss_mib(server.proc.pid)
        stats = Stats()
        peak = [baseline]

        async def soak() -> None:
            async def sample() -> None:
                while True:
                    await asyncio.sleep(1)
                    peak.append(rss_mib(server.proc.pid))

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            await load(server.ws, args.clients, args.duration, rooms, stats)
            sampler.cancel()
            stats_elapsed[0] = time.monotonic() - started

        stats_elapsed = [0.0]
        asyncio.run(soak())
        left_clients, left_rooms = wait_empty(server)
        time.sleep(2)
        final = rss_mib(server.proc.pid)
        health = get_json(f"{server.http}/health")
        tracebacks = server.output().count("Traceback")
    finally:
        server.stop()

    elapsed = stats_elapsed[0]
    print(f"clients {args.clients}, rooms {args.rooms}, soak {elapsed:.1f} s (after warm-up)")
    print(
        f"connections {stats.connects} ({stats.connects / elapsed:.0f}/s), "
        f"polite closes {stats.polite_closes}, abrupt drops {stats.abrupt_drops}"
    )
    print(
        f"messages sent {stats.sent} ({stats.sent / elapsed:.0f}/s), "
        f"received {stats.received} ({stats.received / elapsed:.0f}/s)"
    )
    print(f"error replies {dict(stats.errors) or 0}, contract violations {len(stats.bad)}")
    print(f"server RSS MiB: baseline {baseline:.1f}, peak {max(peak):.1f}, final {final:.1f}")
    print(
        f"left behind: clients {len(left_clients)}, rooms {len(left_rooms)}; "
        f"health {health['status']}; tracebacks in the log {tracebacks}"
    )
    failures = []
    if left_clients or left_rooms:
        failures.append(f"registry not empty: {len(left_clients)} clients, rooms {left_rooms}")
    if stats.bad:
        failures.append(f"{len(stats.bad)} problems, first: {stats.bad[0]}")
    if stats.errors:
        failures.append(f"error replies: {dict(stats.errors)}")
    if final > baseline + args.rss_slack:
        failures.append(f"RSS {final:.1f} MiB > baseline {baseline:.1f} + {args.rss_slack} MiB")
    if tracebacks:
        failures.append("tracebacks in the server log")
    if stats.connects < args.clients:
        failures.append("fewer connections than clients")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAILED")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
