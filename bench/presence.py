"""What presence costs: server CPU per join + leave, per broadcast and per presence request.

Starts ``miaws serve`` (memory broker, or ``--redis`` for a private redis-server) on a free
127.0.0.1 port with these rooms:

- ``plain:*``: no rule (presence not tracked);
- ``seen:*``: ``presence: true`` (tracked: the bookkeeping alone);
- ``team:*``: ``presence: true, join_leave: true`` (tracked; every join and leave of the
  measuring client is a member-joined / member-left to the room's WATCHERS members);

and, with ``--webhooks``, a webhook for room and member events to a receiver in this process
(then every room is tracked and every join/leave also becomes a signed POST).
``rooms.leave_delay`` is 0, so each leave is confirmed in the measured window: the worst
case (with a delay, a member that comes back costs less: no event at all).

Each figure is the server process's CPU time (user + system, /proc) over a batch divided by
the batch's operations, batches of the setups interleaved (``--repeat`` rounds) so that noise
from other processes falls on all of them alike; the median of the rounds is printed.  The
client runs in this process, sequentially (one request in flight), so these are CPU costs,
not throughput.

    .venv/bin/python bench/presence.py [--pairs 500] [--messages 1000] [--repeat 5]
                                       [--webhooks] [--redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import tornado.httpserver
import tornado.web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import ServerProcess, free_port  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from miaws.cli.check import Peer  # noqa: E402

WATCHERS = 20  # members already in each measured room
PRESENCE_MEMBERS = 100  # members of the room whose presence is asked
TIME_LIMIT = 300.0  # seconds for the whole run


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sink(tornado.web.RequestHandler):
    posts = 0

    def post(self) -> None:
        Sink.posts += 1
        self.finish("ok")


async def until(peer: Peer, kind: str) -> None:
    while (await peer.recv())["type"] != kind:
        pass


class Drain:
    """Members that read (and drop) whatever they get, so the server never queues."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, peer: Peer) -> None:
        async def read() -> None:
            while await peer.conn.read_message() is not None:
                pass

        self.tasks.append(asyncio.create_task(read()))


async def join_all(url: str, room: str, n: int, drain: Drain) -> list[Peer]:
    peers = []
    for _ in range(n):
        peer = await Peer.connect(url)
        await peer.send({"type": "join-room", "room": room})
        await until(peer, "room-joined")
        drain.add(peer)
        peers.append(peer)
    return peers


async def measure(pid: int, ops: int, batch: Callable[[], Awaitable[None]]) -> float:
    """Server CPU microseconds per operation over one batch."""
    await asyncio.sleep(0.05)  # let the previous batch's tail (timers, POSTs) settle
    before = cpu_seconds(pid)
    await batch()
    await asyncio.sleep(0.05)
    return (cpu_seconds(pid) - before) / ops * 1e6


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="miaws-bench-presence-"))
    redis = None
    broker: dict[str, object] = {"type": "memory"}
    if args.redis:
        redis = RedisServer(tmp)
        redis.start()
        broker = {"type": "redis", "url": redis.url, "heartbeat": 1}
    sink_port = free_port()
    tornado.httpserver.HTTPServer(tornado.web.Application([("/hook", Sink)])).listen(
        sink_port, "127.0.0.1"
    )
    config: dict[str, object] = {
        "server": {"host": "127.0.0.1"},
        "logging": {"level": "warning"},
        "broker": broker,
        "rooms": {
            "leave_delay": 0,
            "rules": [
                {"match": "team:*", "presence": True, "join_leave": True},
                {"match": "seen:*", "presence": True},
            ],
        },
    }
    if args.webhooks:
        config["webhooks"] = [{"url": f"http://127.0.0.1:{sink_port}/hook", "secret": "s"}]
    server = ServerProcess(json.dumps(config), tmp, env={"REDIS_URL": ""})
    try:
        server.wait_ready()
        pid = server.proc.pid
        drain = Drain()
        for room in ("plain:j", "seen:j", "team:j", "plain:m", "team:m"):
            await join_all(server.url, room, WATCHERS, drain)
        await join_all(server.url, "team:p", PRESENCE_MEMBERS - 1, drain)
        actor = await Peer.connect(server.url)
        for room in ("plain:m", "team:m", "team:p"):
            await actor.send({"type": "join-room", "room": room})
            await until(actor, "room-joined")

        def pairs(room: str) -> Callable[[], Awaitable[None]]:
            async def batch() -> None:
                for _ in range(args.pairs):
                    await actor.send({"type": "join-room", "room": room})
                    await until(actor, "room-joined")
                    await actor.send({"type": "leave-room", "room": room})
                    await until(actor, "room-left")

            return batch

        def broadcasts(room: str) -> Callable[[], Awaitable[None]]:
            async def batch() -> None:
                for i in range(args.messages):
                    await actor.send({"type": "broadcast", "room": room, "message": i})
                    await until(actor, "broadcast")

            return batch

        async def presences() -> None:
            for _ in range(args.messages):
                await actor.send({"type": "presence", "room": "team:p"})
                await until(actor, "presence")

        async def pings() -> None:
            for _ in range(args.messages):
                await actor.send({"type": "ping"})
                await until(actor, "pong")

        rows: dict[str, list[float]] = {}
        plan = [
            ("join + leave, plain:* (no rule)", args.pairs, pairs("plain:j")),
            ("join + leave, seen:* (presence)", args.pairs, pairs("seen:j")),
            ("join + leave, team:* (presence, join_leave)", args.pairs, pairs("team:j")),
            (f"broadcast to {WATCHERS + 1}, plain:*", args.messages, broadcasts("plain:m")),
            (f"broadcast to {WATCHERS + 1}, team:*", args.messages, broadcasts("team:m")),
            ("ping (the request floor)", args.messages, pings),
            (f"presence of {PRESENCE_MEMBERS} members", args.messages, presences),
        ]
        deadline = time.monotonic() + TIME_LIMIT
        for _ in range(args.repeat):
            for name, ops, batch in plan:
                rows.setdefault(name, []).append(await measure(pid, ops, batch))
            if time.monotonic() > deadline:
                break
        setup = ("redis" if args.redis else "memory") + (", webhooks" if args.webhooks else "")
        print(f"server CPU µs per operation ({setup}; median of {len(rows[plan[0][0]])} rounds)")
        for name, values in rows.items():
            print(f"  {name:48s} {statistics.median(values):8.1f}")
        if args.webhooks:
            print(f"  (webhook POSTs received: {Sink.posts})")
        for task in drain.tasks:
            task.cancel()
    finally:
        server.stop()
        if redis is not None:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500, help="joins + leaves per batch")
    parser.add_argument("--messages", type=int, default=1000, help="requests per batch")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--webhooks", action="store_true", help="with a webhook for everything")
    parser.add_argument("--redis", action="store_true", help="redis broker (private server)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
