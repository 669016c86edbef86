"""Limits over real sockets: message rate, flooding, connections, rooms, slow consumers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from conftest import Connect, RawConnect
from helpers import eventually
from rawws import client_frame
from tornado.websocket import websocket_connect

from miaws.cli.check import expect_error, expect_type
from miaws.config import LimitsSettings, build_settings
from miaws.core.model import Client
from miaws.core.ratelimit import RateLimiter
from miaws.service import Service


@pytest.mark.config({"limits": {"messages_per_second": 5, "burst": 5}})
async def test_rate_limit_refuses_excess_then_recovers(ws_connect: Connect) -> None:
    """A burst over the bucket gets rate-limited errors (ids kept); later messages pass again."""
    peer = await ws_connect()
    for i in range(8):
        await peer.send({"type": "ping", "id": i})
    replies = [await peer.recv() for _ in range(8)]
    assert [r["type"] for r in replies] == ["pong"] * 5 + ["error"] * 3
    for i, reply in enumerate(replies[5:], start=5):
        expect_error(reply, "rate-limited", id=i)
        assert 0 < reply["details"]["retryAfter"] <= 0.2
    await asyncio.sleep(0.25)  # one token back at 5/s
    expect_type(await peer.request({"type": "ping"}), "pong")


@pytest.mark.config({"limits": {"messages_per_second": 5, "burst": 5, "flood_close_after": 20}})
async def test_flooding_client_closed_1008_others_unharmed(
    ws_connect: Connect, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that keeps sending (invalid JSON included) is closed 1008; others carry on."""
    caplog.set_level(logging.INFO, "miaws")
    flooder, other = await ws_connect(), await ws_connect()
    for _ in range(200):
        await flooder.send("{not json")
    assert await flooder.closed_with() == 1008
    expect_type(await other.request({"type": "ping"}), "pong")
    await eventually(lambda: service.connected_count() == 1)
    (line,) = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert flooder.welcome["clientId"] in line and "code=1008" in line and "flooding" in line


def test_rate_limiter_strikes_net_of_accepted() -> None:
    """Slightly over the rate: excess refused, never closed; far over it: closed."""
    clock = [0.0]
    limiter = RateLimiter(10, 10, close_after=5, now=lambda: clock[0])
    client = Client("c", "test")
    outcomes = []
    for _ in range(300):  # 15 messages a second against 10 allowed, for 20 s
        clock[0] += 1 / 15
        outcomes.append(limiter.allow(client))
        assert not limiter.flooding(client)
    assert 180 <= outcomes.count(True) <= 215
    for _ in range(20):  # then 100 a second
        clock[0] += 0.01
        limiter.allow(client)
    assert limiter.flooding(client)
    assert RateLimiter.from_settings(LimitsSettings()) is None  # off by default


@pytest.mark.config({"limits": {"max_connections": 2}})
async def test_max_connections_closes_1013(
    ws_connect: Connect, ws_url: str, service: Service
) -> None:
    """One connection over the limit is closed with 1013 without a welcome; a slot frees up."""
    first, _ = await ws_connect(), await ws_connect()
    extra = await websocket_connect(ws_url)
    assert await extra.read_message() is None
    assert extra.close_code == 1013
    extra.close()
    first.close()
    await eventually(lambda: service.connected_count() == 1)
    expect_type((await ws_connect()).welcome, "welcome")


@pytest.mark.config({"limits": {"max_rooms_per_client": 2}})
async def test_max_rooms_per_client(ws_connect: Connect) -> None:
    """A third room is forbidden, naming the limit; rejoining and leaving-then-joining work."""
    peer = await ws_connect()
    for room in ("a", "b", "a"):
        expect_type(await peer.request({"type": "join-room", "room": room}), "room-joined")
    reply = await peer.request({"type": "join-room", "room": "c", "id": "j"})
    expect_error(reply, "forbidden", id="j")
    assert reply["details"] == {"room": "c", "limit": "limits.max_rooms_per_client", "max": 2}
    await peer.request({"type": "leave-room", "room": "a"})
    expect_type(await peer.request({"type": "join-room", "room": "c"}), "room-joined")


@pytest.mark.config({"limits": {"max_room_members": 2}})
async def test_max_room_members(ws_connect: Connect, service: Service) -> None:
    """A full room is forbidden to a newcomer until a member leaves."""
    a, b, c = await ws_connect(), await ws_connect(), await ws_connect()
    for peer in (a, b):
        expect_type(await peer.request({"type": "join-room", "room": "duo"}), "room-joined")
    reply = await c.request({"type": "join-room", "room": "duo"})
    expect_error(reply, "forbidden")
    assert reply["details"]["limit"] == "limits.max_room_members"
    expect_type(await a.request({"type": "join-room", "room": "duo"}), "room-joined")
    await b.request({"type": "leave-room", "room": "duo"})
    expect_type(await c.request({"type": "join-room", "room": "duo"}), "room-joined")
    assert service.rooms_info() == {"duo": 2}


@pytest.mark.config({"limits": {"max_queued_bytes": 65536}})
async def test_slow_consumer_closed_1013_others_not_delayed(
    ws_connect: Connect,
    raw_connect: RawConnect,
    service: Service,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member that stops reading is closed 1013 and logged once its queue passes the cap;
    a reading member gets every broadcast and stays responsive."""
    caplog.set_level(logging.INFO, "miaws")
    slow = await raw_connect(rcvbuf=4096)
    expect_type(await slow.read_json(), "welcome")
    slow.send_json({"type": "join-room", "room": "feed"})
    expect_type(await slow.read_json(), "room-joined")
    fast = await ws_connect()
    await fast.request({"type": "join-room", "room": "feed"})
    # From here on `slow` reads nothing: its kernel buffers fill, then the server's queue.
    blob = "x" * 60000
    count = 0
    started = time.monotonic()
    while not any("slow consumer" in r.getMessage() for r in caplog.records):
        assert count < 1000, "the slow consumer was never detected"
        await fast.send({"type": "broadcast", "message": blob, "room": "feed"})
        msg = await fast.recv()
        expect_type(msg, "broadcast", message=blob)
        count += 1
    elapsed = time.monotonic() - started
    t0 = time.monotonic()
    expect_type(await fast.request({"type": "ping"}), "pong")
    assert time.monotonic() - t0 < 0.5 and elapsed < 10
    # Reading again, the slow client finds what was queued, then the close frame.
    assert await slow.close_code() == 1013
    await eventually(lambda: service.connected_count() == 1, timeout=8)
    line = next(r.getMessage() for r in caplog.records if "slow consumer" in r.getMessage())
    assert "limits.max_queued_bytes is 65536" in line
    assert any("code=1013" in r.getMessage() for r in caplog.records)


def test_limits_config_rejects_negative() -> None:
    """A negative limit stops start-up naming the key."""
    from miaws.config import ConfigError

    with pytest.raises(ConfigError, match="limits.max_room_members has value -1"):
        build_settings({"limits": {"max_room_members": -1}}, environ={})


def test_shipped_defaults_do_not_throttle() -> None:
    """The shipped defaults: no rate limit, no connection or member cap, 1 MiB queue cap."""
    from pathlib import Path

    import yaml

    data: dict[str, Any] = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "config.yaml").read_text()
    )
    limits = build_settings(data, environ={}).limits
    assert (limits.messages_per_second, limits.max_connections, limits.max_room_members) == (
        0,
        0,
        0,
    )
    assert limits.max_queued_bytes == 1048576 and limits.max_rooms_per_client == 1000
    assert json.dumps(data["auth"]["mode"]) == '"none"'


@pytest.mark.config({"limits": {"max_message_bytes": 1000}})
async def test_close_frame_survives_pipelined_input(
    raw_connect: RawConnect, service: Service
) -> None:
    """A client that keeps sending after an oversized (or binary) frame still gets the close
    frame with its code: the server drains its input instead of resetting the connection."""
    for first, code in ((json.dumps({"type": "echo", "message": "a" * 2000}), 1009), (b"", 1003)):
        conn = await raw_connect()
        await conn.read_json()
        if isinstance(first, bytes):
            conn.send_raw(client_frame(first, 0x2))
        else:
            conn.send_text(first)
        for i in range(50):
            conn.send_json({"type": "echo", "message": "x" * 900, "id": i})
        assert await conn.close_code() == code
    await eventually(lambda: service.connected_count() == 0)
