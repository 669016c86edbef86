"""Interest-based routing on one real redis-server (#17): a node subscribes to the channel of a
room's partition while it has local members there, and so reads nothing of the rooms it has
no member in (unless they share a partition with one it has, which it drops and counts)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
import redis
from helpers import ServerProcess, eventually
from redis_server import RedisServer
from test_scaling import Connect, Start, metric

from miaws.broker.redis_keys import RedisKeys
from miaws.cli.check import expect_type

PARTITIONS = 16
DELAY = 0.5  # broker.unsubscribe_delay
KEYS = RedisKeys("miaws", PARTITIONS)


def routing_config(redis_server: RedisServer, partitions: int = PARTITIONS) -> str:
    return (
        "server:\n  host: 127.0.0.1\n"
        f"broker:\n  type: redis\n  url: {redis_server.url}\n  heartbeat: 0.5\n"
        f"  partitions: {partitions}\n  unsubscribe_delay: {DELAY}\n  probe_interval: 0.5\n"
    )


def nodes(server_process: Start, redis_server: RedisServer, n: int) -> list[ServerProcess]:
    config = routing_config(redis_server)
    return [server_process(config, env={"REDIS_URL": ""}) for _ in range(n)]


def rooms_in(partition: int, count: int) -> list[str]:
    """count room names that hash into partition."""
    names = (f"room{i}" for i in itertools.count())
    return list(itertools.islice((r for r in names if KEYS.partition(r) == partition), count))


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def subscribers(client: redis.Redis, room: str) -> int:
    """Nodes subscribed to room's partition channel (PUBSUB NUMSUB)."""
    return int(
        dict(client.pubsub_numsub(KEYS.room_channel(room)))[KEYS.room_channel(room).encode()]
    )


async def test_a_node_with_no_member_in_a_rooms_partition_receives_nothing_of_it(
    server_process: Start, redis_server: RedisServer, connect: Connect, sync_redis: redis.Redis
) -> None:
    """Three nodes; room r has members on n1 and n3 only: n3 reads r's 20 messages, n2 (whose
    client is in a room of another partition) reads none, and Redis counts two subscribers."""
    n1, n2, n3 = nodes(server_process, redis_server, 3)
    (r,) = rooms_in(1, 1)
    (elsewhere,) = rooms_in(2, 1)
    sender, member = await connect(n1, r), await connect(n3, r)
    bystander = await connect(n2, elsewhere)
    assert subscribers(sync_redis, r) == 2
    before = {n: await metric(n, "miaws_broker_messages_received_total") for n in (n2, n3)}
    for i in range(20):
        await sender.send({"type": "broadcast", "room": r, "message": i})
    assert [(await member.recv())["message"] for _ in range(20)] == list(range(20))
    await bystander.expect_silence(0.3)
    assert await metric(n3, "miaws_broker_messages_received_total") == before[n3] + 20
    assert await metric(n2, "miaws_broker_messages_received_total") == before[n2]
    assert await metric(n2, "miaws_broker_partitions") == 1


async def test_a_room_sharing_a_partition_is_read_and_skipped(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """Rooms a and b share a partition; n2 has a member of a only: it reads b's messages,
    delivers none of them and counts each as skipped."""
    n1, n2 = nodes(server_process, redis_server, 2)
    a, b = rooms_in(3, 2)
    sender = await connect(n1, b)
    member_of_a = await connect(n2, a)
    skipped = await metric(n2, "miaws_broker_messages_skipped_total")
    for i in range(10):
        await sender.send({"type": "broadcast", "room": b, "message": i})
    await member_of_a.expect_silence(0.5)
    assert await metric(n2, "miaws_broker_messages_skipped_total") == skipped + 10
    assert await metric(n2, "miaws_broker_messages_dropped_total") == 0


async def test_subscribed_on_the_first_join_let_go_after_the_delay_flapping_costs_nothing(
    server_process: Start, redis_server: RedisServer, connect: Connect, sync_redis: redis.Redis
) -> None:
    """The partition is subscribed to when a room of it gets its first member; a leave and a
    join again within broker.unsubscribe_delay send no command; after the last leave it is
    let go once the delay has passed."""
    (n1,) = nodes(server_process, redis_server, 1)
    (r,) = rooms_in(5, 1)
    peer = await connect(n1)
    assert subscribers(sync_redis, r) == 0
    expect_type(await peer.request({"type": "join-room", "room": r}), "room-joined")
    assert subscribers(sync_redis, r) == 1

    def calls(command: str) -> int:
        stats = sync_redis.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    subscribes, unsubscribes = calls("subscribe"), calls("unsubscribe")
    for _ in range(5):  # flapping
        expect_type(await peer.request({"type": "leave-room", "room": r}), "room-left")
        expect_type(await peer.request({"type": "join-room", "room": r}), "room-joined")
    await asyncio.sleep(DELAY + 0.3)
    assert (calls("subscribe"), calls("unsubscribe")) == (subscribes, unsubscribes)
    assert subscribers(sync_redis, r) == 1

    expect_type(await peer.request({"type": "leave-room", "room": r}), "room-left")
    assert subscribers(sync_redis, r) == 1  # not yet: the delay
    await eventually(lambda: subscribers(sync_redis, r) == 0, timeout=DELAY + 3)
    assert calls("unsubscribe") == unsubscribes + 1


async def test_a_message_right_after_room_joined_reaches_the_new_member(
    server_process: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """room-joined comes once the node is subscribed to the room's partition, so a message
    another node sends right after it arrives (each room here a partition not yet held)."""
    n1, n2 = nodes(server_process, redis_server, 2)
    sender = await connect(n1)
    for p in range(6, 12):
        (r,) = rooms_in(p, 1)
        expect_type(await sender.request({"type": "join-room", "room": r}), "room-joined")
        member = await connect(n2, r)  # returns after room-joined
        await sender.send({"type": "broadcast", "room": r, "message": p})
        expect_type(await member.recv(), "broadcast", message=p, room=r)
        expect_type(await sender.recv(), "broadcast", message=p)  # its own, back
        member.close()


async def test_after_a_lost_subscription_every_partition_is_resubscribed_512_a_command(
    server_process: Start, redis_server: RedisServer, connect: Connect, sync_redis: redis.Redis
) -> None:
    """A node in rooms of 600 partitions (and its 2 own channels): CLIENT KILL TYPE pubsub, and it
    subscribes to all 602 again in 2 SUBSCRIBE commands, and then delivers again."""
    config = routing_config(redis_server, partitions=1024)
    n1, n2 = (server_process(config, env={"REDIS_URL": ""}) for _ in range(2))
    keys = RedisKeys("miaws", 1024)
    names = (f"room{i}" for i in itertools.count())
    rooms: dict[int, str] = {}
    for name in names:
        rooms.setdefault(keys.partition(name), name)
        if len(rooms) == 600:
            break
    member = await connect(n2)
    for room in rooms.values():
        await member.send({"type": "join-room", "room": room})
    for _ in rooms:
        expect_type(await member.recv(), "room-joined")
    assert await metric(n2, "miaws_broker_partitions") == 600
    subscribes = int(sync_redis.info("commandstats")["cmdstat_subscribe"]["calls"])
    sync_redis.client_kill_filter(_type="pubsub")
    # n2: its 602 channels in 2 commands; n1 (no room): its 2 in 1
    await eventually(lambda: _subscribes(sync_redis) >= subscribes + 3, timeout=5)
    channels = [keys.partition_channel(p) for p in rooms]
    assert set(dict(sync_redis.pubsub_numsub(*channels)).values()) == {1}
    await asyncio.sleep(0.3)
    assert _subscribes(sync_redis) - subscribes == 3
    sender = await connect(n1, next(iter(rooms.values())))
    await sender.send({"type": "broadcast", "room": next(iter(rooms.values())), "message": "back"})
    expect_type(await member.recv(), "broadcast", message="back")


def _subscribes(client: redis.Redis) -> int:
    return int(client.info("commandstats")["cmdstat_subscribe"]["calls"])
