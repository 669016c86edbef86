"""The pure frame parser (miaws.transport.frames) on bytes alone: no socket, no server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miaws.transport.frames import (
    FIN,
    PROTOCOL_ERROR,
    TOO_BIG,
    UNMASKED,
    encode_frame,
    parse_frame,
)

MASK = b"\x01\x02\x03\x04"
BIG = 1 << 20


def test_a_masked_text_frame() -> None:
    data = encode_frame(0x1, b"hello", mask=MASK)
    assert data[:2] == b"\x81\x85" and data[2:6] == MASK and data[6:] != b"hello"
    assert parse_frame(data, 0, BIG) == (0x1, FIN, b"hello", len(data))


def test_a_position_inside_the_buffer() -> None:
    data = b"junk" + encode_frame(0x2, b"\x00\xff", mask=MASK)
    assert parse_frame(data, 4, BIG) == (0x2, FIN, b"\x00\xff", len(data))


def test_an_unmasked_frame_is_refused_on_its_header() -> None:
    """RFC 6455 section 5.1: a server must fail a connection whose client does not mask."""
    assert parse_frame(encode_frame(0x1, b"hello"), 0, BIG) == UNMASKED
    assert parse_frame(b"\x81\x7e\x01\x00", 0, BIG) == UNMASKED  # before the payload


@pytest.mark.parametrize(("size", "header"), [(125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_length_encodings(size: int, header: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = encode_frame(0x2, payload, mask=MASK)
    assert len(data) == header + 4 + size
    assert parse_frame(data, 0, BIG) == (0x2, FIN, payload, len(data))


@pytest.mark.parametrize("size", [5, 200, 70_000])
def test_incomplete_frames_say_how_much_they_need(size: int) -> None:
    """Cut anywhere, the frame asks for a count that grows to the frame's length, and is
    parsed once that many bytes from its start are there."""
    data = encode_frame(0x1, b"x" * size, mask=MASK)
    for cut in sorted({0, 1, 2, 3, 4, 9, 10, len(data) // 2, len(data) - 1}):
        need = parse_frame(data[:cut], 0, BIG)
        assert isinstance(need, int) and cut < need <= len(data), (cut, need)
        assert isinstance(parse_frame(data[:need], 0, BIG), int) == (need < len(data))
    assert parse_frame(data, 0, BIG) == (0x1, FIN, b"x" * size, len(data))


def test_fragments_and_control_frames() -> None:
    first = encode_frame(0x1, b"hel", fin=False, mask=MASK)
    rest = encode_frame(0x0, b"lo", mask=MASK)
    ping = encode_frame(0x9, b"p", mask=MASK)
    data = first + ping + rest
    a = parse_frame(data, 0, BIG)
    assert a == (0x1, 0, b"hel", len(first))
    b = parse_frame(data, len(first), BIG)
    assert b == (0x9, FIN, b"p", len(first) + len(ping))
    assert parse_frame(data, len(first) + len(ping), BIG) == (0x0, FIN, b"lo", len(data))


def test_protocol_errors() -> None:
    assert parse_frame(b"\xc1\x80" + MASK, 0, BIG) == PROTOCOL_ERROR  # RSV1, not negotiated
    assert parse_frame(b"\xc1\x80" + MASK, 0, BIG, reserved=0x30) == (0x1, FIN, b"", 6)  # deflate
    assert parse_frame(b"\xa1\x80" + MASK, 0, BIG) == PROTOCOL_ERROR  # RSV2
    assert parse_frame(b"\x91\x80" + MASK, 0, BIG) == PROTOCOL_ERROR  # RSV3
    # A control frame with a 16-bit length: refused on its first two bytes.
    assert parse_frame(b"\x89\xfe", 0, BIG) == PROTOCOL_ERROR


def test_the_limit_is_checked_on_the_header() -> None:
    """Over the limit (what the message may still grow by) before the payload arrives."""
    header = encode_frame(0x1, b"x" * 1000, mask=MASK)[:8]
    assert parse_frame(header, 0, 999) == TOO_BIG
    assert parse_frame(header, 0, 1000) == 1000 + 8
    huge = b"\x81\xff" + (1 << 40).to_bytes(8, "big")
    assert parse_frame(huge, 0, BIG) == TOO_BIG


frames = st.lists(
    st.tuples(
        st.sampled_from([0x1, 0x2, 0x9, 0xA]),
        st.binary(max_size=300),
        st.binary(min_size=4, max_size=4),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(frames, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_any_stream_cut_anywhere_gives_the_frames_back(
    sent: list[tuple[int, bytes, bytes]], cuts: list[int]
) -> None:
    """Frames concatenated, delivered in chunks of any size, as the protocol's loop feeds the
    parser (keeping an incomplete tail until it has the bytes it asked for)."""
    sent = [(op, p[:125] if op & 0x8 else p, m) for op, p, m in sent]
    stream = b"".join(encode_frame(op, p, mask=m) for op, p, m in sent)
    got: list[tuple[int, bytes]] = []
    pending = b""
    at = 0
    for i in range(len(stream) + 1):
        if at >= len(stream):
            break
        chunk = stream[at : at + cuts[i % len(cuts)]]
        at += len(chunk)
        data, pos = pending + chunk, 0
        while True:
            frame = parse_frame(data, pos, BIG)
            if isinstance(frame, int):
                assert frame > 0
                pending = data[pos:]
                break
            opcode, fin, payload, pos = frame
            assert fin == FIN
            got.append((opcode, payload))
    assert pending == b""
    assert got == [(op, p) for op, p, _ in sent]
