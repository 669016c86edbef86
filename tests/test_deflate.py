"""permessage-deflate on the native endpoint (compression.*, RFC 7692; issue 15), over real
sockets: the answer to an offer, compressed frames both ways, the size limit counted on
inflated bytes, UTF-8 and protocol errors on compressed connections, a real client library."""

from __future__ import annotations

import json
import tracemalloc
import zlib
from typing import Any

import pytest
import websockets
from rawws import RawWS, client_frame

COMPRESSED = {"compression": {"enabled": True}}
OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
RSV1 = 0x40
TAIL = b"\x00\x00\xff\xff"


def deflate(data: bytes) -> bytes:
    """data as a client compresses one message (RFC 7692 7.2.1)."""
    stream = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + TAIL)


def echo(message: str, **extra: Any) -> bytes:
    return json.dumps({"type": "echo", "message": message, **extra}).encode()


async def opened(port: int) -> RawWS:
    ws = await RawWS.open(port, headers=OFFER)
    assert ws.status == 101
    assert (await ws.read_json())["type"] == "welcome"
    return ws


async def test_off_by_default(port: int) -> None:
    """compression.enabled is false: the offer is declined (no extension in the answer)."""
    ws = await RawWS.open(port, headers=OFFER)
    assert ws.status == 101 and "sec-websocket-extensions" not in ws.headers
    ws.send_raw(client_frame(deflate(echo("x")), rsv=RSV1))  # RSV1 not negotiated
    assert await ws.read_frame() is not None  # the welcome
    assert await ws.read_frame() is None  # then dropped
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_the_offer_is_taken_without_context_takeover(port: int) -> None:
    ws = await RawWS.open(port, headers=OFFER)
    answer = {p.strip() for p in ws.headers["sec-websocket-extensions"].split(";")}
    assert answer == {
        "permessage-deflate",
        "server_no_context_takeover",
        "client_no_context_takeover",
    }
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_compressed_both_ways_and_small_replies_plain(port: int) -> None:
    ws = await opened(port)
    big = "compress me " * 500
    ws.send_raw(client_frame(deflate(echo(big, id=1)), rsv=RSV1))
    frame = await ws.read_frame()
    assert frame is not None and frame[0] == 0x1 and ws.rsv1  # from min_size (1024) on
    reply = json.loads(inflate(frame[1]))
    assert (reply["original"], reply["id"]) == (big, 1)
    assert len(frame[1]) < len(big) // 10
    ws.send_raw(client_frame(deflate(echo("small", id=2)), rsv=RSV1))
    frame = await ws.read_frame()
    assert frame is not None and not ws.rsv1  # under min_size: as it is
    assert json.loads(frame[1])["original"] == "small"
    ws.send_raw(client_frame(echo(big, id=3)))  # a client may send uncompressed too
    frame = await ws.read_frame()
    assert frame is not None and ws.rsv1 and json.loads(inflate(frame[1]))["id"] == 3
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_a_fragmented_compressed_message(port: int) -> None:
    """One deflate stream cut over three frames, a ping between them: RSV1 on the first."""
    ws = await opened(port)
    big = "fragments " * 400
    data = deflate(echo(big))
    a, b = len(data) // 3, 2 * len(data) // 3
    ws.send_raw(
        client_frame(data[:a], 0x1, fin=False, rsv=RSV1)
        + client_frame(b"p", 0x9)
        + client_frame(data[a:b], 0x0, fin=False)
        + client_frame(data[b:], 0x0)
    )
    assert await ws.read_frame() == (0xA, b"p")
    frame = await ws.read_frame()
    assert frame is not None and json.loads(inflate(frame[1]))["original"] == big
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_a_broadcast_reaches_compressed_and_plain_clients(port: int) -> None:
    compressed, plain = await opened(port), await RawWS.open(port)
    assert (await plain.read_json())["type"] == "welcome"
    text = "everyone " * 300
    plain.send_json({"type": "broadcast", "message": text})
    got = await compressed.read_frame()
    assert got is not None and compressed.rsv1
    assert json.loads(inflate(got[1]))["message"] == text
    assert (await plain.read_json())["message"] == text and not plain.rsv1
    compressed.abort()
    plain.abort()


LIMIT = {**COMPRESSED, "limits": {"max_message_bytes": 65536}}


@pytest.mark.config(LIMIT)
async def test_the_limit_counts_inflated_bytes(port: int) -> None:
    """A message that inflates to exactly the limit passes; one byte more is 1009."""
    ws = await opened(port)
    exact = echo("x" * (65536 - len(echo(""))))
    assert len(exact) == 65536
    ws.send_raw(client_frame(deflate(exact), rsv=RSV1))
    frame = await ws.read_frame()
    assert frame is not None and json.loads(inflate(frame[1]))["type"] == "echo"
    ws.send_raw(client_frame(deflate(exact[:-2] + b'x"}'), rsv=RSV1))  # 65537 bytes
    assert await ws.close_code() == 1009
    ws.abort()


@pytest.mark.config(LIMIT)
async def test_a_bomb_is_closed_without_being_inflated(port: int) -> None:
    """10 MB of one byte compress to ~10 KB: closed with 1009 having allocated about the
    limit (64 KiB), not 10 MB (the server runs in this process: tracemalloc sees it)."""
    ws = await opened(port)
    bomb = client_frame(deflate(b"a" * 10_000_000), 0x2, rsv=RSV1)
    assert len(bomb) < 20_000
    tracemalloc.start()
    try:
        ws.send_raw(bomb)
        assert await ws.close_code() == 1009
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
    ws.abort()


@pytest.mark.config(LIMIT)
async def test_a_fragmented_bomb_stops_at_the_fragment_over_the_limit(port: int) -> None:
    ws = await opened(port)
    data = deflate(b"b" * 5_000_000)
    ws.send_raw(client_frame(data[:100], 0x2, fin=False, rsv=RSV1))  # a few KB inflated
    ws.send_raw(client_frame(data[100:], 0x0, fin=False))  # over the limit: no final frame
    assert await ws.close_code() == 1009
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_compressed_text_not_utf8_is_1007(port: int) -> None:
    ws = await opened(port)
    ws.send_raw(client_frame(deflate(b'{"type":"echo","message":"\xff"}'), rsv=RSV1))
    assert await ws.close_code() == 1007
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_compressed_fragment_not_utf8_fails_before_the_last(port: int) -> None:
    """Fail fast (RFC 6455 8.1) on inflated text: at the fragment, the message unfinished."""
    ws = await opened(port)
    stream = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = stream.compress(b'{"type":"echo","message":"ok') + stream.flush(zlib.Z_SYNC_FLUSH)
    second = stream.compress(b"\xc0\xaf") + stream.flush(zlib.Z_SYNC_FLUSH)
    ws.send_raw(client_frame(first, 0x1, fin=False, rsv=RSV1))
    ws.send_raw(client_frame(second, 0x0, fin=False))
    assert await ws.close_code() == 1007
    ws.abort()


@pytest.mark.config(COMPRESSED)
@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([client_frame(b"p", 0x9, rsv=RSV1)], 1002),  # a compressed control frame (RFC 7692 6.1)
        (
            [client_frame(b"x", 0x1, fin=False), client_frame(b"y", 0x0, rsv=RSV1)],
            1002,  # RSV1 on a continuation frame
        ),
        ([client_frame(b"\xff\xff\xff\xff", 0x1, rsv=RSV1)], 1007),  # does not inflate
        ([b"\x81\x05hello"], 1002),  # not masked (RFC 6455 5.1)
    ],
)
async def test_protocol_errors_on_a_compressed_connection(
    port: int, frames: list[bytes], code: int
) -> None:
    ws = await opened(port)
    ws.send_raw(b"".join(frames))
    assert await ws.close_code() == code
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_the_websockets_library_negotiates_and_talks(ws_url: str) -> None:
    """A real client's offer (python-websockets' default permessage-deflate) is taken."""
    big = "websockets " * 300
    async with websockets.connect(ws_url, compression="deflate", open_timeout=5) as conn:
        assert "permessage-deflate" in (conn.response.headers["Sec-WebSocket-Extensions"])
        assert json.loads(await conn.recv())["type"] == "welcome"
        for i in range(3):
            await conn.send(echo(big, id=i).decode())
            assert json.loads(await conn.recv())["id"] == i


@pytest.mark.config(COMPRESSED)
async def test_socketio_follows_the_same_setting(port: int) -> None:
    """compression.enabled turns permessage-deflate on for Socket.IO's WebSocket too: a
    compressed event is read, its ack and the big reply come compressed (from min_size on),
    a small packet as it is."""
    ws = await RawWS.open(port, "/socket.io/?EIO=4&transport=websocket", headers=OFFER)
    assert ws.status == 101
    assert ws.headers["sec-websocket-extensions"].startswith("permessage-deflate")

    async def packet() -> str:
        frame = await ws.read_frame()
        assert frame is not None and frame[0] == 0x1, frame
        return (inflate(frame[1]) if ws.rsv1 else frame[1]).decode()

    assert (await packet()).startswith("0{")  # Engine.IO's open packet
    ws.send_raw(client_frame(b"40", 0x1))
    assert (await packet()).startswith("40{")  # CONNECT answered
    assert '"type":"welcome"' in await packet() and not ws.rsv1  # 200-odd bytes: as it is
    big = "y" * 3000
    event = '421["echo",' + json.dumps({"type": "echo", "message": big}) + "]"
    ws.send_raw(client_frame(deflate(event.encode()), 0x1, rsv=RSV1))
    got = [await packet(), await packet()]
    assert ws.rsv1  # the reply of over 1 KiB came compressed
    assert any(p.startswith("431[") and big in p for p in got), [p[:40] for p in got]
    # End the session as a client does (a close frame, answered), so no Engine.IO task of it
    # is left pending when the server stops.
    ws.send_raw(client_frame(b"\x03\xe8", 0x8))
    assert await ws.close_code() == 1000
    ws.abort()


@pytest.mark.config(COMPRESSED)
async def test_a_socketio_broadcast_reaches_compressed_and_plain_members(port: int) -> None:
    """Two compressed members and a plain one in a room: each of two broadcasts reaches every
    member once, compressed where negotiated (deflated once per broadcast), as it is where
    not."""

    async def member(offer: bool) -> tuple[RawWS, Any]:
        ws = await RawWS.open(
            port, "/socket.io/?EIO=4&transport=websocket", headers=OFFER if offer else {}
        )
        assert ws.status == 101

        async def packet() -> str:
            while True:
                frame = await ws.read_frame()
                assert frame is not None and frame[0] == 0x1, frame
                text = (inflate(frame[1]) if ws.rsv1 else frame[1]).decode()
                if text != "2":  # Engine.IO's ping
                    return text

        assert (await packet()).startswith("0{")
        ws.send_raw(client_frame(b"40", 0x1))
        assert (await packet()).startswith("40{")
        assert '"type":"welcome"' in await packet()
        ws.send_raw(client_frame(b'421["join-room",{"type":"join-room","room":"r"}]', 0x1))
        while '"type":"room-joined"' not in await packet():
            pass
        return ws, packet

    members = [await member(True), await member(True), await member(False)]
    sender, _ = members[0]
    for text in ("a" * 2000, "b" * 3000):
        event = {"type": "broadcast", "room": "r", "message": text}
        sender.send_raw(client_frame(b'42["broadcast",' + json.dumps(event).encode() + b"]"))
        for i, (ws, packet) in enumerate(members):
            got = await packet()
            while got.startswith("43"):  # the join's ack, or the sender's own
                got = await packet()
            assert got.startswith('42["broadcast",') and text in got, got[:60]
            assert ws.rsv1 is (i < 2)
    for ws, _ in members:
        ws.send_raw(client_frame(b"\x03\xe8", 0x8))
        assert await ws.close_code() == 1000
        ws.abort()
