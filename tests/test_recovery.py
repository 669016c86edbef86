"""Recovery over real sockets: join-room with since, and the Python client across cuts."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Connect
from helpers import eventually

from miaws.cli.check import Peer, expect_type
from miaws.client import MiawsClient, backoff_delay
from miaws.service import Service

HISTORY = {"history": {"rooms": [{"match": "feed*", "size": 1000, "ttl": 60}]}}
SMALL = {"history": {"rooms": [{"match": "feed*", "size": 5, "ttl": 60}]}}


async def publish(peer: Peer, room: str, values: range) -> None:
    """Broadcast each value to room, then wait until the server has handled them all."""
    for i in values:
        await peer.send({"type": "broadcast", "room": room, "message": i})
    await peer.send({"type": "ping", "id": "flush"})


class PacedPublisher:
    """Broadcasts 0 .. count-1 to room, pausing 10 ms after every 10, and counts what it has
    sent, so that a test can place connection cuts in the middle of publishing."""

    def __init__(self, peer: Peer, room: str, count: int) -> None:
        self.peer, self.room, self.count = peer, room, count
        self.sent = 0

    async def run(self) -> None:
        for i in range(self.count):
            await self.peer.send({"type": "broadcast", "room": self.room, "message": i})
            self.sent = i + 1
            if i % 10 == 9:
                await asyncio.sleep(0.01)


async def joined_publisher(ws_connect: Connect, room: str) -> Peer:
    """A publisher in room that does not read its own broadcasts back."""
    peer = await ws_connect()
    await peer.request({"type": "join-room", "room": room})
    return peer


@pytest.mark.config(HISTORY)
async def test_room_broadcasts_carry_epoch_and_increasing_seq(ws_connect: Connect) -> None:
    """Broadcasts to a room with history carry one epoch and seq 1, 2, 3; others none."""
    a = await ws_connect()
    reply = await a.request({"type": "join-room", "room": "feed"})
    expect_type(reply, "room-joined", room="feed", seq=0)
    assert "recovered" not in reply
    await a.request({"type": "join-room", "room": "plain"})
    got = []
    for i in range(3):
        await a.send({"type": "broadcast", "room": "feed", "message": i})
        got.append(await a.recv())
    assert [m["seq"] for m in got] == [1, 2, 3]
    assert {m["epoch"] for m in got} == {reply["epoch"]}
    await a.send({"type": "broadcast", "room": "plain", "message": "x"})
    assert "seq" not in await a.recv()


@pytest.mark.config(HISTORY)
async def test_join_since_replays_missed_after_reply_before_new(ws_connect: Connect) -> None:
    """room-joined (recovered: true) comes first, then the missed messages in order, then
    new ones; none twice."""
    pub = await joined_publisher(ws_connect, "feed")
    sub = await ws_connect()
    start = await sub.request({"type": "join-room", "room": "feed"})
    await publish(pub, "feed", range(3))
    seen = [await sub.recv() for _ in range(3)]
    sub.close()
    await publish(pub, "feed", range(3, 8))
    again = await ws_connect()
    since = {"epoch": start["epoch"], "seq": seen[-1]["seq"]}
    await again.send({"type": "join-room", "room": "feed", "since": since, "id": 7})
    await pub.send({"type": "broadcast", "room": "feed", "message": "new"})
    reply = await again.recv()
    expect_type(reply, "room-joined", id=7, recovered=True, epoch=start["epoch"], seq=8)
    rest = [await again.recv() for _ in range(6)]
    assert [m["message"] for m in rest] == [3, 4, 5, 6, 7, "new"]
    assert [m["seq"] for m in rest] == [4, 5, 6, 7, 8, 9]
    await again.expect_silence()


@pytest.mark.config(SMALL)
async def test_gap_larger_than_history_is_not_recovered(ws_connect: Connect) -> None:
    """A gap beyond the kept messages, another epoch, a seq from the future or a room
    without history: recovered false with the current position, and nothing replayed."""
    pub = await joined_publisher(ws_connect, "feed")
    await publish(pub, "feed", range(20))
    sub = await ws_connect()
    epoch = (await sub.request({"type": "join-room", "room": "feed"}))["epoch"]
    for since in (
        {"epoch": epoch, "seq": 3},
        {"epoch": "gone", "seq": 20},
        {"epoch": epoch, "seq": 99},
    ):
        reply = await sub.request({"type": "join-room", "room": "feed", "since": since})
        expect_type(reply, "room-joined", recovered=False, epoch=epoch, seq=20)
    reply = await sub.request(
        {"type": "join-room", "room": "feed", "since": {"epoch": epoch, "seq": 15}}
    )
    expect_type(reply, "room-joined", recovered=True, seq=20)
    assert [(await sub.recv())["seq"] for _ in range(5)] == [16, 17, 18, 19, 20]
    reply = await sub.request(
        {"type": "join-room", "room": "x", "since": {"epoch": epoch, "seq": 1}}
    )
    assert reply["recovered"] is False and "epoch" not in reply
    await sub.expect_silence()


async def test_since_is_checked_by_the_schema(ws_connect: Connect) -> None:
    """A malformed since is invalid-message naming its path."""
    sub = await ws_connect()
    reply = await sub.request(
        {"type": "join-room", "room": "r", "since": {"epoch": "e", "seq": -1}}
    )
    assert reply["code"] == "invalid-message" and reply["details"]["path"] == "/since/seq"


@pytest.mark.config(HISTORY)
async def test_python_client_gets_1000_exactly_once_in_order_across_cuts(
    ws_url: str, ws_connect: Connect, service: Service
) -> None:
    """1000 sequenced room messages while the subscriber's TCP connection is aborted five
    times: the client ends with every message once, in order, and the cuts really fell
    in the middle of publishing."""
    publisher = PacedPublisher(await joined_publisher(ws_connect, "feed"), "feed", 1000)
    cuts_at: list[int] = []
    async with MiawsClient(ws_url, backoff_initial=0.02, backoff_max=0.2) as sub:
        await sub.join("feed")

        async def cutter() -> None:
            for _ in range(5):
                await asyncio.sleep(0.12)
                await eventually(lambda: sub.connection is not None)
                assert sub.connection is not None
                sub.connection.transport.abort()  # RST: no close frame, no goodbye
                cuts_at.append(publisher.sent)

        got: list[Any] = []

        async def collect() -> None:
            async for message in sub:
                got.append(message["message"])
                if message["message"] == 999:
                    return

        await asyncio.wait_for(asyncio.gather(publisher.run(), cutter(), collect()), 30)
    assert got == list(range(1000))
    assert len(cuts_at) == 5 and all(0 < n < 1000 for n in cuts_at), cuts_at
    assert sub.connects == 6


@pytest.mark.config(SMALL)
async def test_python_client_reports_failed_recovery(
    ws_url: str, ws_connect: Connect, service: Service
) -> None:
    """The client is away while more messages than the history holds go by: the callback
    gets recovered false with the current position, and the client goes on from there."""
    pub = await joined_publisher(ws_connect, "feed")
    failures: list[tuple[str, dict[str, Any]]] = []
    sub = MiawsClient(
        ws_url, backoff_initial=1.0, on_recovery_failed=lambda r, m: failures.append((r, m))
    )
    async with sub:
        first = await sub.join("feed")
        assert sub.connection is not None
        sub.connection.transport.abort()
        await eventually(lambda: service.connected_count() == 1)  # only the publisher
        await publish(pub, "feed", range(20))
        await eventually(lambda: len(failures) == 1)
        room, reply = failures[0]
        assert room == "feed"
        expect_type(reply, "room-joined", recovered=False, epoch=first["epoch"], seq=20)
        await publish(pub, "feed", range(20, 21))
        message = await sub.recv(timeout=5)
        assert (message["message"], message["seq"]) == (20, 21)
        assert sub.positions["feed"] == (first["epoch"], 21)


async def test_python_client_request_reply_and_iteration(ws_url: str, ws_connect: Connect) -> None:
    """request() pairs replies by id; other messages come through iteration."""
    async with MiawsClient(ws_url) as client:
        assert client.client_id
        pong = await client.request({"type": "ping"})
        assert pong["type"] == "pong" and pong["id"].startswith("py-")
        err = await client.request({"type": "nope", "id": 42})
        assert (err["type"], err["code"], err["id"]) == ("error", "unknown-type", 42)
        await client.join("r")
        other = await ws_connect()
        await other.request({"type": "join-room", "room": "r"})
        await other.send({"type": "broadcast", "room": "r", "message": "hi"})
        message = await client.recv(timeout=5)
        assert (message["type"], message["message"]) == ("broadcast", "hi")


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    """Delays double per attempt between half and all of the capped value."""
    assert [backoff_delay(n, 0.1, 1.0, lambda: 1.0) for n in range(6)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]
    assert [backoff_delay(n, 0.1, 1.0, lambda: 0.0) for n in range(3)] == [0.05, 0.1, 0.2]


@pytest.mark.config(HISTORY)
async def test_server_side_publish_is_stamped_and_recovered(
    ws_connect: Connect, service: Service
) -> None:
    """Messages published through Service.publish (as the publish API does) are kept even
    while the room has no member, and a returning client recovers them."""
    sub = await ws_connect()
    start = await sub.request({"type": "join-room", "room": "feed"})
    sub.close()
    await eventually(lambda: service.connected_count() == 0)
    for i in range(3):
        assert service.publish({"type": "broadcast", "message": i, "room": "feed"}, "feed") == 0
    again = await ws_connect()
    since = {"epoch": start["epoch"], "seq": 0}
    reply = await again.request({"type": "join-room", "room": "feed", "since": since})
    expect_type(reply, "room-joined", recovered=True, seq=3)
    assert [(await again.recv())["message"] for _ in range(3)] == [0, 1, 2]


BLOB_PLUGIN = """
from miaws import MessageType, hookimpl

def handle_blob(ctx, message):
    ctx.broadcast({"type": "blob", "data": b"\\x00\\x01"}, message["room"])

@hookimpl
def register_message_types():
    schema = {"type": "object", "properties": {"room": {"type": "string"}}}
    return [MessageType("blob", handle_blob, schema=schema)]
"""


async def test_a_broadcast_that_cannot_be_encoded_takes_no_seq_and_is_not_kept(
    tmp_path: Path, server_process: Any
) -> None:
    """A plugin broadcasts bytes to a room with history (#20): the broker refuses it before
    stamping it and the sender is closed 1011 as for a failing handler; the members see seq
    1, 2 with no jump, and a join since seq 0 recovers both broadcasts (nothing
    undeliverable was kept to break it)."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "blob.py").write_text(textwrap.dedent(BLOB_PLUGIN))
    config = {
        "server": {"host": "127.0.0.1"},
        "plugins": {"enabled": ["ping", "broadcast", "rooms", "blob"], "paths": ["p"]},
        "history": {"rooms": [{"match": "feed*", "size": 10, "ttl": 60}]},
    }
    server = server_process(json.dumps(config))
    member, sender, other = [await Peer.connect(server.url) for _ in range(3)]
    late: Peer | None = None
    try:
        start = await member.request({"type": "join-room", "room": "feed"})
        for peer in (sender, other):
            await peer.request({"type": "join-room", "room": "feed"})
        await other.send({"type": "broadcast", "room": "feed", "message": "a"})
        await sender.send({"type": "blob", "room": "feed"})
        while await asyncio.wait_for(sender.conn.read_message(), 5) is not None:
            pass  # its copy of "a", then the close of a failing handler
        assert sender.conn.close_code == 1011
        await other.send({"type": "broadcast", "room": "feed", "message": "b"})
        live = [await member.recv() for _ in range(2)]
        assert [(m["message"], m["seq"]) for m in live] == [("a", 1), ("b", 2)]
        late = await Peer.connect(server.url)
        since = {"epoch": start["epoch"], "seq": 0}
        reply = await late.request({"type": "join-room", "room": "feed", "since": since})
        expect_type(reply, "room-joined", recovered=True, seq=2)
        replayed = [await late.recv() for _ in range(2)]
        assert [(m["message"], m["seq"]) for m in replayed] == [("a", 1), ("b", 2)]
        expect_type(await late.request({"type": "ping"}), "pong")
    finally:
        for peer in (member, sender, other, late):
            if peer is not None:
                peer.close()
    log = (tmp_path / f"server-{server.port}.log").read_text()
    assert "handler failed for clientId=" in log and "TypeError" in log
