"""Ingest: CPU time one node spends per cross-node message it receives from Redis.

Starts a private redis-server and one ``miaws serve`` node (``broker.type: redis``) on free
127.0.0.1 ports, then publishes MESSAGES cross-node messages from a plain Redis client, as
another node would, and reads the node process's CPU time (all its threads, from
``/proc/<pid>/task/*/schedstat``, nanoseconds) before and after.  The node's idle CPU over
the same wall time is subtracted.  Two cases:

- ``namespace``: messages to a namespace with no client on the node (``/nobody``), on the
  broadcast channel every node reads: the node reads, parses and drops each one: the pure
  cost of ingest;
- ``rooms sharing a partition``: messages to 64 rooms this node has no member of, all in the
  partition of a room it has one member in (held by this script): read and skipped;
- ``rooms of other partitions``: messages to 64 rooms of partitions this node has no member
  in: with interest-based routing (#17) Redis does not send them to it at all.

    .venv/bin/python bench/ingest.py [--messages 50000] [--repeat 3]

Everything is bounded (counts and a time limit) and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import ServerProcess  # noqa: E402  (the test suite's process helpers)
from redis_server import RedisServer  # noqa: E402

from miaws.broker.redis import wire_message  # noqa: E402
from miaws.broker.redis_keys import RedisKeys  # noqa: E402

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


def hold_member(url: str, room: str) -> socket.socket:
    """A raw WebSocket client of url, a member of room (one masked text frame)."""
    parts = urlsplit(url)
    s = socket.create_connection((parts.hostname, parts.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    payload = json.dumps({"type": "join-room", "room": room}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    time.sleep(0.5)  # joined and subscribed
    return s


def measure(
    node: ServerProcess, r: redis.Redis, messages: list[tuple[str, bytes]], expect: bool = True
) -> tuple[float, int]:
    """(CPU µs per message the node spent on messages, idle CPU subtracted; the messages it
    read).  expect: wait until it has read them all (else a fixed second)."""
    pid = node.proc.pid
    # idle baseline
    t0, c0 = time.monotonic(), cpu_ns(pid)
    time.sleep(0.5)
    idle_rate = (cpu_ns(pid) - c0) / (time.monotonic() - t0)
    before = received(node)
    t0, c0 = time.monotonic(), cpu_ns(pid)
    publish(r, messages)
    deadline = time.monotonic() + TIME_LIMIT
    if before >= 0 and expect:  # wait until the node has read them all
        while received(node) < before + len(messages) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif not expect:
        time.sleep(1.0)
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
    return spent / 1000 / len(messages), received(node) - before


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
            "heartbeat:\n  interval: 0\n"
        )
        node = ServerProcess(config, work, env={"REDIS_URL": ""})
        try:
            node.wait_ready()
            time.sleep(1.0)  # the subscription
            r = redis.Redis.from_url(server.url)
            text = "x" * args.size
            payload = json.dumps({"type": "message", "message": text}).encode()
            keys = RedisKeys()
            anchor = "anchor"
            member = hold_member(node.url, anchor)
            p = keys.partition(anchor)
            names = (f"room-{i}" for i in itertools.count())
            shared = list(itertools.islice((n for n in names if keys.partition(n) == p), 64))
            names = (f"room-{i}" for i in itertools.count())
            others = list(itertools.islice((n for n in names if keys.partition(n) != p), 64))
            cases = {
                "namespace, no client": (
                    [wire_message("bench-sender", None, "/nobody", payload)],
                    True,
                ),
                "rooms sharing a partition": (
                    [wire_message("bench-sender", room, None, payload) for room in shared],
                    True,
                ),
                "rooms of other partitions": (
                    [wire_message("bench-sender", room, None, payload) for room in others],
                    False,
                ),
            }
            print(f"{args.messages} messages of {len(payload)} bytes, {args.repeat} runs each")
            print(f"{'case':<28} {'read':>8} {'CPU µs/message (median)':>24} {'runs':>24}")
            for name, (templates, expect) in cases.items():
                batch = [templates[i % len(templates)] for i in range(args.messages)]
                runs, reads = [], []
                for _ in range(args.repeat):
                    cpu, read = measure(node, r, batch, expect)
                    runs.append(cpu)
                    reads.append(read)
                figures = " ".join(f"{x:.2f}" for x in runs)
                print(
                    f"{name:<28} {statistics.median(reads):>8.0f} "
                    f"{statistics.median(runs):>24.2f} {figures:>24}"
                )
            member.close()
        finally:
            node.stop()
            server.stop()


if __name__ == "__main__":
    main()
