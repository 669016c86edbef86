"""Several ``miaws serve`` nodes sharing one real redis-server (``broker.type: redis``)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers import ServerProcess
from redis_server import RedisServer
from tornado.httpclient import AsyncHTTPClient

from miaws.cli.check import Peer, expect_type

HEARTBEAT = 0.5  # seconds; a node silent for 3 heartbeats leaves the cluster view
Start = Callable[..., ServerProcess]


def node_config(redis: RedisServer, heartbeat: float = HEARTBEAT) -> str:
    return (
        "server:\n  host: 127.0.0.1\n"
        f"broker:\n  type: redis\n  url: {redis.url}\n  heartbeat: {heartbeat}\n"
    )


def start_nodes(server_process: Start, redis: RedisServer, n: int) -> list[ServerProcess]:
    # REDIS_URL would override the file; keep the developer's environment out of it.
    return [server_process(node_config(redis), env={"REDIS_URL": ""}) for _ in range(n)]


async def get_json(url: str) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(url, raise_error=False)
    return response.code, json.loads(response.body)


async def wait_json(url: str, predicate: Callable[[Any], bool], timeout: float = 8.0) -> Any:
    """Poll a JSON endpoint until predicate(body) holds; the last body."""
    last: list[Any] = [None]

    async def poll() -> None:
        while True:
            last[0] = (await get_json(url))[1]
            if predicate(last[0]):
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{url} never matched; last body: {last[0]}") from None
    return last[0]


Connect = Callable[..., Awaitable[Peer]]  # the ``connect`` fixture (conftest.py)


async def test_room_broadcast_reaches_members_on_every_node(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """A room broadcast reaches members on all three nodes, once each, and no non-member."""
    n1, n2, n3 = start_nodes(server_process, redis_server, 3)
    a, b, c = await connect(n1, "r"), await connect(n2, "r"), await connect(n3, "r")
    outsider = await connect(n2)
    await b.send({"type": "broadcast", "message": "hi", "room": "r"})
    for peer in (a, b, c):
        expect_type(
            await peer.recv(),
            "broadcast",
            message="hi",
            room="r",
            **{"from": b.welcome["clientId"]},
        )
    for peer in (a, b, c, outsider):
        await peer.expect_silence(0.3)


async def test_broadcast_to_all_across_nodes_once_and_in_order(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """Broadcasts to everyone reach every client of every node exactly once, in order."""
    n1, n2 = start_nodes(server_process, redis_server, 2)
    sender, local, remote = await connect(n1), await connect(n1), await connect(n2)
    for i in range(50):
        await sender.send({"type": "broadcast", "message": i})
    for peer in (sender, local, remote):
        got = [(await peer.recv())["message"] for _ in range(50)]
        assert got == list(range(50))
        await peer.expect_silence(0.3)


async def test_cluster_counts_and_a_killed_node_disappears(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """/health and /api/rooms?scope=cluster add up all nodes; SIGKILL drops a node in ~3 TTLs."""
    n1, n2, n3 = start_nodes(server_process, redis_server, 3)
    await connect(n1, "x")
    await connect(n1)
    await connect(n2, "x", "y")

    def totals(nodes: int, connections: int) -> Callable[[Any], bool]:
        return lambda h: (
            h["cluster"]["nodes"] == nodes and h["cluster"]["connections"] == connections
        )

    health = await wait_json(f"{n3.http}/health", totals(3, 3))
    assert health["status"] == "ok" and health["connections"] == 0
    assert health["cluster"]["rooms"] == 2
    assert await get_json(f"{n3.http}/api/rooms?scope=cluster") == (200, {"x": 2, "y": 1})
    assert await get_json(f"{n3.http}/api/rooms") == (200, {})  # the default stays local
    assert await get_json(f"{n2.http}/api/rooms") == (200, {"x": 1, "y": 1})

    n2.proc.send_signal(signal.SIGKILL)
    started = asyncio.get_running_loop().time()
    await wait_json(f"{n1.http}/health", totals(2, 2), timeout=5 * HEARTBEAT + 3)
    assert asyncio.get_running_loop().time() - started < 5 * HEARTBEAT + 1
    assert await get_json(f"{n1.http}/api/rooms?scope=cluster") == (200, {"x": 1})

    n3.proc.send_signal(signal.SIGTERM)  # a clean stop leaves the view at once
    assert await asyncio.get_running_loop().run_in_executor(None, n3.proc.wait, 10) == 0
    body = (await get_json(f"{n1.http}/health"))[1]
    assert body["cluster"]["nodes"] == 1


async def test_redis_outage_degrades_then_delivery_resumes(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """Redis stopped: nodes serve their own clients, /health is degraded (200); restarted:
    cross-node delivery resumes, and each node logged the outage once."""
    n1, n2 = start_nodes(server_process, redis_server, 2)
    a, a2, b = await connect(n1, "r"), await connect(n1, "r"), await connect(n2, "r")
    await a.send({"type": "broadcast", "message": "before", "room": "r"})
    for peer in (a, a2, b):
        expect_type(await peer.recv(), "broadcast", message="before")

    redis_server.stop()
    for node in (n1, n2):
        body = await wait_json(f"{node.http}/health", lambda h: h["status"] == "degraded")
        assert body["cluster"]["broker"] == "down"
        assert (await get_json(f"{node.http}/health"))[0] == 200
        assert (await get_json(f"{node.http}/api/rooms?scope=cluster"))[0] == 503
    await a.send({"type": "broadcast", "message": "during", "room": "r"})
    for peer in (a, a2):  # the node's own clients are still served
        expect_type(await peer.recv(), "broadcast", message="during")
    await b.expect_silence(0.5)  # lost for the other node: not queued
    expect_type(await b.request({"type": "ping"}), "pong")

    redis_server.start()
    for node in (n1, n2):
        await wait_json(f"{node.http}/health", lambda h: h["status"] == "ok")
    await b.send({"type": "broadcast", "message": "after", "room": "r"})
    for peer in (a, a2, b):
        expect_type(await peer.recv(), "broadcast", message="after")
    for node in (n1, n2):
        out = node.output()
        assert out.count("redis broker unreachable") == 1, out
        assert out.count("redis broker reachable again") == 1, out


async def test_node_starts_while_redis_is_down(
    server_process: Start, tmp_path: Any, connect: Connect
) -> None:
    """A node whose Redis is not up yet serves its clients (degraded), then joins when it is."""
    redis = RedisServer(tmp_path)
    node = start_nodes(server_process, redis, 1)[0]
    try:
        peer = await connect(node, "r")
        expect_type(await peer.request({"type": "ping"}), "pong")
        body = (await get_json(f"{node.http}/health"))[1]
        assert body["status"] == "degraded" and body["connections"] == 1
        redis.start()
        body = await wait_json(f"{node.http}/health", lambda h: h["status"] == "ok")
        assert body["cluster"]["connections"] == 1
    finally:
        redis.stop()


@pytest.fixture
def config_data(redis_server: RedisServer) -> dict[str, Any]:
    """The in-process server of this module is a node of the test's Redis cluster."""
    return {"broker": {"type": "redis", "url": redis_server.url, "heartbeat": HEARTBEAT}}


async def test_server_side_publish_reaches_every_node(
    service: Any,
    ws_connect: Any,
    server_process: Start,
    redis_server: RedisServer,
    connect: Connect,
) -> None:
    """Service.publish (what the publish API calls) reaches clients of this node and others."""
    (other,) = start_nodes(server_process, redis_server, 1)
    here, there = await ws_connect(), await connect(other, "news")
    await here.request({"type": "join-room", "room": "news"})
    event = {"type": "broadcast", "message": {"price": 3}, "room": "news", "timestamp": "t"}
    assert service.publish(event, "news") == 1  # recipients on this node
    assert await here.recv() == event
    assert await there.recv() == event
    everyone = {"type": "notice", "message": "all", "timestamp": "t"}
    service.publish(everyone)
    assert await here.recv() == everyone and await there.recv() == everyone


async def test_broadcast_to_all_in_a_namespace_reaches_every_node(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """Defect 14.2: with namespaces besides /, a broadcast to all reaches the clients of the
    sender's namespace on every node, and no one else.  Before the fix it stayed on the
    sender's node."""
    from sio_helpers import SioPeer

    config = node_config(redis_server) + "socketio:\n  namespaces: ['/', '/chat']\n"
    n1, n2 = (server_process(config, env={"REDIS_URL": ""}) for _ in range(2))
    chat1, chat2 = await SioPeer.connect(n1.http, "/chat"), await SioPeer.connect(n2.http, "/chat")
    root2 = await SioPeer.connect(n2.http, "/")
    native1, native2 = await connect(n1), await connect(n2)
    try:
        await chat1.emit("broadcast", {"message": "chat-all"})
        for peer in (chat1, chat2):
            event, got = await peer.recv()
            assert (event, got["message"]) == ("broadcast", "chat-all")
        await native1.send({"type": "broadcast", "message": "root-all"})
        for native in (native1, native2):
            expect_type(await native.recv(), "broadcast", message="root-all")
        assert (await root2.recv())[1]["message"] == "root-all"
        for sio in (chat1, chat2, root2):
            await sio.expect_silence(0.3)
        for native in (native1, native2):
            await native.expect_silence(0.1)
    finally:
        for sio in (chat1, chat2, root2):
            await sio.close()


async def metric(node: ServerProcess, name: str) -> float:
    """One unlabelled metric of a node's /metrics."""
    response = await AsyncHTTPClient().fetch(node.http + "/metrics")
    for line in response.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_received_metric_counts_cross_node_messages(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """miaws_broker_messages_received_total counts the cross-node messages a node read from
    Redis; nothing was dropped."""
    n1, n2 = start_nodes(server_process, redis_server, 2)
    sender, remote = await connect(n1), await connect(n2)
    before = await metric(n2, "miaws_broker_messages_received_total")
    for i in range(5):
        await sender.send({"type": "broadcast", "message": i})
    assert [(await remote.recv())["message"] for _ in range(5)] == list(range(5))
    assert await metric(n2, "miaws_broker_messages_received_total") >= before + 5
    assert await metric(n1, "miaws_broker_messages_dropped_total") == 0
