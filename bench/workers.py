"""Workers per host: the CPU time each worker of ``miaws serve --workers N`` spends per message
it delivers, from which per-host scaling follows.

Starts a private redis-server and ``miaws serve --workers N`` (N = 1, then each of
``--workers``) on a free 127.0.0.1 port, connects RECEIVERS clients and one sender to that
one port (the kernel spreads them over the workers, SO_REUSEPORT) and sends MESSAGES
broadcasts, keeping at most WINDOW ahead of the slowest receiver.  For each worker it prints
its share of the receivers, its CPU seconds (user + system, /proc) over the run, and the CPU
time per message it delivered: what one core costs per delivery, whatever the machine's
other load, so the table holds on a busy machine where the wall-clock rate does not.

    .venv/bin/python bench/workers.py [--workers 2] [--receivers 200] [--messages 2000]

Per-host capacity with W workers on W free cores: about W / (CPU per delivery) deliveries
per second, less what each worker spends reading the other workers' messages from Redis (one
cross-node message per broadcast and worker, the ``ingest`` column).  The client side runs
in this process and shares the machine's cores with the workers: read the CPU columns, not
the seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tornado.websocket import websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout_nodes import WINDOW, Receiver, cpu_seconds, wait_for  # noqa: E402
from helpers import ServerProcess  # noqa: E402
from redis_server import RedisServer  # noqa: E402

TIME_LIMIT = 120.0  # seconds for one run, whatever the arguments


@dataclass
class WorkerFigures:
    index: int
    pid: int
    connections: int  # receivers (and the sender) on this worker
    cpu: float  # seconds over the run
    ingest: int  # cross-node messages it read from Redis during the run
    sender: bool  # the sender is connected to this worker


def worker_pids(log: str, server: ServerProcess) -> dict[int, int]:
    """Worker index -> pid, from the workers' "listening" lines (one process: itself)."""
    found = re.findall(r"worker (\d+) of \d+ \(pid (\d+)\)", log)
    if not found and "miaws listening" in log:
        return {1: server.proc.pid}
    return {int(i): int(p) for i, p in found}


def worker_nodes(log: str) -> dict[str, int]:
    """Node id -> worker index, from the workers' broker lines."""
    pattern = r"broker(?:\[w(\d+)\])?: redis broker connected.*node (\w+)"
    return {n: int(i or 1) for i, n in re.findall(pattern, log)}


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, object] = json.load(response)
        return body


@dataclass
class NodeMetrics:
    ingest: int  # miaws_broker_messages_received_total
    messages_in: int  # client messages received (the sender's worker has them)


def node_metrics(base: str) -> dict[str, NodeMetrics]:
    """Node id -> its counters, over enough requests to have asked every worker: each TCP
    connection reaches one worker, so /health (which names it) and /metrics are asked on
    one kept-alive connection."""
    import http.client

    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    seen: dict[str, NodeMetrics] = {}
    for _ in range(40):
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", "/health")
            node = json.loads(conn.getresponse().read())["cluster"]["node"]
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        ingest = re.search(r"^miaws_broker_messages_received_total (\d+)", text, re.M)
        messages_in = re.findall(r"^miaws_messages_in_total\{[^}]*\} (\S+)", text, re.M)
        seen[str(node)] = NodeMetrics(
            int(ingest.group(1)) if ingest else 0, int(sum(float(v) for v in messages_in))
        )
    return seen


async def run(
    server: ServerProcess, pids: dict[int, int], receivers: int, messages: int
) -> tuple[float, dict[str, int], dict[int, float]]:
    """(seconds until every receiver has every broadcast, node id -> its connections,
    worker index -> CPU seconds over the run)."""
    peers = [Receiver() for _ in range(receivers)]
    await asyncio.gather(*(p.connect(server.url) for p in peers))
    sender = await websocket_connect(server.url, on_message_callback=lambda _: None)
    await wait_for(lambda: all(p.count == 0 for p in peers))
    await asyncio.sleep(1.5)  # every worker has written its counts (heartbeat 0.5 s)
    health = get_json(f"{server.http}/health")
    connections = {
        node: int(c["connections"])
        for node, c in health["cluster"]["perNode"].items()  # type: ignore[index]
    }
    cpu_before = {i: cpu_seconds(pid) for i, pid in pids.items()}
    started = time.perf_counter()
    deadline = time.monotonic() + TIME_LIMIT
    for i in range(messages):
        while i - min(p.count for p in peers) >= WINDOW:
            if time.monotonic() > deadline:
                raise TimeoutError("the receivers fell behind beyond the time limit")
            await asyncio.sleep(0.0005)
        await sender.write_message(json.dumps({"type": "broadcast", "message": i}))
    await wait_for(lambda: all(p.count >= messages for p in peers), deadline - time.monotonic())
    seconds = time.perf_counter() - started
    cpu = {i: cpu_seconds(pid) - cpu_before[i] for i, pid in pids.items()}
    assert all(p.count == messages for p in peers), "a receiver got a message twice"
    sender.close()
    for p in peers:
        p.close()
    await asyncio.sleep(0.2)
    return seconds, connections, cpu


def measure(
    redis: RedisServer, tmp: Path, count: int, receivers: int, messages: int
) -> tuple[float, list[WorkerFigures]]:
    config = (
        "server:\n  host: 127.0.0.1\n"
        f"broker:\n  type: redis\n  url: {redis.url}\n  heartbeat: 0.5\n"
    )
    server = ServerProcess(config, tmp, {"REDIS_URL": ""}, extra_args=["--workers", str(count)])
    try:
        server.wait_ready()
        deadline = time.monotonic() + 30
        while True:
            log = server.output()
            if min(len(worker_pids(log, server)), len(worker_nodes(log))) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not start:\n{server.output()}")
            time.sleep(0.1)
        pids = worker_pids(server.output(), server)
        nodes = worker_nodes(server.output())
        before = node_metrics(server.http)
        seconds, connections, cpu = asyncio.run(run(server, pids, receivers, messages))
        after = node_metrics(server.http)
        figures = [
            WorkerFigures(
                index,
                pids[index],
                connections.get(node, 0),
                cpu[index],
                after[node].ingest - before[node].ingest,
                after[node].messages_in - before[node].messages_in >= messages,
            )
            for node, index in sorted(nodes.items(), key=lambda item: item[1])
        ]
        return seconds, figures
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(20)
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, choices=range(2, 17), metavar="N")
    p.add_argument("--receivers", type=int, default=200, choices=range(2, 2001), metavar="R")
    p.add_argument("--messages", type=int, default=2000, choices=range(1, 100_001), metavar="M")
    args = p.parse_args()
    print(
        f"{os.cpu_count()} CPUs (shared with the load generator and any other load); "
        f"{args.receivers} receivers + 1 sender on one port; {args.messages} broadcasts"
    )
    print("worker*: the sender's worker (the others get its broadcasts through Redis)")
    print(
        f"{'workers':>7} {'worker':>6} {'conns':>6} {'deliveries':>10} {'CPU s':>6} "
        f"{'µs/delivery':>11} {'ingest':>7}   {'host deliveries/CPU-s':>21} {'seconds':>7}"
    )
    with tempfile.TemporaryDirectory(prefix="miaws-bench-") as d:
        tmp = Path(d)
        redis = RedisServer(tmp)
        redis.start()
        try:
            for count in (1, args.workers):
                seconds, figures = measure(redis, tmp, count, args.receivers, args.messages)
                total_cpu = sum(f.cpu for f in figures)
                deliveries = (args.receivers + 1) * args.messages  # the sender gets its own
                for f in figures:
                    delivered = f.connections * args.messages
                    print(
                        f"{count:>7} {f.index:>5}{'*' if f.sender else ' '} {f.connections:>6} "
                        f"{delivered:>10,} "
                        f"{f.cpu:>6.2f} {f.cpu / delivered * 1e6:>11.2f} {f.ingest:>7,}   "
                        f"{deliveries / total_cpu:>21,.0f} {seconds:>7.2f}"
                    )
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
