"""WebSocket frames from bytes (RFC 6455 section 5.2): a pure parser, no socket, no state.

:func:`parse_frame` looks at the bytes of one read from a position and says what is there:
a complete frame, how many bytes are still needed for one, or that the peer broke the
protocol.  The protocol (:class:`miaws.transport.protocol.MiawsProtocol`) calls it in its own
loop over each read, keeps what the loop must remember between frames (a fragmented
message, the bytes of an incomplete frame) and acts on each frame::

    pos = 0
    while True:
        frame = parse_frame(data, pos, limit)
        if type(frame) is int:      # > 0: bytes needed from pos; TOO_BIG or PROTOCOL_ERROR
            ...
        opcode, fin, payload, pos = frame

This shape rather than an object holding the buffer or a generator (as python-websockets'
``Frame.parse``): it is the hottest code in the server (every message passes here, at some
120k messages/s on one core), and one plain call per frame keeps the loop as cheap as the
inline parser it replaced (~1% of a message's server CPU; docs/hot-path.md has the figures).

Checks made here, on the header alone: reserved bits (``reserved``: those no extension
claims; a permessage-deflate connection, :mod:`miaws.transport.deflate`, passes RSV1
through), control frames of more than 125 bytes, the size limit (``limit``: what the
message may still grow by, so a frame over it is refused before its payload has arrived) and
the mask: a client's frames are masked (RFC 6455 section 5.1), an unmasked one is
:data:`UNMASKED`.  Masking is undone with Tornado's C function when it is built.
Fragmentation, opcodes, UTF-8 and inflating are the caller's.
"""

from __future__ import annotations

from tornado.util import _websocket_mask  # Tornado's C speedup when it is built

from miaws.core.model import Encoded

__all__ = [
    "parse_frame",
    "Frame",
    "TOO_BIG",
    "PROTOCOL_ERROR",
    "UNMASKED",
    "FIN",
    "RSV1",
    "text_frame",
    "encode_frame",
]

TOO_BIG = -1
"""The frame would take the message over the limit: close 1009."""
PROTOCOL_ERROR = -2
"""Reserved bits set, or a control frame over 125 bytes: drop the connection."""
UNMASKED = -3
"""A client frame without a mask (RFC 6455 section 5.1): close 1002."""
FIN = 0x80
RSV1 = 0x40
"""The first reserved bit: "compressed" on a permessage-deflate connection (RFC 7692)."""
RESERVED = 0x70

Frame = tuple[int, int, bytes, int]
"""(opcode, fin (0 or 0x80), unmasked payload, position just after the frame)."""


def parse_frame(data: bytes, pos: int, limit: int, reserved: int = RESERVED) -> Frame | int:
    """The client frame starting at ``data[pos]``.

    Returns a :data:`Frame` when it is complete; else a positive int, the number of bytes
    from ``pos`` needed before trying again (2 for a header, 4 or 10 for an extended length,
    the whole frame once its length is known); or :data:`TOO_BIG` (its length is over
    ``limit``), :data:`PROTOCOL_ERROR` (a bit of ``reserved`` set, or a long control frame)
    or :data:`UNMASKED`.  The frame's RSV1 is ``data[pos] & RSV1``."""
    end = len(data)
    if end - pos < 2:
        return 2
    b0 = data[pos]
    b1 = data[pos + 1]
    length = b1 & 0x7F
    head = pos + 2
    if length >= 126:
        if b0 & 0x08:  # control frames carry at most 125 bytes
            return PROTOCOL_ERROR
        size = 2 if length == 126 else 8
        if end - head < size:
            return 2 + size
        length = int.from_bytes(data[head : head + size], "big")
        head += size
    if b0 & reserved:  # RSV1-3: an extension we did not negotiate
        return PROTOCOL_ERROR
    if length > limit:
        return TOO_BIG
    if not b1 & 0x80:
        return UNMASKED
    stop = head + 4 + length
    if stop > end:
        return stop - pos
    return (
        b0 & 0x0F,
        b0 & FIN,
        _websocket_mask(data[head : head + 4], data[head + 4 : stop]),
        stop,
    )


def text_frame(message: Encoded) -> bytes:
    """The unmasked text frame of message, built once and kept on it (``Encoded.wire``), so
    every native recipient of a broadcast gets the same bytes."""
    frame = message.wire
    if frame is None:
        data = message.data
        n = len(data)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 65536:
            head = bytes((0x81, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x81, 127)) + n.to_bytes(8, "big")
        frame = message.wire = head + data
    return frame


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """One frame as a peer would send it (``mask``: 4 bytes, as a client must).  For tests
    and tools; the server's own frames are built once per message (:func:`text_frame`)."""
    n = len(payload)
    if n < 126:
        head = bytes(((FIN if fin else 0) | opcode, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = bytes(((FIN if fin else 0) | opcode, (0x80 if mask else 0) | 126)) + n.to_bytes(
            2, "big"
        )
    else:
        head = bytes(((FIN if fin else 0) | opcode, (0x80 if mask else 0) | 127)) + n.to_bytes(
            8, "big"
        )
    if mask:
        return head + mask + _websocket_mask(mask, payload)
    return head + payload
