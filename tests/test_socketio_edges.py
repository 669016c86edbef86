"""Socket.IO edges a tester found (issue 20): input python-socketio reads but a /ws frame could
not carry, long-polling bursts and queues, and Engine.IO's own query parameters.  Long-polling
is driven over raw HTTP (Engine.IO protocol 4) so every packet is seen."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import Connect
from http_backend import TestBackend
from sio_helpers import SioPeer
from test_backend_auth import AUTH, connect_script
from tornado.httpclient import AsyncHTTPClient

from miaws.cli.check import expect_type

SEP = "\x1e"  # Engine.IO 4's packet separator in a polling payload


class Polling:
    """One Engine.IO long-polling session over plain HTTP requests, each on a new
    connection (as a browser's concurrent GET and POST are)."""

    def __init__(self, port: int, sid: str, headers: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling&sid={sid}"
        self.headers = headers
        self.packets: list[str] = []

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None) -> Polling:
        client = AsyncHTTPClient(force_instance=True)
        url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling&t=a1"
        response = await client.fetch(url, headers=headers or {})
        body = response.body.decode()
        assert body.startswith("0{"), body
        session = cls(port, json.loads(body[1:])["sid"], headers or {})
        await session.post("40")
        return session

    async def post(self, *packets: str) -> None:
        client = AsyncHTTPClient(force_instance=True)
        response = await client.fetch(
            self.url, method="POST", body=SEP.join(packets), headers=self.headers
        )
        assert response.code == 200 and response.body == b"OK", response.body

    async def poll(self) -> list[str]:
        """One GET: the packets the server had for this session (a ping answered)."""
        client = AsyncHTTPClient(force_instance=True)
        response = await client.fetch(self.url, headers=self.headers, request_timeout=10)
        got = response.body.decode().split(SEP)
        if "2" in got:
            await self.post("3")
        got = [p for p in got if p != "2"]
        self.packets += got
        return got

    async def until(self, done: Any, rounds: int = 50) -> list[str]:
        for _ in range(rounds):
            if done(self.packets):
                return self.packets
            await self.poll()
        raise AssertionError(f"never done; last packets {self.packets[-5:]}")


def events(packets: list[str], name: str) -> list[Any]:
    return [json.loads(p[2:])[1] for p in packets if p.startswith(f'42["{name}"')]


async def test_binary_data_is_an_error_and_reaches_no_one(port: int) -> None:
    """A binary attachment is no JSON: an `invalid-message` error in the ack, nothing
    broadcast, and the connection carries on."""
    url = f"http://127.0.0.1:{port}"
    sender, member = await SioPeer.connect(url), await SioPeer.connect(url)
    try:
        for peer in (sender, member):
            await peer.call("join-room", {"room": "h1"})
            expect_type((await peer.recv())[1], "room-joined")
        ack = await sender.call("broadcast", {"room": "h1", "message": {"blob": b"\x00\x01"}})
        assert ack["type"] == "error" and ack["code"] == "invalid-message", ack
        assert ack["details"] == {"path": "/message/blob", "reason": "binary data is not JSON"}
        event, error = await sender.recv()
        assert (event, error["code"]) == ("error", "invalid-message")
        await member.expect_silence(0.3)
        ack = await sender.call("broadcast", {"room": "h1", "message": "after"})
        assert ack["message"] == "after"
        assert (await member.recv())[1]["message"] == "after"
    finally:
        await sender.close()
        await member.close()


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"message": math.nan}, id="NaN"),
        pytest.param({"message": math.inf}, id="Infinity"),
        pytest.param({"message": json.loads("[" * 200 + "]" * 200)}, id="200-deep"),
    ],
)
async def test_what_a_ws_frame_could_not_carry_is_invalid_json(port: int, message: Any) -> None:
    """NaN, an infinity (python-socketio's reader takes both) and nesting past 128 levels
    (miaws's own reader takes the text) are refused as on /ws: `invalid-json`."""
    peer = await SioPeer.connect(f"http://127.0.0.1:{port}")
    try:
        ack = await peer.call("echo", message)
        assert ack["type"] == "error" and ack["code"] == "invalid-json", ack
        assert (await peer.call("ping", {}))["type"] == "pong"  # the connection lives on
    finally:
        await peer.close()


async def test_a_polling_burst_of_forty_events_is_answered_in_full(port: int) -> None:
    """python-engineio's decoder refuses more than 16 packets in one POST (answered 200
    all the same, so the client thinks them sent); miaws lifts that cap."""
    session = await Polling.open(port)
    await session.post(*(f'42{i}["echo",{{"message":{i}}}]' for i in range(1, 41)))
    acks = await session.until(lambda ps: sum(p.startswith("43") for p in ps) >= 40)
    assert sorted(int(p[2 : p.index("[")]) for p in acks if p.startswith("43")) == list(
        range(1, 41)
    )


async def test_a_polling_member_that_reads_is_no_slow_consumer(
    port: int, ws_connect: Connect
) -> None:
    """The queue cap counts the bytes waiting for a polling client: 300 small broadcasts and
    one of 20 KB (some 35 KB) reach it in full under the 1 MiB default; the estimate before
    (packets queued x the newest one's size) called it 6 MB and closed it with 1013."""
    session = await Polling.open(port)
    await session.post('421["join-room",{"room":"q"}]')
    await session.until(lambda ps: any(p.startswith("431") for p in ps))
    native = await ws_connect()
    expect_type(await native.request({"type": "join-room", "room": "q"}), "room-joined")
    for i in range(300):
        await native.send({"type": "broadcast", "room": "q", "message": i})
    await native.send({"type": "broadcast", "room": "q", "message": "x" * 20_000})
    got = await session.until(lambda ps: len(events(ps, "broadcast")) >= 301)
    assert [b["message"] for b in events(got, "broadcast")][:300] == list(range(300))
    assert not any(p.startswith("41") or p == "1" for p in got)  # no disconnect


@pytest.mark.config({"auth": {**AUTH["auth"], "proxy_cache_seconds": 30}})
async def test_polling_connects_share_the_connect_cache(port: int, backend: TestBackend) -> None:
    """Engine.IO's own query parameters (its cache-buster ``t`` differs per request) are not
    the client's query: three polling connects with one cookie ask the backend once, and the
    query it is sent holds only the client's parameters."""
    backend.route("/connect", connect_script)
    cookie = {"Cookie": "session=good"}
    for _ in range(3):
        session = await Polling.open(port, cookie)
        await session.until(lambda ps: bool(events(ps, "welcome")))
    (seen,) = backend.calls("/connect")
    assert seen.body["query"] == {}, seen.body
