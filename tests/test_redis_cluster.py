"""``broker.type: redis-cluster``: two ``miaws serve`` nodes on a real Redis Cluster (3
primaries, one replica each; tests/redis_cluster.py), sharded pub/sub, and a failover of
the primary that holds a room's slot."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zlib import crc32

import pytest
from helpers import ServerProcess
from redis_cluster import RedisCluster
from tornado.httpclient import AsyncHTTPClient

from miaws.cli.check import CheckFailed, Peer, expect_type

PARTITIONS = 64
HEARTBEAT = 0.5


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 primaries and 3 replicas on free ports (each at most 55535), killed at teardown."""
    cluster = RedisCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    opened: list[Peer] = []
    yield opened
    for peer in opened:
        peer.close()


def cluster_config(cluster: RedisCluster) -> str:
    return (
        "server:\n  host: 127.0.0.1\n"
        f"broker:\n  type: redis-cluster\n  url: {cluster.url}\n  heartbeat: {HEARTBEAT}\n"
        f"  partitions: {PARTITIONS}\n  probe_interval: 0.5\n"
        "history:\n  rooms:\n    - {match: 'feed*', size: 1000, ttl: 60}\n"
    )


def start_nodes(server_process: Any, cluster: RedisCluster, n: int = 2) -> list[ServerProcess]:
    return [server_process(cluster_config(cluster), env={"REDIS_URL": ""}) for _ in range(n)]


def partition_tag(room: str) -> str:
    """The hash tag of room's partition channel (miaws/broker/redis_keys.py)."""
    return f"{{miaws:p{crc32(room.encode()) % PARTITIONS}}}"


async def open_peer(peers: list[Peer], node: ServerProcess, *rooms: str) -> Peer:
    peer = await Peer.connect(node.url)
    peers.append(peer)
    for room in rooms:
        expect_type(await peer.request({"type": "join-room", "room": room}), "room-joined")
    return peer


async def metric(node: ServerProcess, name: str) -> float:
    response = await AsyncHTTPClient().fetch(f"{node.http}/metrics")
    match = re.search(rf"^{name} (\S+)$", response.body.decode(), re.M)
    assert match is not None, f"{name} missing from /metrics"
    return float(match.group(1))


async def until_delivered(publisher: Peer, receiver: Peer, room: str, timeout: float) -> None:
    """Publish to room until receiver gets one (the nodes subscribe in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await publisher.send({"type": "broadcast", "room": room, "message": "hello?"})
        try:
            while True:
                got = await receiver.recv(timeout=0.3)
                if got.get("message") == "hello?":
                    return
        except CheckFailed:
            continue
    raise AssertionError(f"no broadcast to {room} crossed the nodes within {timeout} s")


async def drain(peer: Peer) -> list[dict[str, Any]]:
    """What peer has received until 0.3 s of silence."""
    got = []
    try:
        while True:
            got.append(await peer.recv(timeout=0.3))
    except CheckFailed:
        return got


async def test_room_broadcast_and_history_recovery_across_nodes(
    server_process: Any, redis_cluster: RedisCluster, peers: list[Peer]
) -> None:
    """A room broadcast crosses the nodes through sharded pub/sub; a history room is stamped
    once for the cluster, and a join with ``since`` on the other node recovers it."""
    a, b = start_nodes(server_process, redis_cluster)
    pub = await open_peer(peers, a, "lobby", "feed")
    sub = await open_peer(peers, b, "lobby")
    await until_delivered(pub, sub, "lobby", 10)
    await drain(pub)
    start = await sub.request({"type": "join-room", "room": "feed"})
    expect_type(start, "room-joined")
    for i in range(10):
        await pub.send({"type": "broadcast", "room": "feed", "message": i})
    got = [await sub.recv() for _ in range(10)]
    assert [m["message"] for m in got] == list(range(10))
    seqs = [m["seq"] for m in got]
    assert seqs == list(range(seqs[0], seqs[0] + 10)) and {m["epoch"] for m in got} == {
        start["epoch"]
    }
    for primary in redis_cluster.primaries():  # every shard connection is probed
        probes = primary.cli("PUBSUB", "SHARDCHANNELS", "{miaws:node:*").split()
        assert len(probes) >= 2, (primary.port, probes)  # a probe channel of each node
    late = await open_peer(peers, a)
    since = {"epoch": start["epoch"], "seq": seqs[4]}
    reply = await late.request({"type": "join-room", "room": "feed", "since": since})
    expect_type(reply, "room-joined", recovered=True, epoch=start["epoch"], seq=seqs[-1])
    assert [(await late.recv())["message"] for _ in range(5)] == [5, 6, 7, 8, 9]
    await late.expect_silence(0.3)


async def test_a_node_without_members_of_a_room_is_not_sent_its_messages(
    server_process: Any, redis_cluster: RedisCluster, peers: list[Peer]
) -> None:
    """Node B has no member of room R: R's partition channel has one subscriber (node A)
    on the primary that owns it, and B reads none of R's 200 messages."""
    room, other = "busy", "quiet"
    assert partition_tag(room) != partition_tag(other)
    a, b = start_nodes(server_process, redis_cluster)
    pub = await open_peer(peers, a, room)
    watcher = await open_peer(peers, b, other)
    await until_delivered(await open_peer(peers, a, other), watcher, other, 10)
    owner = redis_cluster.owner(partition_tag(room))
    counts = owner.cli("PUBSUB", "SHARDNUMSUB", partition_tag(room)).split()
    assert counts == [partition_tag(room), "1"], counts
    before = await metric(b, "miaws_broker_messages_received_total")
    for i in range(200):
        await pub.send({"type": "broadcast", "room": room, "message": i})
    assert [(await pub.recv())["message"] for _ in range(200)] == list(range(200))
    await asyncio.sleep(0.5)
    after = await metric(b, "miaws_broker_messages_received_total")
    assert after - before < 20, (before, after)  # its probes only, not R's 200
    await watcher.expect_silence(0.2)


@pytest.mark.parametrize("fault", ["kill", "sleep"])
async def test_failover_of_the_rooms_primary(
    server_process: Any, redis_cluster: RedisCluster, peers: list[Peer], fault: str
) -> None:
    """The primary holding a history room's slot is killed (or hangs in ``DEBUG SLEEP``,
    then wakes up a replica) and its replica takes over (``CLUSTER FAILOVER TAKEOVER``):
    delivery resumes on its own, and the subscriber got every seq at most once, in order,
    and either all of them or a ``gap`` message saying it missed some."""
    room = "feed-f"
    a, b = start_nodes(server_process, redis_cluster)
    pub = await open_peer(peers, a, room)
    sub = await open_peer(peers, b, room)
    await until_delivered(pub, sub, room, 10)
    await drain(pub)
    for i in range(20):
        await pub.send({"type": "broadcast", "room": room, "message": i})
    before = [await sub.recv() for _ in range(20)]
    owner = redis_cluster.owner(partition_tag(room))
    replica = redis_cluster.replica_of(owner)
    await asyncio.to_thread(redis_cluster.wait_replicated, owner)
    if fault == "kill":
        await asyncio.to_thread(owner.kill)
    else:
        sleeping = asyncio.create_task(asyncio.to_thread(owner.cli, "DEBUG", "SLEEP", "3"))
        await asyncio.sleep(0.1)
    await asyncio.to_thread(replica.cli, "CLUSTER", "FAILOVER", "TAKEOVER")
    started = time.monotonic()
    resumed = None
    got: list[dict[str, Any]] = []
    for i in range(20, 400):  # one message every 50 ms until 10 arrived after the failover
        await pub.send({"type": "broadcast", "room": room, "message": i})
        got += await drain_nowait(sub)
        if resumed is None and any(m.get("message", -1) >= 20 for m in got):
            resumed = time.monotonic() - started
        if len([m for m in got if m.get("message", -1) >= 20]) >= 10:
            break
        await asyncio.sleep(0.05)
    got += await drain(sub)
    if fault == "sleep":
        assert (await sleeping).strip() == "OK"  # it did sleep (DEBUG is enabled locally)
    assert resumed is not None and resumed < 15, f"delivery did not resume: {got}"
    messages = [m for m in got if m["type"] == "broadcast"]
    gaps = [m for m in got if m["type"] == "gap"]
    seqs = [m["seq"] for m in before + messages]
    assert seqs == sorted(set(seqs)), seqs  # each at most once, in order
    if (
        seqs != list(range(seqs[0], seqs[0] + len(seqs)))
        or len({m["epoch"] for m in before + messages}) > 1
    ):
        assert gaps, f"messages were lost and the client was not told: {seqs}; got {got}"
    # The history survived on the replica: a join since the 10th recovers, or says why not.
    late = await open_peer(peers, a)
    since = {"epoch": before[0]["epoch"], "seq": before[9]["seq"]}
    reply = await late.request({"type": "join-room", "room": room, "since": since})
    expect_type(reply, "room-joined")
    if reply["recovered"]:
        replay = await drain(late)
        assert [m["seq"] for m in replay] == list(range(before[10]["seq"], reply["seq"] + 1))


async def drain_nowait(peer: Peer) -> list[dict[str, Any]]:
    got = []
    try:
        while True:
            got.append(await peer.recv(timeout=0.01))
    except CheckFailed:
        return got


async def test_a_moved_slot_is_followed(
    server_process: Any, redis_cluster: RedisCluster, peers: list[Peer]
) -> None:
    """Resharding moves the slots of two rooms' partitions to another primary: node A, which
    was subscribed there, is told by ``sunsubscribe`` pushes and follows; node B subscribes
    to one of them afterwards (answered ``-MOVED`` when its slot map is stale) and gets its
    messages; the history moved with its keys, so the seqs go on in the same epoch."""
    kept, joined = "feed-move", "late-room"
    a, b = start_nodes(server_process, redis_cluster)
    pub = await open_peer(peers, a, kept, joined)
    sub = await open_peer(peers, b, kept)
    await until_delivered(pub, sub, kept, 10)
    await drain(pub)
    await pub.send({"type": "broadcast", "room": kept, "message": "before"})
    first = await sub.recv()
    await drain(pub)
    for room in (kept, joined):
        tag = partition_tag(room)
        target = next(
            p for p in redis_cluster.primaries() if p.port != redis_cluster.owner(tag).port
        )
        await asyncio.to_thread(redis_cluster.move_slot, tag, target)
        assert redis_cluster.owner(tag).port == target.port
    late = await open_peer(peers, b, joined)  # B subscribes with its old slot map
    await until_delivered(pub, late, joined, 10)
    await until_delivered(pub, sub, kept, 10)
    await drain(sub)
    await pub.send({"type": "broadcast", "room": kept, "message": "after"})
    after = await sub.recv()
    assert after["message"] == "after" and after["epoch"] == first["epoch"]
    assert after["seq"] > first["seq"]
    assert "lost on" in a.output() and "(sunsubscribe)" in a.output(), a.output()


async def test_a_cluster_down_at_start_is_reported_and_joined_later(
    server_process: Any, tmp_path: Path, peers: list[Peer]
) -> None:
    """No node of the cluster answers at start-up: the node serves its own clients and
    says ``degraded``; once the cluster is up it connects, and rooms cross the nodes."""
    from test_scaling import wait_json

    cluster = RedisCluster(tmp_path)  # ports chosen, nothing started yet
    try:
        a, b = start_nodes(server_process, cluster)
        body = await wait_json(f"{a.http}/health", lambda j: j["status"] == "degraded")
        assert body["cluster"]["broker"] == "down"
        local = await open_peer(peers, a, "lobby")
        other = await open_peer(peers, a, "lobby")
        await local.send({"type": "broadcast", "room": "lobby", "message": "alone"})
        assert (await other.recv())["message"] == "alone"
        await asyncio.to_thread(cluster.start)
        for node in (a, b):
            await wait_json(f"{node.http}/health", lambda j: j["status"] == "ok", timeout=20)
        far = await open_peer(peers, b, "lobby")
        await until_delivered(local, far, "lobby", 10)
        assert "redis broker unreachable" in a.output()
    finally:
        cluster.stop()
