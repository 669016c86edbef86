"""miaws's frame reader and Tornado's own turn a byte stream into the same messages and the
same close (issue 15): hypothesis writes the streams, tests/framedrive.py feeds each to both
readers over a real socket pair, in the same chunks.

Where miaws differs on purpose, the difference is the property: an unmasked frame, text that
is not UTF-8 (failed as soon as it arrives), an invalid close code or a close reason that is
not UTF-8 are closed with 1002 or 1007 by miaws, where Tornado accepts, echoes or drops the
connection without a close frame (compliance/README.md).  So structured streams that steer
clear of those must come out the same, and any bytes at all must come out the same or be
one of those closes, with miaws never delivering a message Tornado would not.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

from framedrive import Outcome, drive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miaws.transport.frames import encode_frame

BOUNDED = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
VALID_CODES = [1000, 1001, 1003, 1007, 1008, 1011, 3000, 4000]

masks = st.binary(min_size=4, max_size=4)
text = st.text(max_size=40).map(str.encode)
binary = st.binary(max_size=300)


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    """A masked frame of any opcode and fin bit, sometimes with reserved bits or a control
    payload that is too long; text payloads are UTF-8, close payloads valid."""
    opcode = draw(st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]))
    fin = draw(st.booleans()) if not opcode & 0x8 else draw(st.sampled_from([True] * 9 + [False]))
    if opcode == 0x8:
        payload = draw(
            st.one_of(
                st.just(b""),
                st.tuples(st.sampled_from(VALID_CODES), text).map(
                    lambda c: struct.pack("!H", c[0]) + c[1][:60]
                ),
            )
        )
    elif opcode in (0x0, 0x1):
        payload = draw(text)
    elif opcode & 0x8:
        payload = draw(st.binary(max_size=130))
    else:
        payload = draw(binary)
    data = encode_frame(opcode, payload, fin=fin, mask=draw(masks))
    rsv = draw(st.sampled_from([0] * 15 + [0x40, 0x20, 0x10]))
    return bytes([data[0] | rsv]) + data[1:]


chunks = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30)
limits = st.sampled_from([1 << 20, 200, 50])


def both(reader: str, stream: bytes, cut: list[int], **kw: Any) -> tuple[Outcome, Outcome]:
    """(miaws's outcome with reader, Tornado's), each on its own event loop."""
    return asyncio.run(drive(reader, stream, cut, **kw)), asyncio.run(
        drive("tornado", stream, cut, **kw)
    )


def same(a: Outcome, b: Outcome) -> bool:
    return (a.messages, a.sent, a.ended) == (b.messages, b.sent, b.ended)


@BOUNDED
@given(st.lists(frame(), max_size=12), chunks, limits)
def test_structured_streams_come_out_the_same(
    frames: list[bytes], cut: list[int], limit: int
) -> None:
    stream = b"".join(frames)
    ours, tornados = both("miaws", stream, cut, limit=limit)
    assert not ours.errors and not tornados.errors
    assert ours.ended
    assert same(ours, tornados), (ours, tornados)


@BOUNDED
@given(st.lists(st.one_of(frame(), st.binary(max_size=40)), max_size=10), chunks, limits)
def test_any_bytes_come_out_the_same_or_closed_for_a_reason(
    parts: list[bytes], cut: list[int], limit: int
) -> None:
    stream = b"".join(parts)
    ours, tornados = both("miaws", stream, cut, limit=limit)
    assert not ours.errors, ours.errors  # Tornado's may log (a close reason not UTF-8)
    assert ours.ended
    if not same(ours, tornados):
        assert ours.close in (1002, 1007), (ours, tornados)
        assert tornados.messages[: len(ours.messages)] == ours.messages


def deflate(data: bytes) -> bytes:
    stream = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH))[:-4]


@st.composite
def compressed_message(draw: st.DrawFn) -> bytes:
    """One message, compressed or not, cut into 1-4 frames, pings only before and after it
    (Tornado forgets a message is compressed after a control frame between its fragments)."""
    opcode = draw(st.sampled_from([0x1, 0x2]))
    payload = draw(text if opcode == 0x1 else st.binary(max_size=2000))
    compressed = draw(st.booleans())
    body = deflate(payload) if compressed else payload
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b""
    for i, piece in enumerate(pieces):
        f = encode_frame(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1, mask=draw(masks))
        out += bytes([f[0] | (0x40 if compressed and i == 0 else 0)]) + f[1:]
    if draw(st.booleans()):
        out += encode_frame(0x9, draw(st.binary(max_size=10)), mask=draw(masks))
    return out


@BOUNDED
@given(st.lists(compressed_message(), max_size=6), chunks)
def test_compressed_streams_come_out_the_same(messages: list[bytes], cut: list[int]) -> None:
    """permessage-deflate (no context takeover): miaws's reader, inflating frame by frame,
    and Tornado's, inflating whole messages, give the same messages and close.  (Within the
    size limit: miaws counts inflated bytes, Tornado compressed ones; tests/test_deflate.py.)"""
    stream = b"".join(messages)
    ours, tornados = both("deflate", stream, cut, deflate=True)
    assert not ours.errors and not tornados.errors
    assert same(ours, tornados), (ours, tornados)
