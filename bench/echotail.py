"""Where an echo run's p99 comes from: the server's reply rate in 10 ms windows.

    python bench/echotail.py                                   # miaws (this checkout), 3 runs
    python bench/echotail.py --server 'PORT={port} exec node ~/.cache/miaws-bench/node-ws/server.js'

Starts the server (``{port}`` in the command) pinned to ``--server-cpu``, drives the echo
scenario of ``bench/loadgen.py`` (50 connections x 10 in flight) from ``--gen-cpu``, and
prints per run p50/p99 and the slow stretches: consecutive 10 ms windows in which the server
answered fewer than 0.75x its median replies per window, with their mean latency.  With 500
messages in flight a slower server raises the latency of every message at once, so a
stretch of 1 % of a run sets its p99.  Then the same windows for a loop of pure Python
arithmetic on the server's CPU with nothing else running: if it has slow stretches too,
the machine slowed down, not the server.  Talks only to 127.0.0.1.

The echo loop is ``loadgen.py``'s, keeping each reply's time as well (``loadgen.py``
stays a verbatim copy of the shared harness, so it is not changed for this).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import Conn, close_all, masked_text_frame, now, open_many  # noqa: E402

WINDOW = 0.01
SLOW = 0.75

PROBE = """
import sys, time
end = time.perf_counter() + float(sys.argv[1])
while time.perf_counter() < end:
    stop, n = time.perf_counter() + 0.01, 0
    while time.perf_counter() < stop:
        x = 0
        for i in range(200):
            x += i * i
        n += 1
    print(n)
"""


def stretches(counts: list[int]) -> list[tuple[int, int]]:
    """(first window, length) of each run of windows below SLOW x the median count."""
    limit = SLOW * sorted(counts)[len(counts) // 2]
    runs, start = [], None
    for i, count in enumerate([*counts, limit + 1]):
        if count < limit and start is None:
            start = i
        elif count >= limit and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def describe(counts: list[int], latency: list[float] | None = None) -> str:
    runs = stretches(counts)
    slow = sum(length for _, length in runs)
    text = f"{slow} of {len(counts)} windows slow ({100 * slow / len(counts):.1f} %)"
    longest = sorted(runs, key=lambda run: -run[1])[:4]
    parts = []
    for first, length in longest:
        part = f"{10 * length} ms at {first / 100:.2f} s"
        if latency is not None:
            part += f" ({1000 * sum(latency[first : first + length]) / length:.1f} ms)"
        parts.append(part)
    return text + (f"; longest: {', '.join(parts)}" if parts else "")


async def echo(url: str, duration: float) -> tuple[array[float], array[float]]:
    """(reply times, latencies) of every reply in the measured duration."""
    payload = json.dumps({"type": "echo", "message": "hello"}, separators=(",", ":")).encode()
    frame = masked_text_frame(payload)
    times, latencies = array("d"), array("d")
    state = {"running": True, "measuring": False}

    class EchoConn(Conn):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[float] = []
            self.owed = 0

        def fire(self, k: int) -> None:
            self.sent.extend([now()] * k)
            self.transport.underlying_transport.write(frame * k)

        def on_text(self, reply: Any) -> None:
            t = now()
            sent = self.sent.pop(0)
            if state["measuring"]:
                times.append(t)
                latencies.append(t - sent)
            self.owed += 1
            if state["running"] and reply.last_in_buffer:
                self.fire(self.owed)
                self.owed = 0

    conns, _ = await open_many(EchoConn, url, 50)
    for conn in conns:
        conn.fire(10)
    await asyncio.sleep(1.0)
    state["measuring"] = True
    await asyncio.sleep(duration)
    state["measuring"] = state["running"] = False
    await asyncio.sleep(0.3)
    await close_all(conns)
    return times, latencies


def windows(times: array[float], latencies: array[float]) -> tuple[list[int], list[float]]:
    start = times[0]
    n = int((times[-1] - start) / WINDOW) + 1
    counts, sums = [0] * n, [0.0] * n
    for t, latency in zip(times, latencies, strict=True):
        i = int((t - start) / WINDOW)
        counts[i] += 1
        sums[i] += latency
    return counts, [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]


def start_server(command: str, cpu: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    argv = ["taskset", "-c", cpu, "sh", "-c", command.format(port=port)]
    server = subprocess.Popen(
        argv, cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return server, port
        except OSError:
            time.sleep(0.1)
    server.kill()
    sys.exit(f"echotail: the server did not listen on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    miaws = f"exec {shlex.quote(sys.executable)} -m miaws serve --port {{port}}"
    parser.add_argument("--server", default=miaws, help="command; {port} is replaced")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--gen-cpu", default="1")
    args = parser.parse_args()
    subprocess.run(["taskset", "-pc", args.gen_cpu, str(os.getpid())], capture_output=True)
    for run in range(1, args.runs + 1):
        server, port = start_server(args.server, args.server_cpu)
        try:
            times, latencies = uvloop.run(echo(f"ws://127.0.0.1:{port}/ws", args.duration))
        finally:
            server.terminate()
            server.wait(timeout=10)
        ordered = sorted(latencies)
        p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
        counts, latency = windows(times, latencies)
        print(
            f"run {run}: {len(times) / args.duration:,.0f} replies/s, p50 {1000 * p50:.2f} ms, "
            f"p99 {1000 * p99:.2f} ms; {describe(counts, latency)}"
        )
    probe = subprocess.run(
        ["taskset", "-c", args.server_cpu, sys.executable, "-c", PROBE, str(args.duration)],
        capture_output=True,
        text=True,
        check=True,
    )
    counts = [int(line) for line in probe.stdout.split()]
    print(f"CPU probe alone on CPU {args.server_cpu}: {describe(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
