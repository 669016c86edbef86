"""POST /api/publish with an Idempotency-Key (one node, and two nodes on a real
redis-server) and with a list of messages (batch, in order)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Connect
from redis_server import RedisServer
from test_scaling import Start, start_nodes
from tornado.httpclient import AsyncHTTPClient

from miaws.cli.check import Peer, expect_type
from miaws.service import Service


async def post(
    client: Any, url: str, body: Any, key: str | None = None, raw: bytes | None = None
) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of a POST."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    response = await client.fetch(
        url,
        method="POST",
        body=raw if raw is not None else json.dumps(body),
        headers=headers,
        raise_error=False,
    )
    return response.code, json.loads(response.body), response.headers


async def test_repeat_delivers_nothing_and_answers_the_first_response(
    http_server_client: Any, ws_connect: Connect
) -> None:
    """The same key and body again: the first answer (marked Idempotent-Replayed), and the
    client got the message once; another key delivers again."""
    peer = await ws_connect()
    body = {"message": {"n": 1}}
    first = await post(http_server_client, "/api/publish", body, key="k-1")
    assert first[:2] == (200, {"recipients": 1})
    assert "Idempotent-Replayed" not in first[2]
    await ws_connect()  # one more client now: a second delivery would count 2
    again = await post(http_server_client, "/api/publish", body, key="k-1")
    assert again[:2] == (200, {"recipients": 1})
    assert again[2]["Idempotent-Replayed"] == "true"
    expect_type(await peer.recv(), "broadcast", message={"n": 1})
    await peer.expect_silence(0.2)
    other = await post(http_server_client, "/api/publish", body, key="k-2")
    assert other[:2] == (200, {"recipients": 2})
    expect_type(await peer.recv(), "broadcast", message={"n": 1})


async def test_key_reused_with_another_body_or_malformed(
    http_server_client: Any, ws_connect: Connect
) -> None:
    """Another body under a used key: 422, nothing sent; a malformed key: 400; a bad body
    with a key is 400 and leaves the key unused."""
    peer = await ws_connect()
    assert (await post(http_server_client, "/api/publish", {"message": 1}, key="k"))[0] == 200
    status, body, _ = await post(http_server_client, "/api/publish", {"message": 2}, key="k")
    assert status == 422 and "another body" in body["error"]
    for bad in ("", "x" * 256, "has space", "é"):
        assert (await post(http_server_client, "/api/publish", {"message": 3}, key=bad))[0] == 400
    assert (await post(http_server_client, "/api/publish", {"nope": 1}, key="k3"))[0] == 400
    assert (await post(http_server_client, "/api/publish", {"message": 4}, key="k3"))[0] == 200
    assert [(await peer.recv())["message"] for _ in range(2)] == [1, 4]
    await peer.expect_silence(0.2)


@pytest.mark.config({"api": {"idempotency_window": 1.0}})
async def test_key_forgotten_after_the_window(http_server_client: Any, ws_connect: Connect) -> None:
    """After api.idempotency_window the key is new again."""
    import asyncio

    peer = await ws_connect()
    for _ in range(2):
        assert (await post(http_server_client, "/api/publish", {"message": 1}, key="w"))[0] == 200
    await asyncio.sleep(1.1)
    status, _, headers = await post(http_server_client, "/api/publish", {"message": 1}, key="w")
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert [(await peer.recv())["message"] for _ in range(2)] == [1, 1]
    await peer.expect_silence(0.2)


async def test_batch_delivered_in_order_with_one_response(
    http_server_client: Any, ws_connect: Connect
) -> None:
    """A JSON list: every message delivered in order, one answer with a result each."""
    member, other = await ws_connect(), await ws_connect()
    expect_type(await member.request({"type": "join-room", "room": "r"}), "room-joined")
    batch = [{"room": "r", "message": i} for i in range(20)] + [{"message": "all"}]
    status, body, _ = await post(http_server_client, "/api/publish", batch)
    assert status == 200
    assert body == {"results": [{"recipients": 1}] * 20 + [{"recipients": 2}]}
    assert [(await member.recv())["message"] for _ in range(21)] == [*range(20), "all"]
    expect_type(await other.recv(), "broadcast", message="all")


async def test_bad_batch_sends_nothing(http_server_client: Any, ws_connect: Connect) -> None:
    """One unusable item: 400 naming it, and nothing of the batch is delivered."""
    peer = await ws_connect()
    status, body, _ = await post(
        http_server_client, "/api/publish", [{"message": 1}, {"room": "bad room", "message": 2}]
    )
    assert status == 400 and body["error"].startswith("[1]: invalid room name")
    assert (await post(http_server_client, "/api/publish", []))[0] == 400
    await peer.expect_silence(0.2)


async def test_batch_with_a_key(http_server_client: Any, ws_connect: Connect) -> None:
    """A batch under an Idempotency-Key is delivered once as a whole."""
    peer = await ws_connect()
    batch = [{"message": "a"}, {"message": "b"}]
    for _ in range(3):
        status, body, _ = await post(http_server_client, "/api/publish", batch, key="batch-1")
        assert (status, body) == (200, {"results": [{"recipients": 1}] * 2})
    assert [(await peer.recv())["message"] for _ in range(2)] == ["a", "b"]
    await peer.expect_silence(0.2)


async def test_idempotency_across_two_nodes(
    server_process: Start, redis_server: RedisServer
) -> None:
    """Two nodes on one redis-server: a repeat sent to the other node delivers nothing and
    answers the first node's response; while Redis is down a keyed publish is refused with
    503 (nothing delivered), an unkeyed one still goes to the node's own clients."""
    a, b = start_nodes(server_process, redis_server, 2)
    peers = [await Peer.connect(node.url) for node in (a, b)]
    client = AsyncHTTPClient()
    try:
        for peer in peers:
            expect_type(await peer.request({"type": "join-room", "room": "r"}), "room-joined")
        body = {"room": "r", "message": "once"}
        first = await post(client, f"{a.http}/api/publish", body, key="cross-1")
        assert first[:2] == (200, {"recipients": 1})
        again = await post(client, f"{b.http}/api/publish", body, key="cross-1")
        assert again[:2] == (200, {"recipients": 1})  # node a's answer
        assert again[2]["Idempotent-Replayed"] == "true"
        for peer in peers:
            expect_type(await peer.recv(), "broadcast", message="once")
            await peer.expect_silence(0.3)
        redis_server.stop()
        status, answer, headers = await post(client, f"{b.http}/api/publish", body, key="cross-2")
        assert status == 503 and "idempotency keys unavailable" in answer["error"]
        assert headers["Retry-After"] == "1"
        status, answer, _ = await post(client, f"{b.http}/api/publish", {"room": "r", "message": 2})
        assert (status, answer) == (200, {"recipients": 1})
        expect_type(await peers[1].recv(), "broadcast", message=2)
        await peers[0].expect_silence(0.3)
    finally:
        for peer in peers:
            peer.close()


async def test_a_key_in_progress_is_409(
    http_server_client: Any, ws_connect: Connect, service: Service
) -> None:
    """While the first request with a key is being delivered (its claim is in the broker
    without an answer yet), a repeat gets 409 with Retry-After and nothing is sent."""
    peer = await ws_connect()
    assert await service.broker.store("idem:busy", b"", 10, if_absent=True) is None
    status, body, headers = await post(
        http_server_client, "/api/publish", {"message": 1}, key="busy"
    )
    assert status == 409 and "in progress" in body["error"]
    assert headers["Retry-After"] == "1"
    await peer.expect_silence(0.2)
