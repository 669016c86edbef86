"""permessage-deflate (RFC 7692) on the native endpoint: the answer to an offer, the reader
that inflates, the frames that are sent compressed.

Opt-in (``compression.enabled``).  :class:`DeflateProtocol` is the native endpoint's protocol
while compression is on; a connection whose client offered no permessage-deflate turns back
into a plain :class:`~miaws.transport.protocol.MiawsProtocol` before its first read, so the
uncompressed path is the same code, and as fast, whether the setting is on or off.

Choices (docs/security.md, docs/performance.md):

- **No context takeover, either way.**  The server's answer carries ``server_no_context_takeover``
  and ``client_no_context_takeover`` (a server may add both, offered or not: RFC 7692 sections
  7.1.1.1 and 7.1.1.2), so no zlib state outlives a message: an idle compressed connection
  holds no zlib memory (with takeover each would keep a deflate stream, ~256 KiB at zlib's
  defaults, and an inflate one, ~40 KiB), and a message compresses to the same bytes for
  every recipient: a broadcast is compressed once per node and kept on its
  :class:`~miaws.core.model.Encoded`, as its plain frame is.  The cost: a message cannot use
  the ones before it as its dictionary, which matters for small messages, and those are sent
  as they are anyway (``compression.min_size``).
- **The size limit counts inflated bytes.**  ``limits.max_message_bytes`` bounds what a
  message inflates to: each frame is inflated as it arrives, with zlib's ``max_length`` at the
  budget left plus one, so a frame that would inflate past the limit is closed with 1009
  after at most the limit has been allocated (a 64 KiB limit stops a 10 MB bomb at 64 KiB).
  A compressed frame is refused on its header when its compressed length alone is over the
  limit (an uncompressed one when it is over the budget left).
- **UTF-8 fails fast** on the inflated text, fragment by fragment (1007), as on the plain
  path; only inside one compressed frame still incomplete is it checked when the frame is.
- A compressed control frame, or RSV1 on a continuation frame (section 6.1), is 1002; data
  that does not inflate is 1007.

Tornado negotiates (``WebSocketProtocol13._accept_connection`` calls
:meth:`DeflateProtocol._create_compressors` with the client's offer); its compressor and
decompressor objects are never made: the two attributes that would hold them hold miaws's
:class:`Deflater` and :class:`Inflater` (no new keys in the protocol's instance dict).
"""

from __future__ import annotations

import codecs
import zlib
from typing import Any

import tornado.escape
from tornado.concurrent import Future
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from miaws.core.errors import CloseCode
from miaws.core.model import Encoded
from miaws.transport.frames import FIN, RSV1, TOO_BIG, UNMASKED, parse_frame
from miaws.transport.protocol import MiawsProtocol, Paused

__all__ = ["DeflateProtocol", "Deflater", "Inflater", "inflate", "compression_options"]

TAIL = b"\x00\x00\xff\xff"
"""What a compressor's sync flush ends with, taken off each message (RFC 7692 7.2.1)."""
RESERVED = 0x30  # RSV2, RSV3: RSV1 is "compressed" here
MEM_LEVEL = 8  # zlib's default; the stream lives for one message only
OFFER_KEYS = frozenset(
    {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
)
_utf8 = codecs.getincrementaldecoder("utf-8")


def compression_options(enabled: bool, level: int, min_size: int) -> dict[str, Any] | None:
    """What the endpoint's ``get_compression_options`` answers: None (no permessage-deflate
    offered back) or the options :meth:`DeflateProtocol._create_compressors` reads."""
    return {"compression_level": level, "min_size": min_size} if enabled else None


def inflate(stream: Any, data: bytes, budget: int) -> bytes | None:
    """data inflated by stream (a zlib decompress object), or None if it would come to more
    than budget bytes; never more than budget + 1 are allocated.  Raises zlib.error."""
    out: bytes = stream.decompress(data, budget + 1)
    return None if len(out) > budget else out


class Deflater:
    """How this connection's messages are sent: compressed from ``min_size`` bytes on, each
    one a zlib stream of its own (no context takeover)."""

    __slots__ = ("level", "min_size", "wbits")

    def __init__(self, level: int, min_size: int, wbits: int = zlib.MAX_WBITS) -> None:
        self.level = level
        self.min_size = min_size
        self.wbits = wbits  # the client's server_max_window_bits, else 15

    def compress(self, data: bytes) -> bytes:
        """data as one permessage-deflate message payload."""
        stream = zlib.compressobj(self.level, zlib.DEFLATED, -self.wbits, MEM_LEVEL)
        return (stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH))[:-4]

    def frame(self, opcode: int, data: bytes) -> bytes:
        """The server frame of one message: compressed (RSV1) unless under ``min_size``."""
        if len(data) < self.min_size:
            return server_frame(FIN | opcode, data)
        return server_frame(FIN | RSV1 | opcode, self.compress(data))

    def text_frame(self, message: Encoded) -> bytes:
        """The compressed text frame of message, kept on it (``Encoded.deflated``) for every
        recipient with the default window; the caller has checked ``min_size``."""
        if self.wbits != zlib.MAX_WBITS:
            return server_frame(FIN | RSV1 | 0x1, self.compress(message.data))
        frame: bytes | None = getattr(message, "deflated", None)
        if frame is None:
            frame = message.deflated = server_frame(FIN | RSV1 | 0x1, self.compress(message.data))
        return frame


def server_frame(b0: int, payload: bytes) -> bytes:
    """An unmasked frame whose first byte is b0."""
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


class Inflater:
    """The message being received: its zlib stream while it is a compressed one, and the
    incremental UTF-8 check of a fragmented text message."""

    __slots__ = ("stream", "decoder", "parts")

    def __init__(self) -> None:
        self.stream: Any = None  # zlib decompress object of the message, when compressed
        self.decoder: codecs.IncrementalDecoder | None = None
        self.parts: list[str] = []


class DeflateProtocol(MiawsProtocol):
    """:class:`~miaws.transport.protocol.MiawsProtocol` with permessage-deflate (see the
    module docstring)."""

    _compressor: Deflater | None  # type: ignore[assignment]
    _decompressor: Inflater | None  # type: ignore[assignment]

    async def _receive_frame_loop(self) -> None:
        if self._decompressor is None:  # the client offered no permessage-deflate
            self.__class__ = MiawsProtocol  # type: ignore[assignment]
        self._read_next()

    def _create_compressors(
        self,
        side: str,
        agreed_parameters: dict[str, Any],
        compression_options: dict[str, Any] | None = None,
    ) -> None:
        """Accept the client's offer (Tornado then echoes ``agreed_parameters`` in the
        response), adding no context takeover both ways.  A ValueError makes Tornado drop
        the connection, as it does for an offer it cannot take."""
        if not set(agreed_parameters) <= OFFER_KEYS:
            raise ValueError(f"unsupported permessage-deflate parameters {agreed_parameters!r}")
        wbits = int(agreed_parameters.get("server_max_window_bits") or zlib.MAX_WBITS)
        if not 9 <= wbits <= zlib.MAX_WBITS:  # zlib's raw deflate has no 8-bit window
            raise ValueError(f"server_max_window_bits {wbits}: miaws takes 9 to 15")
        agreed_parameters["server_no_context_takeover"] = None
        agreed_parameters["client_no_context_takeover"] = None
        options = compression_options or {}
        self._compressor = Deflater(
            options.get("compression_level", 1), options.get("min_size", 0), wbits
        )
        self._decompressor = Inflater()

    def write_message(
        self, message: str | bytes | dict[str, Any], binary: bool = False
    ) -> Future[None]:
        """Tornado's, with ``compression.min_size`` honoured (Tornado compresses all)."""
        deflater = self._compressor
        if deflater is None:
            return super().write_message(message, binary)
        if isinstance(message, dict):
            message = tornado.escape.json_encode(message)
        frame = deflater.frame(0x2 if binary else 0x1, tornado.escape.utf8(message))
        try:
            self.send_frame(frame)
        except StreamClosedError:
            raise WebSocketClosedError() from None
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _handle_frames(self, data: bytes, pos: int) -> tuple[int, bytes] | Paused | None:
        """:meth:`MiawsProtocol._handle_frames` with RSV1: each frame inflated as it comes,
        the limit counted on what it inflates to."""
        limit = self.params.max_message_size
        inflater = self._decompressor
        assert inflater is not None
        while True:
            fragments = self._fragmented_message_buffer
            start = pos
            budget = limit if fragments is None else limit - len(fragments)
            # A compressed frame may be longer than what it inflates to: its header is held
            # to the whole limit, what it inflates to (below) to the budget left.
            if inflater.stream is not None or (pos < len(data) and data[pos] & RSV1):
                frame = parse_frame(data, pos, limit, RESERVED)
            else:
                frame = parse_frame(data, pos, budget, RESERVED)
            if type(frame) is int:
                if frame > 0:
                    tail = data[pos:]
                    if (
                        frame > 10
                        and len(tail) > 2
                        and not tail[0] & RSV1
                        and not (tail[0] & 0x0F == 0 and inflater.stream is not None)
                        and not self._check_partial(tail)
                    ):
                        self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                        return None
                    return frame, tail
                if frame == UNMASKED:
                    self._fail(CloseCode.PROTOCOL_ERROR, "frame not masked")
                    return None
                if frame == TOO_BIG:
                    self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                self._abort()
                return None
            opcode, fin, payload, pos = frame  # type: ignore[misc]
            compressed = data[start] & RSV1
            if opcode & 0x08:
                if compressed:
                    self._fail(CloseCode.PROTOCOL_ERROR, "compressed control frame")
                    return None
                if not fin:  # control frames must not be fragmented
                    self._abort()
                    return None
                handled = self._handle_message(opcode, payload)
                if handled is not None:
                    return Paused(handled, pos)
                if self.client_terminated:
                    return None
                continue
            if opcode == 0:
                if fragments is None:  # nothing to continue
                    self._abort()
                    return None
                if compressed:
                    self._fail(CloseCode.PROTOCOL_ERROR, "RSV1 on a continuation frame")
                    return None
                opcode = self._fragmented_message_opcode
            elif fragments is not None or opcode > 0x2:
                self._abort()  # a new message before the last one finished, or no such opcode
                return None
            elif compressed:
                inflater.stream = zlib.decompressobj(-zlib.MAX_WBITS)
            part = payload
            if inflater.stream is not None:
                try:
                    inflated = inflate(inflater.stream, payload + TAIL if fin else payload, budget)
                except zlib.error:
                    self._fail(CloseCode.INVALID_PAYLOAD, "data does not inflate")
                    return None
                if inflated is None:
                    self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    self._abort()
                    return None
                part = inflated
                if fin:
                    inflater.stream = None
            text: str | None = None
            if fragments is None and fin:  # a whole message in one frame: the common case
                if opcode == 0x1:
                    try:
                        text = part.decode()
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                        return None
            else:
                if fragments is None:  # the first of a fragmented message
                    self._fragmented_message_opcode = opcode  # type: ignore[assignment]
                    fragments = self._fragmented_message_buffer = bytearray()
                    inflater.decoder = _utf8() if opcode == 0x1 else None
                    inflater.parts = []
                fragments.extend(part)
                if inflater.decoder is not None:
                    try:
                        inflater.parts.append(inflater.decoder.decode(part, bool(fin)))
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                        return None
                if not fin:
                    continue
                self._fragmented_message_buffer = None
                if opcode == 0x1:
                    text = "".join(inflater.parts)
                else:
                    part = bytes(fragments)
                inflater.decoder, inflater.parts = None, []
            if text is not None:
                handled = self._run_callback(self.handler.on_message, text)
            else:
                handled = self._handle_message(opcode, part)
            if handled is not None:
                return Paused(handled, pos)
            if self.client_terminated:
                return None
