"""Socket.IO's hot path on the WebSocket (miaws.transport.sio_wire): events read and acks
written by miaws keep Socket.IO's order and answers, whatever else shares the connection."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
import tornado.websocket
from helpers import eventually
from sio_helpers import SioPeer

from miaws.service import Service
from miaws.transport.frames import encode_frame
from miaws.transport.sio_wire import parse_event


# ---------------------------------------------------------------- the parser, on text alone
@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ('42["echo",{"message":"a"}]', ("/", None, ["echo", {"message": "a"}])),
        ('427["echo",{}]', ("/", 7, ["echo", {}])),
        ('42/chat,["ping"]', ("/chat", None, ["ping"])),
        ('42/chat,12["ping",1,2]', ("/chat", 12, ["ping", 1, 2])),
        ('42["é",{"x":"ü"}]', ("/", None, ["é", {"x": "ü"}])),
        ('42["n",{"big":123456789012345678}]', ("/", None, ["n", {"big": 123456789012345678}])),
    ],
)
def test_events_are_parsed(text: str, parsed: Any) -> None:
    assert parse_event(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "2",  # an Engine.IO ping
        "40",  # CONNECT
        '43["x"]',  # ACK
        '451-["x",{"_placeholder":true,"num":0}]',  # BINARY_EVENT
        '42/chat["x"]',  # no comma after the namespace
        '42/chat?x=1,["x"]',  # a query in the namespace
        '4212-["x"]',  # attachments on a plain event
        '421234567890123456["x"]',  # a longer id than the fast path takes
        '42["x",NaN]',  # the json module reads it, orjson does not
        '42["x",1234567890123456789]',  # 19 digits: orjson would make a float
        '42["x"',  # invalid JSON
        "42{}",
        "42[]",
        "42[1]",
        '42 ["x"]',
    ],
)
def test_anything_else_is_left_to_python_socketio(text: str) -> None:
    assert parse_event(text) is None


# ---------------------------------------------------------------- over a raw socket
async def engineio_ws(port: int) -> tornado.websocket.WebSocketClientConnection:
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    conn = await tornado.websocket.websocket_connect(url)
    assert (await conn.read_message() or "").startswith("0{")  # Engine.IO open
    return conn


async def read(conn: tornado.websocket.WebSocketClientConnection, n: int) -> list[str]:
    out = []
    for _ in range(n):
        message = await conn.read_message()
        assert isinstance(message, str), f"connection closed after {out}"
        out.append(message)
    return out


def ack_of(packet: str, prefix: str = "43") -> tuple[int, Any]:
    """(id, value) of an ACK packet such as 437[{"type":"pong"}]."""
    assert packet.startswith(prefix), packet
    body = packet[len(prefix) :]
    digits = len(body) - len(body.lstrip("0123456789"))
    return int(body[:digits]), json.loads(body[digits:])


async def test_acks_and_replies_keep_the_order_of_the_events(port: int) -> None:
    """Many events in one TCP write, an Engine.IO pong among them: each is answered, its
    reply event then its ack, in the order sent."""
    conn = await engineio_ws(port)
    await conn.write_message("40")
    assert (await read(conn, 1))[0].startswith("40{")
    assert (await read(conn, 1))[0].startswith('42["welcome"')
    raw: Any = conn.protocol.stream.socket  # type: ignore[union-attr]
    frames = []
    for i in range(20):
        text = f'42{i}["echo",{{"message":"m{i}"}}]' if i != 10 else "3"
        frames.append(encode_frame(0x1, text.encode(), mask=b"abcd"))
    raw.sendall(b"".join(frames))
    got = await read(conn, 38)
    expected_ids = [i for i in range(20) if i != 10]
    for k, i in enumerate(expected_ids):
        event, ack = got[2 * k], got[2 * k + 1]
        assert event.startswith('42["echo",') and json.loads(event[2:])[1]["original"] == f"m{i}"
        assert ack_of(ack) == (i, [json.loads(event[2:])[1]])
    conn.close()


@pytest.mark.config({"socketio": {"namespaces": ["/", "/chat"]}})
async def test_an_event_right_after_a_namespace_connect_waits_for_its_answer(
    port: int, service: Service
) -> None:
    """The CONNECT of a second namespace and an event for it in one write: the event is
    answered after the namespace's CONNECT answer and welcome, not before."""
    conn = await engineio_ws(port)
    await conn.write_message("40")
    await read(conn, 2)
    raw: Any = conn.protocol.stream.socket  # type: ignore[union-attr]
    raw.sendall(
        encode_frame(0x1, b"40/chat,", mask=b"wxyz")
        + encode_frame(0x1, b'42/chat,5["ping",{}]', mask=b"wxyz")
        + encode_frame(0x1, b'426["ping",{}]', mask=b"wxyz")
    )
    got = await read(conn, 6)
    chat = [p for p in got if p.startswith(("40/chat,", "42/chat,", "43/chat,"))]
    assert chat[0].startswith("40/chat,{") and chat[1].startswith('42/chat,["welcome"')
    assert chat[2].startswith('42/chat,["pong"') and ack_of(chat[3], "43/chat,")[0] == 5
    root = [p for p in got if p not in chat]
    assert root[0].startswith('42["pong"') and ack_of(root[1])[0] == 6
    assert service.connected_count() == 2
    conn.close()


@pytest.mark.config({"socketio": {"namespaces": ["/", "/chat"]}})
async def test_events_of_a_disconnected_namespace_are_not_handled(
    port: int, service: Service
) -> None:
    """A DISCONNECT then an event of that namespace in one write: the event is not handled
    (python-socketio ignores it), and the connection goes on."""
    conn = await engineio_ws(port)
    await conn.write_message("40")
    await conn.write_message("40/chat,")
    await read(conn, 4)
    raw: Any = conn.protocol.stream.socket  # type: ignore[union-attr]
    raw.sendall(
        encode_frame(0x1, b"41/chat,", mask=b"abcd")
        + encode_frame(0x1, b'42/chat,1["ping",{}]', mask=b"abcd")
        + encode_frame(0x1, b'422["ping",{}]', mask=b"abcd")
    )
    got = await read(conn, 2)
    assert got[0].startswith('42["pong"') and ack_of(got[1])[0] == 2
    await eventually(lambda: service.connected_count() == 1)
    conn.close()


async def test_an_invalid_message_is_answered_and_acked(port: int) -> None:
    """An event whose message is not an object gets the error event and an ack carrying it,
    like any other reply."""
    conn = await engineio_ws(port)
    await conn.write_message("40")
    await read(conn, 2)
    await conn.write_message('423["echo","text"]')
    event, ack = await read(conn, 2)
    assert json.loads(event[2:])[1]["code"] == "invalid-message"
    assert ack_of(ack) == (3, [json.loads(event[2:])[1]])
    conn.close()


async def test_a_large_event_over_many_reads(port: int) -> None:
    """An event of 60 KB, sent 1,000 bytes at a time, is answered whole."""
    conn = await engineio_ws(port)
    await conn.write_message("40")
    await read(conn, 2)
    raw: Any = conn.protocol.stream.socket  # type: ignore[union-attr]
    text = '429["echo",{"message":"' + "x" * 60_000 + '"}]'
    frame = encode_frame(0x1, text.encode(), mask=b"abcd")
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(frame), 1000):
        raw.sendall(frame[i : i + 1000])
    event, ack = await read(conn, 2)
    assert len(json.loads(event[2:])[1]["original"]) == 60_000
    assert ack_of(ack)[0] == 9
    conn.close()


async def test_after_an_upgrade_from_polling(port: int, service: Service) -> None:
    """A client that started on long-polling and upgraded: its events and acks, and a room
    broadcast between it and a WebSocket client, once it is on the WebSocket."""
    url = f"http://127.0.0.1:{port}"
    upgraded = await SioPeer.connect(url, transports=["polling", "websocket"])
    direct = await SioPeer.connect(url)
    try:
        await eventually(lambda: upgraded.client.transport() == "websocket")
        acks = await asyncio.gather(
            *(upgraded.call("echo", {"message": f"m{i}"}) for i in range(30))
        )
        assert [a["original"] for a in acks] == [f"m{i}" for i in range(30)]
        for peer in (upgraded, direct):
            assert (await peer.call("join-room", {"room": "r"}))["type"] == "room-joined"
        sent = await direct.call("broadcast", {"room": "r", "message": "hi"})
        assert sent["type"] == "broadcast" and sent["message"] == "hi"
        while True:
            event, payload = await asyncio.wait_for(upgraded.events.get(), 5)
            if event == "broadcast":
                break
        assert payload == sent
        assert service.connected_count() == 2
    finally:
        await upgraded.close()
        await direct.close()
