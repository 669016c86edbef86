"""Cross-node fan-out: broadcast deliveries per second with one miaws node and with two.

Starts a private redis-server and ``miaws serve`` nodes on free 127.0.0.1 ports, connects
RECEIVERS clients (split evenly over the nodes) and one sender on the first node, and times
MESSAGES broadcasts until every receiver has every one of them.  The sender keeps at most
WINDOW messages in flight (ahead of the slowest receiver), so the figure is a steady rate,
not a buffer fill.  Everything is bounded (counts and a time limit) and stays on 127.0.0.1.

    .venv/bin/python bench/fanout_nodes.py [--receivers 200] [--messages 1000] [--repeat 3]

With ``--spread`` it measures routing instead: ``--nodes`` receiving nodes with ``--rooms`` rooms
spread over them (room i's members all on node i mod N), one more node sending round robin
to every room, for each of ``--partitions`` (``1`` is the old design where every node reads
every room): per receiving node, the cross-node messages it read against those of its own
rooms, and its CPU per message read.

    .venv/bin/python bench/fanout_nodes.py --spread [--nodes 3] [--rooms 30] [--messages 3000]

Setups: ``1 node, memory`` (the default hub), ``1 node, redis`` (same, publishing to Redis
too) and ``2 nodes, redis`` (half of the receivers on each node).  The client side runs in
this one process, so on a small machine it shares the CPU with the servers: compare the
rows with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tornado.websocket import websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import ServerProcess  # noqa: E402  (the test suite's process helpers)
from ingest import cpu_ns  # noqa: E402  (every thread's CPU, in ns: finer than /proc/pid/stat)
from redis_server import RedisServer  # noqa: E402

TIME_LIMIT = 120.0  # seconds for one run, whatever the arguments
WINDOW = 50  # broadcasts the sender may have ahead of the slowest receiver


@dataclass
class Result:
    setup: str
    nodes: int
    receivers: int
    messages: int
    seconds: float  # wall clock, sender's first message to the last delivery
    busiest_cpu: float  # CPU seconds (user + system) of the busiest node meanwhile

    @property
    def deliveries(self) -> int:
        return self.receivers * self.messages

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    @property
    def capacity(self) -> float:
        """Deliveries per CPU-second of the busiest node: the rate the cluster reaches when
        each node has a core of its own (the load generator is not counted)."""
        return self.deliveries / self.busiest_cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Receiver(asyncio.Protocol):
    """A raw WebSocket client that only counts the text frames it gets (welcome excluded).

    It walks the frame headers and never decodes a payload, so the client side costs far
    less than the servers it measures.
    """

    def __init__(self) -> None:
        self.count = -1  # the first text frame is the welcome
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    async def connect(self, url: str) -> None:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, parts.hostname, parts.port)
        assert self.transport is not None
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {bytes(buf[:end])!r}")
            del buf[: end + 4]
            self.upgraded = True
        i, n = 0, len(buf)
        while n - i >= 2:
            length, head = buf[i + 1] & 0x7F, 2
            if length == 126:
                if n - i < 4:
                    break
                length, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif length == 127:
                if n - i < 10:
                    break
                length, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if n - i < head + length:
                break
            if buf[i] & 0x0F == 0x1:
                self.count += 1
            i += head + length
        del buf[:i]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def node_config(redis: RedisServer | None) -> str:
    text = "server:\n  host: 127.0.0.1\nlogging:\n  level: warning\n"
    if redis is not None:
        text += f"broker:\n  type: redis\n  url: {redis.url}\n"
    return text


async def run_once(
    urls: list[str], pids: list[int], receivers: int, messages: int
) -> tuple[float, float]:
    """(seconds until every receiver has every message, CPU seconds of the busiest node)."""
    peers = [Receiver() for _ in range(receivers)]
    await asyncio.gather(*(p.connect(urls[i % len(urls)]) for i, p in enumerate(peers)))
    # The sender is sent its own broadcasts too: a callback that drops them keeps up.
    sender = await websocket_connect(urls[0], on_message_callback=lambda _: None)
    await wait_for(lambda: all(p.count == 0 for p in peers))
    cpu_before = [cpu_seconds(pid) for pid in pids]
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
    busiest = max(cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True))
    assert all(p.count == messages for p in peers), "a receiver got a message twice"
    sender.close()
    for p in peers:
        p.close()
    await asyncio.sleep(0.2)
    return seconds, busiest


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached within the time limit")
        await asyncio.sleep(0.001)


def run_setup(
    name: str, nodes: int, redis: RedisServer | None, args: argparse.Namespace, tmp: Path
) -> Result:
    servers = [ServerProcess(node_config(redis), tmp, {"REDIS_URL": ""}) for _ in range(nodes)]
    try:
        for s in servers:
            s.wait_ready()
        urls, pids = [s.url for s in servers], [s.proc.pid for s in servers]
        runs = [
            asyncio.run(run_once(urls, pids, args.receivers, args.messages))
            for _ in range(args.repeat)
        ]
    finally:
        for s in servers:
            s.stop()
    seconds = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return Result(name, nodes, args.receivers, args.messages, seconds, cpu)


# ---------------------------------------------------------------- rooms spread over nodes
def metrics(http: str) -> dict[str, float]:
    """A node's unlabelled /metrics values."""
    with urllib.request.urlopen(http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


@dataclass
class NodeFigures:
    rooms: int  # rooms whose members are on this node
    own: int  # cross-node messages sent to those rooms
    received: int  # cross-node messages the node read from Redis
    skipped: int  # of those, for rooms it has no member of
    cpu: float  # CPU seconds meanwhile

    @property
    def per_message(self) -> float:
        """CPU µs per cross-node message received (delivery to its members included)."""
        return self.cpu * 1e6 / max(self.received, 1)

    @property
    def per_own(self) -> float:
        """CPU µs per message of its own rooms (what the node is there for)."""
        return self.cpu * 1e6 / max(self.own, 1)


async def spread_once(
    sender_url: str, nodes: list[ServerProcess], rooms: int, members: int, messages: int
) -> list[NodeFigures]:
    """Rooms 0..rooms-1, room i's members on nodes[i % len(nodes)]; one sender on another
    node, a member of every room, broadcasts messages round robin over the rooms."""
    counts = [0] * rooms
    clients = []

    def counter(room: int) -> Callable[[str | bytes | None], None]:
        def on_message(message: str | bytes | None) -> None:
            if message is not None:
                counts[room] += 1

        return on_message

    for i in range(rooms):
        node = nodes[i % len(nodes)]
        for _ in range(members):
            c = await websocket_connect(node.url, on_message_callback=counter(i))
            c.write_message(json.dumps({"type": "join-room", "room": f"room-{i}"}))
            clients.append(c)
    sender = await websocket_connect(sender_url, on_message_callback=lambda _: None)
    for i in range(rooms):
        await sender.write_message(json.dumps({"type": "join-room", "room": f"room-{i}"}))
    # welcome + room-joined each
    await wait_for(lambda: all(c >= 2 * members for c in counts))
    base = [c for c in counts]
    before = [metrics(n.http) for n in nodes]
    cpu_before = [cpu_ns(n.proc.pid) for n in nodes]
    deadline = time.monotonic() + TIME_LIMIT
    for k in range(messages):
        while k * members - (sum(counts) - sum(base)) >= WINDOW * members:
            if time.monotonic() > deadline:
                raise TimeoutError("the receivers fell behind beyond the time limit")
            await asyncio.sleep(0.0005)
        room = k % rooms
        await sender.write_message(
            json.dumps({"type": "broadcast", "room": f"room-{room}", "message": k})
        )
    want = [b + members * len(range(i, messages, rooms)) for i, b in enumerate(base)]
    await wait_for(lambda: all(c >= w for c, w in zip(counts, want, strict=True)), 60)
    await asyncio.sleep(0.3)  # the last messages' CPU
    figures = []
    for j, node in enumerate(nodes):
        after = metrics(node.http)
        mine = [i for i in range(rooms) if i % len(nodes) == j]
        figures.append(
            NodeFigures(
                rooms=len(mine),
                own=sum(len(range(i, messages, rooms)) for i in mine),
                received=int(
                    after["miaws_broker_messages_received_total"]
                    - before[j]["miaws_broker_messages_received_total"]
                ),
                skipped=int(
                    after.get("miaws_broker_messages_skipped_total", 0)
                    - before[j].get("miaws_broker_messages_skipped_total", 0)
                ),
                cpu=(cpu_ns(node.proc.pid) - cpu_before[j]) / 1e9,
            )
        )
    sender.close()
    for c in clients:
        c.close()
    await asyncio.sleep(0.2)
    return figures


def spread(args: argparse.Namespace) -> None:
    """--spread: N receiving nodes with the rooms spread over them, per partition count."""
    print(
        f"{os.cpu_count()} CPUs; {args.nodes} receiving nodes + 1 sending node; "
        f"{args.rooms} rooms x {args.members} members; {args.messages} room broadcasts "
        f"round robin; median of {args.repeat} runs"
    )
    print(
        f"{'partitions':>10} {'node':>5} {'rooms':>6} {'own msgs':>9} {'received':>9} "
        f"{'skipped':>8} {'received/own':>13} {'CPU s':>7} {'µs/received':>12} {'µs/own msg':>11}"
    )
    with tempfile.TemporaryDirectory(prefix="miaws-bench-") as d:
        tmp = Path(d)
        for partitions in args.partitions:
            redis = RedisServer(tmp)
            redis.start()
            config = (
                "server:\n  host: 127.0.0.1\nlogging:\n  level: warning\n"
                f"limits:\n  max_rooms_per_client: 0\n"
                f"broker:\n  type: redis\n  url: {redis.url}\n  partitions: {partitions}\n"
            )
            servers = [ServerProcess(config, tmp, {"REDIS_URL": ""}) for _ in range(args.nodes + 1)]
            try:
                for server in servers:
                    server.wait_ready()
                runs = [
                    asyncio.run(
                        spread_once(
                            servers[0].url, servers[1:], args.rooms, args.members, args.messages
                        )
                    )
                    for _ in range(args.repeat)
                ]
            finally:
                for server in servers:
                    server.stop()
                redis.stop()
            for j in range(args.nodes):
                figs = [run[j] for run in runs]
                f = figs[0]
                received = statistics.median(x.received for x in figs)
                skipped = statistics.median(x.skipped for x in figs)
                cpu = statistics.median(x.cpu for x in figs)
                per = statistics.median(x.per_message for x in figs)
                own = statistics.median(x.per_own for x in figs)
                print(
                    f"{partitions:>10} {j + 1:>5} {f.rooms:>6} {f.own:>9} {received:>9.0f} "
                    f"{skipped:>8.0f} {received / max(f.own, 1):>13.2f} {cpu:>7.2f} "
                    f"{per:>12.1f} {own:>11.1f}"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--receivers", type=int, default=200, choices=range(2, 2001), metavar="N")
    p.add_argument("--messages", type=int, default=1000, choices=range(1, 100_001), metavar="M")
    p.add_argument("--repeat", type=int, default=3, choices=range(1, 11), metavar="R")
    p.add_argument("--spread", action="store_true", help="rooms spread over --nodes nodes")
    p.add_argument("--nodes", type=int, default=3, choices=range(1, 9), metavar="N")
    p.add_argument("--rooms", type=int, default=30, choices=range(1, 1001), metavar="R")
    p.add_argument("--members", type=int, default=2, choices=range(1, 51), metavar="K")
    p.add_argument(
        "--partitions",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1024, 1],
        help="comma-separated broker.partitions to compare (1: every node reads every room)",
    )
    args = p.parse_args()
    if args.spread:
        spread(args)
        return
    with tempfile.TemporaryDirectory(prefix="miaws-bench-") as d:
        tmp = Path(d)
        redis = RedisServer(tmp)
        redis.start()
        try:
            results = [
                run_setup("1 node, memory", 1, None, args, tmp),
                run_setup("1 node, redis", 1, redis, args, tmp),
                run_setup("2 nodes, redis", 2, redis, args, tmp),
            ]
        finally:
            redis.stop()
    print(
        f"{os.cpu_count()} CPUs; {args.receivers} receivers; {args.messages} broadcasts; "
        f"median of {args.repeat} runs"
    )
    print(
        f"{'setup':<16} {'seconds':>8} {'deliveries/s':>13} {'ratio':>6}   "
        f"{'busiest node CPU s':>18} {'deliveries/CPU-s':>17} {'ratio':>6}"
    )
    base = results[0]
    for r in results:
        print(
            f"{r.setup:<16} {r.seconds:>8.2f} {r.rate:>13,.0f} {r.rate / base.rate:>6.2f}   "
            f"{r.busiest_cpu:>18.2f} {r.capacity:>17,.0f} {r.capacity / base.capacity:>6.2f}"
        )


if __name__ == "__main__":
    main()
