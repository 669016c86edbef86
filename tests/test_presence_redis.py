"""Presence across ``miaws serve`` nodes sharing a real redis-server (#18): shared member
lists, join/leave events on every node, each webhook event posted once by the cluster, and
a SIGKILLed node's members and rooms dropping out on their own."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from helpers import ServerProcess
from redis_server import RedisServer
from sio_helpers import SioPeer
from webhook_receiver import WebhookReceiver

from miaws.cli.check import Peer

HEARTBEAT = 0.5
DELAY = 1.0  # a move to the other node must come within it, even on a loaded machine
SECRET = "cluster-secret"
Start = Callable[..., ServerProcess]
Join = Callable[..., Awaitable[Peer]]


def node_config(redis: RedisServer, hook: WebhookReceiver) -> str:
    return json.dumps(  # YAML reads JSON
        {
            "server": {"host": "127.0.0.1"},
            "broker": {"type": "redis", "url": redis.url, "heartbeat": HEARTBEAT},
            "auth": {"mode": "token", "tokens": {"a": "alice", "b": "bob", "c": "carol", "o": ODD}},
            "rooms": {
                "leave_delay": DELAY,
                "rules": [{"match": "team:*", "presence": True, "join_leave": True}],
            },
            "webhooks": [{"url": hook.url, "secret": SECRET, "events": ROOM_AND_MEMBER}],
        }
    )


ODD = 'o"dd\nuser é'  # a user name with a quote, a newline and non-ASCII
ROOM_AND_MEMBER = ["room-occupied", "room-vacated", "member-added", "member-removed"]


@pytest.fixture
def receiver(io_loop: Any) -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver(SECRET)
    yield hook
    hook.close()


@pytest.fixture
def nodes(
    server_process: Start, redis_server: RedisServer, receiver: WebhookReceiver
) -> list[ServerProcess]:
    # REDIS_URL would override the file; keep the developer's environment out of it.
    cfg = node_config(redis_server, receiver)
    return [server_process(cfg, env={"REDIS_URL": ""}) for _ in range(2)]


@pytest.fixture
def join() -> Iterator[Join]:
    """``await join(node, token, *rooms)``: a Peer on that node, joined; closed at teardown."""
    opened: list[Peer] = []

    async def open_peer(node: ServerProcess, token: str, *rooms: str) -> Peer:
        peer = await Peer.connect(f"{node.url}?token={token}")
        opened.append(peer)
        for room in rooms:
            await peer.send({"type": "join-room", "room": room})
            await until(peer, "room-joined")
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


async def until(peer: Peer, kind: str, timeout: float = 8.0, **fields: Any) -> dict[str, Any]:
    """Read until a message of kind with these fields (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await peer.recv(max(0.01, deadline - time.monotonic()))
        if msg["type"] == kind and all(msg.get(k) == v for k, v in fields.items()):
            return msg


async def presence(peer: Peer, room: str) -> dict[str, Any]:
    await peer.send({"type": "presence", "room": room})
    return await until(peer, "presence")


async def no_member_events(peer: Peer, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(peer.conn.read_message(), left)
        except asyncio.TimeoutError:
            return
        assert msg is not None and "member-" not in msg, msg


async def test_presence_and_member_events_are_shared_by_every_node(
    nodes: list[ServerProcess], join: Join
) -> None:
    """alice on node 0, bob on node 1: each sees the other join and leave; presence from
    either node lists both; a second connection of alice on the other node is no new join."""
    a, b = nodes
    alice = await join(a, "a", "team:1")
    bob = await join(b, "b", "team:1")
    joined = await until(alice, "member-joined", user="bob")
    assert joined["clientId"] == bob.welcome["clientId"]
    for peer in (alice, bob):
        reply = await presence(peer, "team:1")
        assert reply["count"] == 2
        assert {m["user"] for m in reply["members"]} == {"alice", "bob"}
    alice2 = await join(b, "a", "team:1")
    reply = await presence(bob, "team:1")
    assert reply["count"] == 2 and len(reply["members"]) == 3
    alice.close()  # alice is still in through node 1
    await no_member_events(bob, DELAY + 0.4)
    alice2.close()
    left = await until(bob, "member-left", user="alice")
    assert left["clientId"] == alice2.welcome["clientId"]
    reply = await presence(bob, "team:1")
    assert [m["user"] for m in reply["members"]] == ["bob"]


async def test_socket_io_members_share_presence_across_nodes(
    nodes: list[ServerProcess], join: Join
) -> None:
    a, b = nodes
    alice = await join(a, "a", "team:s")
    sio = await SioPeer.connect(b.http, auth={"token": "c"})
    try:
        assert (await sio.call("join-room", {"room": "team:s"}))["type"] == "room-joined"
        assert (await until(alice, "member-joined", user="carol"))["clientId"] == sio.client_id
        reply = await sio.call("presence", {"room": "team:s"})
        assert reply["count"] == 2
    finally:
        await sio.close()
    await until(alice, "member-left", user="carol")


async def test_any_user_name_survives_the_shared_store(
    nodes: list[ServerProcess], join: Join, receiver: WebhookReceiver
) -> None:
    a, b = nodes
    bob = await join(b, "b", "team:o")
    odd = await join(a, "o", "team:o")
    assert (await until(bob, "member-joined", user=ODD))["clientId"] == odd.welcome["clientId"]
    assert ODD in [m["user"] for m in (await presence(bob, "team:o"))["members"]]
    odd.close()
    await until(bob, "member-left", user=ODD)
    removed = await receiver.wait_for("member-removed")
    assert removed[0]["user"] == ODD


def pending_leaves(redis_server: RedisServer) -> int:
    """Leaves the nodes have noted as pending in Redis (for a sweeper to take over)."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    try:
        keys = list(client.scan_iter(match="*:presence:pending:*", count=100))
        return sum(int(client.hlen(k)) for k in keys)
    finally:
        client.close()


async def test_each_webhook_event_is_posted_once_by_the_cluster(
    nodes: list[ServerProcess], join: Join, receiver: WebhookReceiver, redis_server: RedisServer
) -> None:
    """Members on both nodes, alice on both: one room-occupied, one member-added per user,
    and after everyone has gone one member-removed per user and one room-vacated; no leave
    is left noted as pending."""
    a, b = nodes
    peers = [
        await join(a, "a", "team:w"),
        await join(b, "b", "team:w"),
        await join(b, "a", "team:w"),
    ]
    await receiver.wait_for("member-added", 2)
    for peer in peers:
        peer.close()
    await receiver.wait_for("room-vacated")
    await receiver.wait_for("member-removed", 2)
    await asyncio.sleep(DELAY + 0.5)  # a second copy would have come by now
    kinds = receiver.kinds("team:w")
    assert kinds.count("room-occupied") == 1 and kinds.count("room-vacated") == 1
    assert sorted(e["user"] for e in receiver.of("member-added")) == ["alice", "bob"]
    assert sorted(e["user"] for e in receiver.of("member-removed")) == ["alice", "bob"]
    assert kinds[0] == "room-occupied"  # (two nodes' POSTs after it may cross)
    assert receiver.bad_signatures == 0
    assert pending_leaves(redis_server) == 0


async def test_moving_to_another_node_within_the_delay_is_no_event(
    nodes: list[ServerProcess], join: Join, receiver: WebhookReceiver
) -> None:
    a, b = nodes
    watcher = await join(a, "b", "team:m")
    peer = await join(a, "a", "team:m")
    await until(watcher, "member-joined", user="alice")
    for i in range(10):
        peer.close()
        peer = await join(nodes[(i + 1) % 2], "a", "team:m")
    await no_member_events(watcher, DELAY + 0.5)
    assert receiver.kinds("team:m").count("member-removed") == 0


async def test_a_killed_node_drops_its_members_and_vacates_its_rooms(
    nodes: list[ServerProcess], join: Join, receiver: WebhookReceiver
) -> None:
    """SIGKILL node 0: within three heartbeats its members leave (member-left on node 1,
    presence without them) and each room it alone was in is vacated, once."""
    a, b = nodes
    await join(a, "a", "team:k1", "team:k2", "team:shared")
    await join(a, "c", "team:k1")
    bob = await join(b, "b", "team:shared")
    await receiver.wait_for("member-added", 4)
    assert receiver.kinds().count("room-occupied") == 3
    await asyncio.sleep(HEARTBEAT)  # the alive keys have been refreshed since the joins
    killed_at = time.monotonic()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(5)
    left = await until(bob, "member-left", timeout=10, user="alice")
    assert left["room"] == "team:shared"
    await receiver.wait_for("room-vacated", 2, timeout=10)
    vacated = [(t, e) for t, e in receiver.events if e["event"] == "room-vacated"]
    assert sorted(e["room"] for _, e in vacated) == ["team:k1", "team:k2"]
    assert max(t for t, _ in vacated) - killed_at <= 3 * HEARTBEAT + 0.5
    reply = await presence(bob, "team:shared")
    assert [m["user"] for m in reply["members"]] == ["bob"]
    await asyncio.sleep(3 * HEARTBEAT)  # no second sweep, no second event
    assert len(receiver.of("room-vacated")) == 2
    removed = sorted((e["room"], e["user"]) for e in receiver.of("member-removed"))
    assert removed == [
        ("team:k1", "alice"),
        ("team:k1", "carol"),
        ("team:k2", "alice"),
        ("team:shared", "alice"),
    ]
    assert receiver.bad_signatures == 0


async def test_a_leave_pending_on_a_killed_node_is_confirmed_by_a_survivor(
    nodes: list[ServerProcess], join: Join, receiver: WebhookReceiver, redis_server: RedisServer
) -> None:
    """bob leaves team:v (his alone) and team:p (with alice on node 0) from node 1, carol
    moves from node 1 to node 0; node 1 is SIGKILLed while rooms.leave_delay runs: node 0
    posts one member-removed per room of bob's and one room-vacated for team:v, alice gets
    bob's member-left once, and carol's move stays no event."""
    a, b = nodes
    alice = await join(a, "a", "team:p")
    bob = await join(b, "b", "team:v", "team:p")
    carol = await join(b, "c", "team:p")
    await until(alice, "member-joined", user="carol")
    await receiver.wait_for("member-added", 4)
    await asyncio.sleep(HEARTBEAT)  # the alive keys have been refreshed since the joins
    left_at = time.monotonic()
    carol.close()
    await join(a, "c", "team:p")  # back within the delay: her leave is cancelled
    bob.close()
    await asyncio.sleep(DELAY / 4)  # the leave has reached Redis; its delay still runs
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(5)
    assert receiver.of("member-removed") == []  # not before the delay
    budget = DELAY + 3 * HEARTBEAT + 1.0
    left = await until(alice, "member-left", timeout=budget, user="bob")
    assert left["room"] == "team:p"
    await receiver.wait_for("room-vacated", timeout=budget)
    await receiver.wait_for("member-removed", 2, timeout=budget)
    assert max(t for t, _ in receiver.events) - left_at <= budget
    await asyncio.sleep(DELAY + 3 * HEARTBEAT)  # a second copy would have come by now
    assert [e["room"] for e in receiver.of("room-vacated")] == ["team:v"]
    removed = sorted((e["room"], e["user"]) for e in receiver.of("member-removed"))
    assert removed == [("team:p", "bob"), ("team:v", "bob")]
    await no_member_events(alice, 0.1)  # no second member-left
    members = (await presence(alice, "team:p"))["members"]
    assert sorted(m["user"] for m in members) == ["alice", "carol"]
    assert receiver.bad_signatures == 0
    assert pending_leaves(redis_server) == 0  # the dead node's were taken over


async def read_into(seen: list[dict[str, Any]], peer: Peer, kind: str, **fields: Any) -> None:
    """Read into seen until a message of kind with these fields (bounded)."""
    deadline = time.monotonic() + 8.0
    while True:
        msg = await peer.recv(max(0.01, deadline - time.monotonic()))
        seen.append(msg)
        if msg["type"] == kind and all(msg.get(k) == v for k, v in fields.items()):
            return


async def test_member_events_take_no_seq_and_are_not_kept_in_the_shared_history(
    server_process: Start, redis_server: RedisServer, join: Join
) -> None:
    """A room with join_leave and a Redis history of 3 (#18): members on both nodes get the
    member events without epoch or seq; the broadcasts (from both nodes) are seq 1, 2, 3;
    a join since seq 0 on either node recovers exactly those 3."""
    config = json.dumps(
        {
            "server": {"host": "127.0.0.1"},
            "broker": {"type": "redis", "url": redis_server.url, "heartbeat": HEARTBEAT},
            "rooms": {
                "leave_delay": 0.2,
                "rules": [
                    {"match": "log:*", "join_leave": True, "history": {"size": 3, "ttl": 60}}
                ],
            },
        }
    )
    a, b = (server_process(config, env={"REDIS_URL": ""}) for _ in range(2))
    watcher = await Peer.connect(a.url)
    start = await watcher.request({"type": "join-room", "room": "log:1"})
    seen: list[dict[str, Any]] = []
    await read_into(seen, watcher, "member-joined", clientId=watcher.welcome["clientId"])
    publisher = await join(b, "p", "log:1")
    await read_into(seen, watcher, "member-joined", clientId=publisher.welcome["clientId"])
    for i in range(3):
        visitor = await join(b, "v", "log:1")
        await read_into(seen, watcher, "member-joined", clientId=visitor.welcome["clientId"])
        visitor.close()
        await read_into(seen, watcher, "member-left", clientId=visitor.welcome["clientId"])
        sender = watcher if i % 2 else publisher
        await sender.send({"type": "broadcast", "room": "log:1", "message": i})
        await read_into(seen, watcher, "broadcast", message=i)
    for node in (a, b):
        late = await join(node, "late")
        since = {"epoch": start["epoch"], "seq": 0}
        reply = await late.request({"type": "join-room", "room": "log:1", "since": since})
        assert reply["recovered"] is True and reply["seq"] == 3, reply
        replayed = [await late.recv() for _ in range(3)]
        assert [(m["type"], m["message"], m["seq"]) for m in replayed] == [
            ("broadcast", i, i + 1) for i in range(3)
        ]
        await read_into(seen, watcher, "member-joined", clientId=late.welcome["clientId"])
    watcher.close()
    events = [m for m in seen if m["type"] != "broadcast"]
    assert [m["type"] for m in events] == ["member-joined"] * 2 + [
        "member-joined",
        "member-left",
    ] * 3 + ["member-joined"] * 2
    assert all("seq" not in m and "epoch" not in m for m in events)
    assert [m["seq"] for m in seen if m["type"] == "broadcast"] == [1, 2, 3]
