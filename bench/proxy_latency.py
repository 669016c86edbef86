"""What a proxied message type (``proxy.types``, docs/integration.md) adds, over loopback.

    python bench/proxy_latency.py                 # 1,000 requests/s, 3 rounds of 5 s each
    python bench/proxy_latency.py --rate 500 --seconds 10 --rounds 2

Starts a minimal aiohttp backend (its own process, so its CPU is not the server's) and
``miaws serve`` with one proxied type, ``order.submit``, answered by that backend, then in
each round drives, in turn and at the same paced rate (``--connections`` clients, each one
request at a time):

- ``echo``: answered inside miaws (the baseline);
- ``order.submit``: miaws -> HTTP POST -> backend -> reply;
- ``direct``: the same POST sent by the load generator to the backend itself (what the
  backend and one loopback HTTP round trip cost without miaws).

It prints per kind the latency percentiles (request sent -> reply read, ms) and the miaws
process's CPU time per request (user + system, from /proc through psutil, idle time
subtracted by measuring only the send window).  The proxy's cost is the ``order.submit`` row
less the ``echo`` row.  Figures from a shared machine are noisy: the interleaved rounds put
the kinds side by side under the same conditions.  Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent

BACKEND = """
import sys
from aiohttp import web

async def submit(request):
    body = await request.json()
    return web.json_response({"order": 42, "item": body["message"].get("item")})

app = web.Application()
app.router.add_post("/submit", submit)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a process exited early (code {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive_ws(
    url: str, kind: str, rate: float, seconds: float, connections: int
) -> list[float]:
    """Paced requests of kind over connections clients; the latencies in ms."""
    message = (
        {"type": "echo", "message": {"item": "tea"}}
        if kind == "echo"
        else {"type": "order.submit", "item": "tea"}
    )
    text = json.dumps(message)
    conns = [await websockets.connect(url, max_size=None) for _ in range(connections)]
    for ws in conns:
        await ws.recv()  # welcome
    latencies: list[float] = []
    interval = connections / rate
    end = time.perf_counter() + seconds

    async def client(ws: Any, offset: float) -> None:
        await asyncio.sleep(offset)
        due = time.perf_counter()
        while due < end:
            started = time.perf_counter()
            await ws.send(text)
            reply = json.loads(await ws.recv())
            assert reply["type"] in ("echo", "order.submit.result"), reply
            latencies.append((time.perf_counter() - started) * 1000)
            due += interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))

    await asyncio.gather(*(client(ws, i * interval / connections) for i, ws in enumerate(conns)))
    for ws in conns:
        await ws.close()
    return latencies


async def drive_http(url: str, rate: float, seconds: float, connections: int) -> list[float]:
    """The same paced POSTs, sent straight to the backend."""
    body = {"type": "order.submit", "message": {"type": "order.submit", "item": "tea"}}
    latencies: list[float] = []
    interval = connections / rate
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def client(offset: float) -> None:
            await asyncio.sleep(offset)
            due = time.perf_counter()
            while due < end:
                started = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                latencies.append((time.perf_counter() - started) * 1000)
                due += interval
                await asyncio.sleep(max(0.0, due - time.perf_counter()))

        await asyncio.gather(*(client(i * interval / connections) for i in range(connections)))
    return latencies


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()

    backend_port, miaws_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="miaws-proxy-bench-"))
    (workdir / "backend.py").write_text(BACKEND)
    (workdir / "config.yaml").write_text(
        "server:\n  host: 127.0.0.1\n"
        "logging:\n  level: warning\n"
        "plugins:\n  enabled: [ping, echo, broadcast, rooms, proxy]\n"
        "proxy:\n  types:\n"
        f"    - type: order.submit\n      url: http://127.0.0.1:{backend_port}/submit\n"
    )
    backend = subprocess.Popen([sys.executable, str(workdir / "backend.py"), str(backend_port)])
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "miaws",
            "serve",
            "--config",
            str(workdir / "config.yaml"),
            "--port",
            str(miaws_port),
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_port(backend_port, backend)
        wait_port(miaws_port, server)
        proc = psutil.Process(server.pid)
        url = f"ws://127.0.0.1:{miaws_port}/ws"
        results: dict[str, list[float]] = {"echo": [], "order.submit": [], "direct": []}
        cpu_per: dict[str, list[float]] = {"echo": [], "order.submit": []}
        # warm up: connections to the backend, caches
        await drive_ws(url, "order.submit", args.rate / 4, 1.0, args.connections)
        for _ in range(args.rounds):
            for kind in ("echo", "order.submit"):
                before = cpu(proc)
                lat = await drive_ws(url, kind, args.rate, args.seconds, args.connections)
                cpu_per[kind].append((cpu(proc) - before) / len(lat) * 1e6)
                results[kind] += lat
            results["direct"] += await drive_http(
                f"http://127.0.0.1:{backend_port}/submit", args.rate, args.seconds, args.connections
            )
        n = {k: len(v) for k, v in results.items()}
        achieved = n["order.submit"] / (args.seconds * args.rounds)
        print(
            f"proxy latency: {args.rounds} rounds x {args.seconds:g} s per kind, "
            f"{args.connections} connections, target {args.rate:g}/s "
            f"(order.submit achieved {achieved:.0f}/s); shared machine, 2 cores"
        )
        print(
            f"{'kind':<14}{'n':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'server CPU us/req':>20}"
        )
        for kind, lat in results.items():
            per = f"{statistics.median(cpu_per[kind]):.0f}" if kind in cpu_per else "-"
            print(
                f"{kind:<14}{len(lat):>8}{percentile(lat, 0.5):>9.2f}{percentile(lat, 0.9):>9.2f}"
                f"{percentile(lat, 0.99):>9.2f}{per:>20}"
            )
        added50 = percentile(results["order.submit"], 0.5) - percentile(results["echo"], 0.5)
        added99 = percentile(results["order.submit"], 0.99) - percentile(results["echo"], 0.99)
        added_cpu = statistics.median(cpu_per["order.submit"]) - statistics.median(cpu_per["echo"])
        print(
            f"the proxy adds: p50 {added50:+.2f} ms, p99 {added99:+.2f} ms (order.submit less "
            f"echo; the backend's own round trip, 'direct', is part of it), "
            f"server CPU {added_cpu:+.0f} us per request"
        )
    finally:
        for p in (server, backend):
            p.terminate()
        for p in (server, backend):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    asyncio.run(main())
