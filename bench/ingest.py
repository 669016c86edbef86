"""Ingest: CPU time one node spends per cross-node message it receives from Redis.

Starts a private redis-server and one ``miaws serve`` node (``broker.type: redis``) on free
127.0.0.1 ports, then publishes MESSAGES cross-node messages from a plain Redis client, as
another node would, and reads the node process's CPU time (all its threads, from
``/proc/<pid>/task/*/schedstat``, nanoseconds) before and after.  The node's idle CPU over
the same wall time is subtracted.  Two cases:

- ``namespace``: messages to a namespace with no client on the node (``/nobody``): the node
  reads, parses and drops each one: the pure cost of ingest;
- ``rooms without a local member``: messages to 64 rooms this node has no member of; while
  every node receives every room's traffic (one channel) it costs the same as the first.

    .venv/bin/python bench/ingest.py [--messages 50000] [--repeat 3]

Everything is bounded (counts and a time limit) and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import ServerProcess  # noqa: E402  (the test suite's process helpers)
from redis_server import RedisServer  # noqa: E402

from miaws.broker.redis import wire_message  # noqa: E402

TIME_LIMIT = 60.0  # seconds for one case, whatever the arguments
BATCH = 1000  # PUBLISH commands per pipeline


def cpu_ns(pid: int) -> int:
    """On-CPU time of every thread of a process so far, in nanoseconds (Linux)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that just ended
    return total


def publish(r: redis.Redis, messages: list[tuple[str, bytes]]) -> None:
    for i in range(0, len(messages), BATCH):
        pipe = r.pipeline(transaction=False)
        for channel, data in messages[i : i + BATCH]:
            pipe.publish(channel, data)
        pipe.execute()


def received(node: ServerProcess) -> int:
    """The node's miaws_broker_messages_received_total (-1 before that metric existed)."""
    import urllib.request

    with urllib.request.urlopen(node.http + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("miaws_broker_messages_received_total "):
                return int(float(line.split()[1]))
    return -1


def measure(node: ServerProcess, r: redis.Redis, messages: list[tuple[str, bytes]]) -> float:
    """CPU µs per message the node spent on messages (idle CPU subtracted)."""
    pid = node.proc.pid
    # idle baseline
    t0, c0 = time.monotonic(), cpu_ns(pid)
    time.sleep(0.5)
    idle_rate = (cpu_ns(pid) - c0) / (time.monotonic() - t0)
    before = received(node)
    t0, c0 = time.monotonic(), cpu_ns(pid)
    publish(r, messages)
    deadline = time.monotonic() + TIME_LIMIT
    if before >= 0:  # wait until the node has read them all
        while received(node) < before + len(messages) and time.monotonic() < deadline:
            time.sleep(0.05)
    # and until its CPU settles (the metric is read before the last delivery ends)
    last = cpu_ns(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_ns(pid)
        if now - last < idle_rate * 0.2 + 2_000_000:
            break
        last = now
    elapsed = time.monotonic() - t0
    spent = cpu_ns(pid) - c0 - idle_rate * elapsed
    return spent / 1000 / len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=60, help="bytes of text in each message")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = RedisServer(work)
        server.start()
        config = (
            "server:\n  host: 127.0.0.1\n"
            f"broker:\n  type: redis\n  url: {server.url}\n  heartbeat: 5\n"
        )
        node = ServerProcess(config, work, env={"REDIS_URL": ""})
        try:
            node.wait_ready()
            time.sleep(1.0)  # the subscription
            r = redis.Redis.from_url(server.url)
            text = "x" * args.size
            payload = json.dumps({"type": "message", "message": text}).encode()
            cases = {
                "namespace, no client": [wire_message("bench-sender", None, "/nobody", payload)],
                "rooms without a local member": [
                    wire_message("bench-sender", f"other-{i}", None, payload) for i in range(64)
                ],
            }
            print(f"{args.messages} messages of {len(payload)} bytes, {args.repeat} runs each")
            print(f"{'case':<32} {'CPU µs/message (median)':>24} {'runs':>24}")
            for name, templates in cases.items():
                batch = [templates[i % len(templates)] for i in range(args.messages)]
                runs = []
                for _ in range(args.repeat):
                    runs.append(measure(node, r, batch))
                figures = " ".join(f"{x:.2f}" for x in runs)
                print(f"{name:<32} {statistics.median(runs):>24.2f} {figures:>24}")
        finally:
            node.stop()
            server.stop()


if __name__ == "__main__":
    main()
