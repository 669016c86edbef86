"""Drive a WebSocket protocol's frame reader with bytes over a real socket pair: miaws's
(``MiawsProtocol``, ``DeflateProtocol``) or Tornado's own (``WebSocketProtocol13``), the same
way, so that what each makes of a byte stream can be compared (tests/test_frame_property.py,
fuzz/fuzz_frames.py).

The server side of a ``socket.socketpair()`` is a Tornado ``IOStream`` under the protocol, as
after an upgrade; the client side writes the stream, in the chunks given, then a masked close
frame with code 4999 (so a reader still waiting for a frame either gets its close or keeps
waiting, and then sees the end of the stream).  The outcome is what a client and the
application would observe: the messages given to ``on_message``, the frames the server sent
(pongs, its close frame's code), and whether the reader ended.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from tornado.iostream import IOStream
from tornado.websocket import WebSocketProtocol13, _WebSocketParams

from miaws.transport.deflate import DeflateProtocol
from miaws.transport.frames import encode_frame
from miaws.transport.protocol import MiawsProtocol

MARK = 4999  # the close code the driver ends every stream with
MASK = b"\x5a\xa5\x0f\xf0"


@dataclass
class Outcome:
    messages: list[str | bytes] = field(default_factory=list)
    sent: list[tuple[int, bytes]] = field(default_factory=list)  # (opcode, payload) from the server
    ended: bool = False  # the reader told the handler the connection closed
    errors: list[str] = field(default_factory=list)  # exceptions and error log lines

    @property
    def close(self) -> int | None:
        """The code of the server's close frame (1005: none in it); None: no close frame."""
        for opcode, payload in self.sent:
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    @property
    def pongs(self) -> list[bytes]:
        return [p for op, p in self.sent if op == 0xA]


class Recorder:
    """The delegate a protocol calls (Tornado's ``_WebSocketDelegate``)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.done = asyncio.get_running_loop().create_future()

    def on_message(self, message: str | bytes) -> None:
        self.outcome.messages.append(message)

    def on_ping(self, data: bytes) -> None:
        pass

    def on_pong(self, data: bytes) -> None:
        pass

    def on_ws_connection_close(self, code: int | None = None, reason: str | None = None) -> None:
        self.outcome.ended = True
        if not self.done.done():
            self.done.set_result(None)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        self.outcome.errors.append(f"{typ.__name__}: {value}")


class _Errors(logging.Handler):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(logging.ERROR)
        self.outcome = outcome

    def emit(self, record: logging.LogRecord) -> None:
        self.outcome.errors.append(record.getMessage())


READERS: dict[str, type[WebSocketProtocol13]] = {
    "miaws": MiawsProtocol,
    "deflate": DeflateProtocol,
    "tornado": WebSocketProtocol13,
}


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The server's frames (unmasked, never fragmented here) in data, complete ones only."""
    frames, pos = [], 0
    while len(data) - pos >= 2:
        n, head = data[pos + 1] & 0x7F, pos + 2
        if n == 126:
            n, head = int.from_bytes(data[head : head + 2], "big"), head + 2
        elif n == 127:
            n, head = int.from_bytes(data[head : head + 8], "big"), head + 8
        if head + n > len(data):
            break
        frames.append((data[pos] & 0x0F, data[head : head + n]))
        pos = head + n
    return frames


async def drive(
    reader: str,
    stream: bytes,
    chunks: list[int] | None = None,
    limit: int = 1 << 20,
    deflate: bool = False,
    timeout: float = 5.0,
) -> Outcome:
    """What ``reader`` ("miaws", "deflate" or "tornado") makes of stream (see the module
    docstring); with deflate, permessage-deflate negotiated without context takeover."""
    outcome = Outcome()
    server_sock, client_sock = socket.socketpair()
    client_sock.setblocking(False)
    errors = _Errors(outcome)
    loggers = [logging.getLogger(n) for n in ("miaws", "tornado.application", "tornado.general")]
    for lg in loggers:
        lg.addHandler(errors)
    loop = asyncio.get_running_loop()
    recorder = Recorder(outcome)
    params = _WebSocketParams(max_message_size=limit)
    protocol = READERS[reader](recorder, False, params)
    protocol.stream = IOStream(server_sock)
    if deflate:
        agreed = {"server_no_context_takeover": None, "client_no_context_takeover": None}
        protocol._create_compressors("server", agreed, {"compression_level": 1, "min_size": 0})
    received = bytearray()

    async def read_all() -> None:
        while True:
            try:
                data = await loop.sock_recv(client_sock, 65536)
            except OSError:
                return
            if not data:
                return
            received.extend(data)

    reading = asyncio.ensure_future(read_all())
    running = asyncio.ensure_future(protocol._receive_frame_loop())
    try:
        data = stream + encode_frame(0x8, struct.pack("!H", MARK), mask=MASK)
        at = 0
        for size in chunks or [len(data)]:
            if at >= len(data):
                break
            try:
                await loop.sock_sendall(client_sock, data[at : at + size])
            except OSError:
                break
            at += size
            await asyncio.sleep(0)
        if at < len(data):
            try:
                await loop.sock_sendall(client_sock, data[at:])
            except OSError:
                pass
        try:
            client_sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        await asyncio.wait_for(asyncio.shield(recorder.done), timeout)
        await asyncio.wait([running], timeout=timeout)
        if running.done() and running.exception() is not None:
            # Tornado's reader raises on a close reason that is not UTF-8 and leaves the
            # stream open: record it, and close the stream as a server would time out.
            outcome.errors.append(f"reader raised {running.exception()!r}")
            protocol.stream.close()
        await asyncio.wait_for(reading, timeout)
    except asyncio.TimeoutError:
        outcome.errors.append("timed out")
    finally:
        for lg in loggers:
            lg.removeHandler(errors)
        reading.cancel()
        protocol.stream.close()
        client_sock.close()
    outcome.sent = server_frames(bytes(received))
    return outcome
