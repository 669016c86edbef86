"""RFC 6455 conformance at the byte level, over a real socket: what the Autobahn TestSuite
cases of compliance/ check (issue 15), one test per rule, so CI catches a regression without
running the suite."""

from __future__ import annotations

import asyncio
import json
import logging
import struct

import pytest
from rawws import RawWS, client_frame


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return client_frame(struct.pack("!H", code) + reason, 0x8)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999])
async def test_invalid_close_code_is_a_protocol_error(port: int, code: int) -> None:
    """Autobahn 7.9.*: answered with 1002, not echoed."""
    ws = await RawWS.open(port)
    ws.send_raw(close_frame(code))
    assert await ws.close_code() == 1002
    ws.abort()


@pytest.mark.parametrize("frame", [b"\x81\x05hello", b"\x89\x00", b"\x81\x7e\x01\x00"])
async def test_an_unmasked_frame_is_a_protocol_error(port: int, frame: bytes) -> None:
    """RFC 6455 section 5.1: a client's frames are masked; one that is not (text, ping, or
    a header alone) is answered with 1002 and the connection closed."""
    ws = await RawWS.open(port)
    assert (await ws.read_json())["type"] == "welcome"
    ws.send_raw(frame)
    assert await ws.close_code() == 1002
    assert await ws.read_frame(timeout=5) is None  # then the server closes the socket
    ws.abort()


async def test_one_byte_close_payload_is_a_protocol_error(port: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b"\x03", 0x8))
    assert await ws.close_code() == 1002
    ws.abort()


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
async def test_valid_close_code_is_echoed(port: int, code: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(close_frame(code, b"bye"))
    assert await ws.close_code() == code
    ws.abort()


async def test_empty_close_frame_is_answered(port: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b"", 0x8))
    assert await ws.close_code() == 1005  # an empty close frame back
    ws.abort()


async def test_close_reason_not_utf8_is_invalid_payload(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Autobahn 7.5.1: 1007, and no traceback from the frame reader."""
    caplog.set_level(logging.ERROR, logger="miaws")
    ws = await RawWS.open(port)
    ws.send_raw(close_frame(1000, "bye \u20ac".encode()[:-1]))  # a cut-off euro sign
    assert await ws.close_code() == 1007
    ws.abort()
    assert not [r for r in caplog.records if "frame reader failed" in r.getMessage()]


BAD = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80"  # Autobahn 6.4.*'s


async def closed_within(ws: RawWS, seconds: float = 2.0) -> int | None:
    """The close code the server sends within seconds (the rest of the message unsent)."""
    return await asyncio.wait_for(ws.close_code(), seconds)


async def test_text_not_utf8_is_invalid_payload(port: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b'{"type":"echo","message":"' + BAD + b'"}'))
    assert await closed_within(ws) == 1007
    ws.abort()


async def test_fragmented_text_fails_at_the_fragment_that_is_not_utf8(port: int) -> None:
    """Autobahn 6.4.1/6.4.2: 1007 once the bad fragment arrives, not at the final one."""
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b'{"type":"echo","message":"', fin=False))
    ws.send_raw(client_frame(BAD, opcode=0x0, fin=False))
    assert await closed_within(ws) == 1007
    ws.abort()


async def test_fragmented_text_fails_at_the_last_fragment(port: int) -> None:
    """A character cut off by the end of the message."""
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b'{"type":"echo","message":"', fin=False))
    ws.send_raw(client_frame(b'"}\xce', opcode=0x0))
    assert await closed_within(ws) == 1007
    ws.abort()


async def test_text_frame_fails_while_it_is_incomplete(port: int) -> None:
    """Autobahn 6.4.3/6.4.4: one frame sent in parts; 1007 once the bad part arrives."""
    ws = await RawWS.open(port)
    data = client_frame(b'{"type":"echo","message":"' + BAD + b'"}' + b" " * 200)
    head = 4 + 4  # 16-bit length, mask
    ws.send_raw(data[: head + 30])
    await asyncio.sleep(0.1)
    ws.send_raw(data[head + 30 : head + 30 + len(BAD) + 3])
    assert await closed_within(ws) == 1007
    ws.abort()


async def test_continuation_fails_while_it_is_incomplete(port: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b'{"type":"echo","message":"\xce', fin=False))
    data = client_frame(b"\xba" + BAD + b" " * 200, opcode=0x0)
    ws.send_raw(data[:20])
    await asyncio.sleep(0.1)
    ws.send_raw(data[20:40])
    assert await closed_within(ws) == 1007
    ws.abort()


async def test_characters_split_across_fragments_and_reads(port: int) -> None:
    """Valid UTF-8 cut anywhere, by fragments and by TCP writes, arrives whole."""
    ws = await RawWS.open(port)
    assert (await ws.read_json())["type"] == "welcome"
    text = "κόσμε €𝄞 " * 40
    body = json.dumps({"type": "echo", "message": text}, ensure_ascii=False).encode()
    cuts = [0, 27, 29, 31, 150, 301, len(body)]
    frames = b"".join(
        client_frame(body[a:b], opcode=0x1 if a == 0 else 0x0, fin=b == len(body))
        for a, b in zip(cuts, cuts[1:], strict=False)
    )
    for i in range(0, len(frames), 7):
        ws.send_raw(frames[i : i + 7])
        await ws.writer.drain()
        await asyncio.sleep(0)
    assert (await ws.read_json())["original"] == text
    # and a single text frame sent in parts
    frame = client_frame(body)
    for i in range(0, len(frame), 33):
        ws.send_raw(frame[i : i + 33])
        await ws.writer.drain()
        await asyncio.sleep(0.001)
    assert (await ws.read_json())["original"] == text
    ws.abort()
