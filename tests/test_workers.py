"""``miaws serve --workers N``: N processes on one port (SO_REUSEPORT) on a real redis-server,
each a node; the supervisor passes SIGTERM and SIGHUP to all of them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, eventually
from redis_server import RedisServer
from test_scaling import get_json, wait_json

from miaws.cli.check import Peer, expect_type

HEARTBEAT = 0.5


def redis_config(redis: RedisServer, extra: str = "") -> str:
    return (
        "server:\n  host: 127.0.0.1\n"
        f"broker:\n  type: redis\n  url: {redis.url}\n  heartbeat: {HEARTBEAT}\n{extra}"
    )


def children(pid: int) -> set[int]:
    """The pids whose parent is pid (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not alive
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


class Workers:
    """A ``miaws serve --workers N`` supervisor; stopped at teardown (SIGTERM, then kill of
    it and its workers)."""

    def __init__(self, tmp_path: Path, config: str, count: int = 2) -> None:
        self.server = ServerProcess(
            config, tmp_path, env={"REDIS_URL": ""}, extra_args=["--workers", str(count)]
        )
        self.count = count
        self.pid = self.server.proc.pid
        self.http = self.server.http
        self.url = self.server.url
        self.peers: list[Peer] = []  # closed at teardown

    async def ready(self) -> set[str]:
        """Wait until every worker listens and is a node of the cluster view; their node
        ids."""
        self.server.wait_ready()
        await eventually(
            lambda: self.server.output().count("miaws listening") >= self.count, timeout=20
        )
        body = await wait_json(
            f"{self.http}/health",
            lambda b: b.get("cluster", {}).get("nodes") == self.count,
            timeout=20,
        )
        return set(body["cluster"]["perNode"])

    def stop(self) -> None:
        for peer in self.peers:
            peer.close()
        workers = children(self.pid)
        if self.server.proc.poll() is None:
            self.server.proc.send_signal(signal.SIGTERM)
            try:
                self.server.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.server.stop()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Workers]]:
    started: list[Workers] = []
    yield started
    for w in started:
        w.stop()


async def peers_on_every_node(w: Workers, room: str, limit: int = 40) -> list[Peer]:
    """Members of room, connected one by one until the cluster view shows members on every
    worker (the kernel picks the worker of each connection)."""
    peers: list[Peer] = []
    for _ in range(limit):
        peer = await Peer.connect(w.url)
        peers.append(peer)
        w.peers.append(peer)
        expect_type(await peer.request({"type": "join-room", "room": room}), "room-joined")
        if len(peers) >= 2 and len(peers) % 2 == 0:
            await asyncio.sleep(HEARTBEAT * 2.5)  # every node has written its counts
            _, body = await get_json(f"{w.http}/health")
            per_node = body["cluster"]["perNode"]
            if len(per_node) == w.count and all(c["connections"] for c in per_node.values()):
                return peers
    raise AssertionError(f"{limit} connections never reached all {w.count} workers")


async def test_two_workers_share_the_port_and_a_room(
    tmp_path: Path, redis_server: RedisServer, workers: list[Workers]
) -> None:
    """Both workers accept connections on the one port, each is a node, and a room
    broadcast from one reaches the members on the other."""
    w = Workers(tmp_path, redis_config(redis_server, "socketio:\n  enabled: false\n"))
    workers.append(w)
    nodes = await w.ready()
    assert len(nodes) == 2
    assert "long-polling" not in w.server.output()  # no Socket.IO: nothing to warn of
    peers = await peers_on_every_node(w, "lobby")
    await peers[0].send({"type": "broadcast", "room": "lobby", "message": "across"})
    for peer in peers:
        got = await peer.recv()
        assert got["type"] == "broadcast" and got["message"] == "across", got
    for peer in peers:
        await peer.expect_silence(0.1)  # once each
    listing = subprocess.run(
        [sys.executable, "-m", "miaws", "clients", w.http],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert listing.returncode == 0, listing.stderr
    assert "one of 2 node(s)" in listing.stdout, listing.stdout
    assert f"with {len(peers)} connection(s) in all" in listing.stdout, listing.stdout


async def test_socketio_on_workers_is_warned_of_and_works_over_websocket(
    tmp_path: Path, redis_server: RedisServer, workers: list[Workers]
) -> None:
    """SO_REUSEPORT gives no sticky sessions, which Socket.IO's long-polling needs: the
    supervisor says so once at start-up; clients on the WebSocket transport work whichever
    worker they reach."""
    import socketio

    w = Workers(tmp_path, redis_config(redis_server))
    workers.append(w)
    await w.ready()
    assert w.server.output().count("requests of one long-polling session may reach") == 1
    for i in range(6):
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(w.http, transports=["websocket"], wait_timeout=5)
        try:
            reply = await client.call("echo", {"type": "echo", "message": i}, timeout=5)
            assert reply["type"] == "echo" and reply["original"] == i, reply
        finally:
            await client.disconnect()


@pytest.mark.parametrize("drain", [0.0, 1.5])
async def test_sigterm_stops_every_worker(
    tmp_path: Path, redis_server: RedisServer, workers: list[Workers], drain: float
) -> None:
    """SIGTERM to the supervisor: the clients of both workers get 1001 (spread over
    ``shutdown.drain_seconds`` when set), every worker exits, then the supervisor, with 0."""
    w = Workers(tmp_path, redis_config(redis_server, f"shutdown:\n  drain_seconds: {drain}\n"))
    workers.append(w)
    await w.ready()
    pids = children(w.pid)
    assert len(pids) == 2
    peers = await peers_on_every_node(w, "lobby")
    while len(peers) < 16:
        peers.append(await Peer.connect(w.url))
        w.peers.append(peers[-1])
    closed_at: list[float] = []

    async def closed(peer: Peer) -> int | None:
        code = await peer.closed_with(10)
        closed_at.append(time.monotonic())
        return code

    w.server.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(closed(peer) for peer in peers))
    assert set(codes) == {1001}
    if drain:
        assert max(closed_at) - min(closed_at) > drain / 2, closed_at
    else:
        assert max(closed_at) - min(closed_at) < 1.0, closed_at
    await eventually(lambda: w.server.proc.poll() is not None, timeout=15)
    assert w.server.proc.returncode == 0, w.server.output()
    assert not any(alive(pid) for pid in pids)
    assert "every worker has stopped" in w.server.output()


async def test_sighup_reloads_every_worker(
    tmp_path: Path, redis_server: RedisServer, workers: list[Workers]
) -> None:
    """SIGHUP to the supervisor: each worker re-reads the file (echo switched off answers
    unknown-type on connections to either worker afterwards)."""
    config = redis_config(redis_server)
    w = Workers(tmp_path, config)
    workers.append(w)
    await w.ready()
    cfg = tmp_path / f"config-{w.server.port}.yaml"
    cfg.write_text(config + "plugins:\n  enabled: [ping, broadcast, rooms]\n")
    w.server.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: w.server.output().count("config reloaded from") == 2, timeout=10)
    out = w.server.output()
    assert "miaws[w1]: config reloaded" in out and "miaws[w2]: config reloaded" in out, out
    peers = await peers_on_every_node(w, "after")  # connections on both workers
    for peer in peers:
        reply = await peer.request({"type": "echo", "message": "x"})
        assert reply["type"] == "error" and reply["code"] == "unknown-type", reply


async def test_a_dead_worker_is_reported_and_started_again(
    tmp_path: Path, redis_server: RedisServer, workers: list[Workers]
) -> None:
    w = Workers(tmp_path, redis_config(redis_server))
    workers.append(w)
    before = await w.ready()
    victim = min(children(w.pid))
    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: "was killed by signal 9" in w.server.output(), timeout=10)
    assert f"(pid {victim}) was killed by signal 9" in w.server.output()
    # Started again 1 s later: a new node joins, the dead one's counts expire.
    body = await wait_json(
        f"{w.http}/health",
        lambda b: b.get("cluster", {}).get("nodes") == 2 and set(b["cluster"]["perNode"]) != before,
        timeout=20,
    )
    assert len(set(body["cluster"]["perNode"]) & before) == 1
    assert victim not in children(w.pid) and len(children(w.pid)) == 2


def test_memory_broker_refuses_workers(tmp_path: Path) -> None:
    """Workers on the memory broker would be separate servers: one line, exit 2."""
    cfg = tmp_path / "memory.yaml"
    for config, flag, key in (
        ("server:\n  host: 127.0.0.1\n", ["--workers", "2"], "--workers has value 2"),
        ("server:\n  host: 127.0.0.1\n  workers: 3\n", [], "server.workers has value 3"),
    ):
        cfg.write_text(config)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "miaws", "serve", "--config", str(cfg), *flag],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0] and "broker.type memory" in lines[0], lines
        assert time.monotonic() - started < 20


def test_a_busy_port_is_one_line(tmp_path: Path, redis_server: RedisServer) -> None:
    """The port held by another program: the supervisor says so once (not once per worker)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cfg = tmp_path / "busy.yaml"
        cfg.write_text(redis_config(redis_server))
        done = subprocess.run(
            [sys.executable, "-m", "miaws", "serve", "--config", str(cfg)]
            + ["--port", str(port), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "REDIS_URL": ""},
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0], done.stderr
