"""Presence, join/leave events and signed webhooks on one node (memory broker), over real
sockets, with a webhook receiver on 127.0.0.1 that verifies every signature (#18)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Connect
from helpers import eventually
from sio_helpers import SioPeer
from tornado.httpclient import AsyncHTTPClient
from webhook_receiver import WebhookReceiver

from miaws.cli.check import Peer, expect_error, expect_type
from miaws.config import ConfigError, build_settings
from miaws.service import Service

SECRET = "s3cret"
DELAY = 0.3  # rooms.leave_delay of these tests
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
USERS = {"auth": {"mode": "token", "tokens": TOKENS}}  # a config marker: clients with users
RULES = [
    {"match": "team:*", "presence": True, "join_leave": True},
    {"match": "quiet:*", "presence": True},
    {"match": "hist:*", "history": {"size": 10, "ttl": 60}},
]


@pytest.fixture
def receiver(io_loop: Any, request: pytest.FixtureRequest) -> Iterator[WebhookReceiver]:
    marker = request.node.get_closest_marker("fail_first")
    hook = WebhookReceiver(SECRET, fail_first=marker.args[0] if marker else 0)
    yield hook
    hook.close()


@pytest.fixture
def config_data(receiver: WebhookReceiver, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Rooms rules, static tokens and one webhook to the test's receiver; a test's own
    ``config`` marker is merged over them."""
    data: dict[str, Any] = {
        "rooms": {"leave_delay": DELAY, "rules": RULES},
        "webhooks": {"endpoints": [{"url": receiver.url, "secret": SECRET}]},
    }
    marker = request.node.get_closest_marker("config")
    for section, values in (marker.args[0] if marker else {}).items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return data


Join = Any  # await join(token_or_None, *rooms) -> Peer


@pytest.fixture
def join(ws_connect: Connect, ws_url: str) -> Join:
    """``await join(token, *rooms)``: a connection (with a static token, or None for none)
    that has joined rooms and read the replies."""

    async def open_peer(token: str | None, *rooms: str) -> Peer:
        peer = await ws_connect(ws_url + (f"?token={token}" if token else ""))
        for room in rooms:
            await peer.send({"type": "join-room", "room": room})
            await until(peer, "room-joined")
        return peer

    return open_peer


async def until(peer: Peer, kind: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Read until a message of kind (with these fields); the ones before it are kept in
    ``peer.skipped``."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await peer.recv(max(0.01, deadline - time.monotonic()))
        if msg["type"] == kind and all(msg.get(k) == v for k, v in fields.items()):
            return msg
        peer.skipped = [*getattr(peer, "skipped", []), msg]  # type: ignore[attr-defined]


async def no_member_events(peer: Peer, seconds: float) -> None:
    """Within seconds, peer gets no member-joined / member-left."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(peer.conn.read_message(), left)
        except asyncio.TimeoutError:
            return
        assert msg is not None and "member-" not in msg, msg


def members_of(reply: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(m["clientId"], m["user"]) for m in reply["members"]]


# ---------------------------------------------------------------- the presence request


@pytest.mark.config(USERS)
async def test_presence_lists_members_and_counts_each_user_once(join: Join) -> None:
    """Two connections of alice and one of bob: three members, count 2, oldest first."""
    a1 = await join("tok-alice", "team:1")
    a2 = await join("tok-alice", "team:1")
    bob = await join("tok-bob", "team:1")
    await bob.send({"type": "presence", "room": "team:1", "id": 7})
    reply = await until(bob, "presence")
    assert reply["id"] == 7 and reply["room"] == "team:1" and reply["count"] == 2
    assert members_of(reply) == [
        (a1.welcome["clientId"], "alice"),
        (a2.welcome["clientId"], "alice"),
        (bob.welcome["clientId"], "bob"),
    ]
    assert all(isinstance(m["since"], int) for m in reply["members"])
    assert "truncated" not in reply


async def test_presence_of_clients_without_a_user_counts_each_connection(join: Join) -> None:
    peers = [await join(None, "quiet:1") for _ in range(3)]
    await peers[0].send({"type": "presence", "room": "quiet:1"})
    reply = await until(peers[0], "presence")
    assert reply["count"] == 3
    assert {c for c, _ in members_of(reply)} == {p.welcome["clientId"] for p in peers}


async def test_presence_refuses_non_members_and_rooms_without_presence(join: Join) -> None:
    """not-in-room for a non-member; forbidden where the rule has no presence (or no rule);
    the connection lives on."""
    inside = await join(None, "team:1", "hist:1", "plain")
    outside = await join(None)
    expect_error(await outside.request({"type": "presence", "room": "team:1"}), "not-in-room")
    for room in ("hist:1", "plain"):
        reply = await inside.request({"type": "presence", "room": room})
        expect_error(reply, "forbidden", details={"room": room})
    expect_error(await inside.request({"type": "presence"}), "invalid-message")
    expect_type(await inside.request({"type": "ping"}), "pong")


@pytest.mark.config({"rooms": {"presence_max_members": 2}})
async def test_long_member_lists_are_capped_and_say_so(join: Join) -> None:
    peers = [await join(None, "team:big") for _ in range(4)]
    await peers[3].send({"type": "presence", "room": "team:big"})
    reply = await until(peers[3], "presence")
    assert reply["count"] == 4 and reply["truncated"] is True and reply["limit"] == 2
    assert [c for c, _ in members_of(reply)] == [p.welcome["clientId"] for p in peers[:2]]


async def test_presence_over_socket_io_sees_native_members(join: Join, port: int) -> None:
    """Both transports share rooms: a Socket.IO member's presence lists the native one, and
    it gets member-joined when a native client joins."""
    sio = await SioPeer.connect(f"http://127.0.0.1:{port}")
    try:
        ack = await sio.call("join-room", {"room": "team:x"})
        assert ack["type"] == "room-joined"
        native = await join(None, "team:x")
        while (event := await sio.recv())[0] != "member-joined" or (
            event[1]["clientId"] != native.welcome["clientId"]
        ):
            pass
        reply = await sio.call("presence", {"room": "team:x"})
        assert reply["type"] == "presence" and reply["count"] == 2
        assert native.welcome["clientId"] in [c for c, _ in members_of(reply)]
        await sio.close()
        left = await until(native, "member-left")
        assert left["clientId"] == sio.client_id
    finally:
        await sio.close()


# ---------------------------------------------------------------- join / leave events


@pytest.mark.config(USERS)
async def test_member_events_count_users_and_wait_for_the_leave_delay(join: Join) -> None:
    """A second connection of a user is no join; the user leaves when its last connection
    has been gone for rooms.leave_delay; rooms without join_leave get no events."""
    watcher = await join("tok-bob", "team:1", "quiet:1")
    a1 = await join("tok-alice", "team:1", "quiet:1")
    joined = await until(watcher, "member-joined", user="alice")
    assert joined == {
        "type": "member-joined",
        "room": "team:1",
        "clientId": a1.welcome["clientId"],
        "user": "alice",
        "timestamp": joined["timestamp"],
    }
    a2 = await join("tok-alice", "team:1")
    a1.close()
    await no_member_events(watcher, DELAY + 0.3)  # alice is still there through a2
    gone_at = time.monotonic()
    a2.close()
    left = await until(watcher, "member-left")
    assert time.monotonic() - gone_at >= DELAY - 0.05
    assert left["room"] == "team:1" and left["user"] == "alice"
    assert left["clientId"] == a2.welcome["clientId"]
    await no_member_events(watcher, 0.3)  # none for quiet:1, whose rule has no join_leave


async def test_leaving_and_coming_back_within_the_delay_is_no_event(join: Join) -> None:
    watcher = await join(None, "team:1")
    peer = await join(None, "team:1")
    await until(watcher, "member-joined", clientId=peer.welcome["clientId"])
    for _ in range(5):
        await peer.send({"type": "leave-room", "room": "team:1"})
        await until(peer, "room-left")
        await peer.send({"type": "join-room", "room": "team:1"})
        await until(peer, "room-joined")
    await no_member_events(watcher, DELAY + 0.3)


# ---------------------------------------------------------------- webhooks


@pytest.mark.config(USERS)
async def test_webhooks_post_signed_lifecycle_events(
    join: Join, receiver: WebhookReceiver, service: Service
) -> None:
    """client-connected, room-occupied, member-added; then member-removed and room-vacated
    after the delay, and client-disconnected; every POST signed and verified."""
    alice = await join("tok-alice", "team:w")
    me = alice.welcome["clientId"]
    await receiver.wait_for("member-added")
    gone_at = time.monotonic()
    alice.close()
    await receiver.wait_for("room-vacated")
    vacated_at = next(t for t, e in receiver.events if e["event"] == "room-vacated")
    assert vacated_at - gone_at >= DELAY - 0.05
    assert receiver.kinds() == [
        "client-connected",
        "room-occupied",
        "member-added",
        "client-disconnected",
        "member-removed",
        "room-vacated",
    ]
    assert receiver.of("client-connected")[0] == {
        "event": "client-connected",
        "clientId": me,
        "user": "alice",
        "transport": "ws",
    }
    assert receiver.of("room-occupied") == [{"event": "room-occupied", "room": "team:w"}]
    member = {"room": "team:w", "clientId": me, "user": "alice"}
    assert receiver.of("member-added") == [{"event": "member-added", **member}]
    assert receiver.of("member-removed") == [{"event": "member-removed", **member}]
    assert receiver.of("client-disconnected")[0]["code"] == 1000
    assert receiver.bad_signatures == 0 and receiver.attempts == len(receiver.posts)


async def test_webhooks_batch_events_that_come_fast(join: Join, receiver: WebhookReceiver) -> None:
    peers = [await join(None) for _ in range(20)]
    await receiver.wait_for("client-connected", 20)
    assert len(receiver.posts) < 20  # several events per POST
    assert receiver.bad_signatures == 0
    assert len(peers) == 20


LONG_DELAY = 2.0  # a reconnect must come within it, even on a loaded machine


@pytest.mark.config({**USERS, "rooms": {"leave_delay": LONG_DELAY}})
async def test_a_hundred_quick_reconnects_make_no_occupied_vacated_pair(
    join: Join, receiver: WebhookReceiver
) -> None:
    """A user who reconnects 100 times in a row within the leave delay: one room-occupied,
    and one room-vacated only after the last goes."""
    peer = await join("tok-alice", "team:flap")
    await receiver.wait_for("room-occupied")
    for _ in range(100):
        peer.close()
        peer = await join("tok-alice", "team:flap")
    await asyncio.sleep(0.5)
    assert receiver.kinds("team:flap") == ["room-occupied", "member-added"]
    peer.close()
    await receiver.wait_for("room-vacated", timeout=LONG_DELAY + 8)
    assert receiver.kinds("team:flap") == [
        "room-occupied",
        "member-added",
        "member-removed",
        "room-vacated",
    ]
    assert len(receiver.of("client-connected")) == 101
    assert receiver.bad_signatures == 0


@pytest.mark.fail_first(2)
@pytest.mark.config({"webhooks": {"retry_for": 30}})
async def test_webhooks_are_retried_until_the_receiver_takes_them(
    join: Join, receiver: WebhookReceiver, port: int
) -> None:
    """The receiver answers 503 twice: the sender retries (back-off) and the events arrive
    once, in order."""
    peer = await join(None, "team:r")
    await receiver.wait_for("member-added", timeout=15)
    assert receiver.attempts >= 3
    assert receiver.kinds() == ["client-connected", "room-occupied", "member-added"]
    assert receiver.bad_signatures == 0
    metrics = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body.decode()
    assert 'miaws_webhook_posts_total{result="error"} 2.0' in metrics
    assert peer.welcome["clientId"] == receiver.of("member-added")[0]["clientId"]


@pytest.mark.fail_first(10_000)
@pytest.mark.config({"webhooks": {"retry_for": 1}})
async def test_webhooks_given_up_are_counted_and_logged(
    join: Join, receiver: WebhookReceiver, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    await join(None)

    async def dropped() -> bool:
        body = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body
        return f'miaws_webhook_events_dropped_total{{url="{receiver.url}"}} 1.0' in body.decode()

    deadline = time.monotonic() + 8
    while not await dropped():
        assert time.monotonic() < deadline, "the dropped event was not counted"
        await asyncio.sleep(0.1)
    assert any("events dropped (retried for 1 s" in r.getMessage() for r in caplog.records)
    assert receiver.posts == []


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"rooms": {"leave_delay": -1}}, "rooms.leave_delay"),
        ({"rooms": {"rules": [{"match": ""}]}}, "rooms.rules[0].match"),
        ({"rooms": {"rules": [{"match": "a", "presense": True}]}}, "rooms.rules"),
        ({"rooms": {"rules": [{"match": "a", "history": {"size": 0}}]}}, "rooms.rules[0].history"),
        ({"rooms": {"presence_max_members": -1}}, "rooms.presence_max_members"),
        ({"webhooks": [{"url": "ftp://x", "secret": "s"}]}, "webhooks.endpoints[0].url"),
        ({"webhooks": [{"url": "http://x"}]}, "webhooks.endpoints[0]"),
        ({"webhooks": [{"url": "http://x", "secret_env": "NOT_SET"}]}, "webhooks.endpoints[0]"),
        ({"webhooks": [{"url": "http://x", "secret": "s", "events": ["x"]}]}, "events"),
        ({"webhooks": {"retry_for": 0}}, "webhooks.retry_for"),
    ],
)
def test_bad_room_and_webhook_settings_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_settings(data, source="config.yaml", environ={})
    text = str(info.value)
    assert text.startswith("config.yaml: ") and key in text and "\n" not in text


def test_secret_env_is_read_from_the_environment() -> None:
    data = {"webhooks": [{"url": "http://x/h", "secret_env": "HOOK_SECRET"}]}
    settings = build_settings(data, environ={"HOOK_SECRET": "abc"})
    assert settings.webhooks.endpoints[0].secret == "abc"


def test_history_in_a_rule_means_the_same_as_history_rooms() -> None:
    """rooms.rules are matched first; a rule without history keeps its rooms history-less
    even where a later history.rooms rule would match."""
    s = build_settings(
        {
            "rooms": {
                "rules": [{"match": "a:*", "history": {"size": 5, "ttl": 9}}, {"match": "b:*"}]
            },
            "history": {"rooms": [{"match": "*", "size": 3}]},
        },
        environ={},
    )
    service = Service.from_settings(s)
    assert service.broker.history_covers("a:1") and service.broker.history_covers("c:1")
    assert not service.broker.history_covers("b:1")


def test_bad_rooms_setting_stops_serve_with_exit_2(tmp_path: Any) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "config.yaml"
    cfg.write_text("rooms:\n  leave_delay: soon\n")
    proc = subprocess.run(
        [sys.executable, "-m", "miaws", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "rooms.leave_delay has value 'soon'" in lines[0], proc.stderr


async def test_rooms_are_counted_as_the_registry_says(join: Join, service: Service) -> None:
    await join(None, "team:c")
    await eventually(lambda: service.rooms_info() == {"team:c": 1})


@pytest.mark.config({**USERS, "webhooks": {"endpoints": []}})  # no webhook tracks every room
async def test_the_presence_api_answers_for_operators(join: Join, port: int) -> None:
    """GET /api/presence?room=KEY: the presence of a tracked room (every node), or this
    node's members of any other room."""
    alice = await join("tok-alice", "team:api", "plain")
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}/api/presence?room="
    body = json.loads((await client.fetch(base + "team:api")).body)
    assert body["scope"] == "cluster" and body["count"] == 1
    assert members_of(body) == [(alice.welcome["clientId"], "alice")]
    body = json.loads((await client.fetch(base + "plain")).body)
    assert body["scope"] == "local" and body["members"][0]["since"] is None
    missing = await client.fetch(base, raise_error=False)
    assert missing.code == 400


# ---------------------------------------------------------------- member events and history

LOGGED = [{"match": "log:*", "join_leave": True, "history": {"size": 3, "ttl": 60}}]


async def read_into(seen: list[dict[str, Any]], peer: Peer, kind: str, **fields: Any) -> None:
    """Read into seen until a message of kind with these fields (bounded)."""
    while True:
        msg = await peer.recv(5.0)
        seen.append(msg)
        if msg["type"] == kind and all(msg.get(k) == v for k, v in fields.items()):
            return


@pytest.mark.config({"rooms": {"rules": LOGGED}})
async def test_member_events_take_no_seq_and_are_not_kept_in_history(join: Join) -> None:
    """In a room with join_leave and a history of 3 (#18): member-joined / member-left carry
    no epoch or seq and are not replayed; the broadcasts' seqs are 1, 2, 3 whatever the
    visitors did in between, and a join since seq 0 recovers exactly those 3."""
    watcher = await join(None)
    start = await watcher.request({"type": "join-room", "room": "log:1"})
    seen: list[dict[str, Any]] = []
    for i in range(3):
        visitor = await join(None, "log:1")
        await read_into(seen, watcher, "member-joined", clientId=visitor.welcome["clientId"])
        visitor.close()
        await read_into(seen, watcher, "member-left", clientId=visitor.welcome["clientId"])
        await watcher.send({"type": "broadcast", "room": "log:1", "message": i})
    await read_into(seen, watcher, "broadcast", message=2)
    late = await join(None)
    reply = await late.request(
        {"type": "join-room", "room": "log:1", "since": {"epoch": start["epoch"], "seq": 0}}
    )
    expect_type(reply, "room-joined", recovered=True, epoch=start["epoch"], seq=3)
    replayed = [await late.recv() for _ in range(3)]
    await read_into(seen, watcher, "member-joined", clientId=late.welcome["clientId"])
    events = [m for m in seen if m["type"] != "broadcast"]
    kinds = ["member-joined"] + ["member-joined", "member-left"] * 3 + ["member-joined"]
    assert [m["type"] for m in events] == kinds  # the watcher's own join first
    assert events and all("seq" not in m and "epoch" not in m for m in events)
    assert [m["seq"] for m in seen if m["type"] == "broadcast"] == [1, 2, 3]
    assert [(m["type"], m["message"], m["seq"]) for m in replayed] == [
        ("broadcast", i, i + 1) for i in range(3)
    ]
    await late.send({"type": "broadcast", "room": "log:1", "message": "next"})
    expect_type(await until(late, "broadcast"), "broadcast", message="next", seq=4)
