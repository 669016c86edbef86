"""A bare-bones WebSocket client over asyncio streams, for what a polite client cannot do:
stop reading (slow consumer), send malformed frames (fuzzing), see the exact close code.

Only what the tests need: the client handshake, masked frames out, unmasked frames in.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any


def client_frame(
    payload: bytes, opcode: int = 0x1, fin: bool = True, rsv: int = 0, mask: bytes | None = None
) -> bytes:
    """A masked client frame (a random mask unless one is given)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = mask or os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWS:
    """One raw connection: ``await RawWS.open(port)``; ``send_json``; ``read_frame``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}  # of the upgrade's response, names in lower case
        self.rsv1 = False  # the last frame read had RSV1 (permessage-deflate: compressed)

    @classmethod
    async def open(
        cls, port: int, path: str = "/ws", headers: dict[str, str] | None = None, rcvbuf: int = 0
    ) -> RawWS:
        sock = socket.socket()
        if rcvbuf:  # before connect, so the TCP window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        conn = cls(reader, writer)
        conn.status = int(head.split(b" ", 2)[1])
        for line in head.decode("latin1").split("\r\n")[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                conn.headers[name.strip().lower()] = value.strip()
        return conn

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_text(self, text: str) -> None:
        self.writer.write(client_frame(text.encode()))

    def send_json(self, message: Any) -> None:
        self.send_text(json.dumps(message))

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame; None at end of stream."""
        try:
            b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.rsv1 = bool(b0 & 0x40)
        return b0 & 0x0F, payload

    async def read_json(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next text frame as JSON (skipping pings); AssertionError on close or EOF."""
        while True:
            frame = await self.read_frame(timeout)
            assert frame is not None, "connection ended"
            opcode, payload = frame
            assert opcode != 0x8, f"closed with {close_code(payload)}"
            if opcode == 0x1:
                result: dict[str, Any] = json.loads(payload)
                return result

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the close frame: its code (1005 if none); None if the stream just ended."""
        while True:
            frame = await self.read_frame(timeout)
            if frame is None:
                return None
            if frame[0] == 0x8:
                self.writer.write(client_frame(frame[1][:2], 0x8))  # complete the handshake
                return close_code(frame[1])

    def abort(self) -> None:
        self.writer.transport.abort()


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
