"""Socket.IO's hot path on the WebSocket: Engine.IO packets read and written by miaws.

python-engineio and python-socketio keep every part of the protocol (the handshake, namespace
``CONNECT`` / ``DISCONNECT``, long-polling and the upgrade from it, ping / pong, binary packets,
errors).  Once a session is connected over a WebSocket, the two commonest packets skip their
machinery, which costs an asyncio task or two per packet (the reader's ``wait_for`` and the
writer's queue) and a Tornado ``write_message`` per packet:

- **In**: a text frame holding an Engine.IO ``MESSAGE`` with a Socket.IO ``EVENT`` (``42…``,
  with or without an ack id or a namespace) is parsed here (:func:`parse_event`) and handed to
  the bridge at once, while Engine.IO's own reader is idle (nothing it has queued is still
  unhandled, so order is kept).  Anything else goes to Engine.IO's reader as before.
- **Out**: a packet for a session (:func:`write`) becomes a WebSocket frame sent through the
  connection's :class:`~miaws.transport.protocol.MiawsProtocol` (corked while a read is
  handled, as on the native endpoint) when nothing Engine.IO queued for that session is still
  unwritten; else it joins Engine.IO's queue behind it.  :class:`SocketQueue` is Engine.IO's
  per-session queue counting what it holds, so the test costs nothing.

The internals of both libraries relied on here are declared in
:mod:`miaws.transport.engineio_private`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import engineio
import engineio.packet
import tornado.httputil
from tornado.iostream import StreamClosedError

from miaws.core.model import decode_json_fast
from miaws.transport.deflate import Deflater
from miaws.transport.protocol import ListQueue, lighten_stream

__all__ = [
    "LightQueue",
    "SocketQueue",
    "EngineServer",
    "shed",
    "shed_environ",
    "parse_event",
    "write",
    "text_frame_of",
    "bind",
]

_MAX_ID_DIGITS = 15


class LightQueue(asyncio.Queue[Any]):
    """An asyncio queue holding its items and waiters in lists (:class:`ListQueue`) instead
    of deques: ~2.5 KiB less per queue, and each Engine.IO session has two (its packets, and
    the frames its WebSocket handler received).  Relies on asyncio's ``_init`` hook (meant
    for subclasses, as ``PriorityQueue`` uses it) and its ``_getters`` / ``_putters`` /
    ``_finished._waiters``, which it only appends to, pops from the left, removes from and
    iterates (Python 3.11-3.13)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._getters: Any = ListQueue()
        self._putters: Any = ListQueue()
        self._finished = _LightEvent()
        self._finished.set()  # as asyncio's: no task unfinished yet

    def _init(self, maxsize: int) -> None:
        self._queue: Any = ListQueue()


class _LightEvent(asyncio.Event):
    """An asyncio event keeping its waiters in a list (see :class:`LightQueue`)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: Any = ListQueue()


class SocketQueue(LightQueue):
    """Engine.IO's per-session packet queue, counting the packets put and not yet done.

    ``held`` is 0 when Engine.IO's writer has written everything put here (it calls
    ``task_done`` per packet in the same turn as it writes them), so a frame written directly
    then cannot overtake one of Engine.IO's.  ``ws`` is the Tornado handler whose WebSocket
    carries the session, once known (:func:`bind`)."""

    held = 0
    queued_bytes = 0  # the data of the packets in the queue (limits.max_queued_bytes)
    ws: Any = None

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        self.held += 1

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.queued_bytes += _packet_size(item)

    def _get(self) -> Any:
        item = super()._get()
        self.queued_bytes -= _packet_size(item)
        return item

    def task_done(self) -> None:
        super().task_done()
        self.held -= 1


def _packet_size(item: Any) -> int:
    data = getattr(item, "data", None)
    return len(data) if isinstance(data, (str, bytes)) else 0


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server with :class:`SocketQueue` as each session's queue."""

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return SocketQueue(*args, **kwargs)


def shed(handler: Any) -> None:
    """Drop what the Tornado handler of a WebSocket session never uses again, once Engine.IO
    has read the request (as the native endpoint does): its request headers and HTTP/1
    connection objects, the template namespace, and the deques of its stream's write queues."""
    request = handler.request
    request.headers = tornado.httputil.HTTPHeaders()
    request.connection = None
    request.server_connection = None
    handler._headers = tornado.httputil.HTTPHeaders()
    handler.ui = None
    conn = handler.ws_connection
    if conn is not None and conn.stream is not None:
        lighten_stream(conn.stream)


_ENVIRON_STILL_READ = ("HTTP_CONNECTION", "HTTP_UPGRADE")  # by AsyncSocket.handle_get_request


def shed_environ(environ: dict[str, Any]) -> None:
    """Cut the environ of a WebSocket session to what Engine.IO still reads once the
    session is open: python-engineio's request coroutines keep it as long as the
    connection, with its ``wsgi.input`` (an instance of a class made per request, ~2.8 KiB)
    and every request header.  Not for long-polling, whose responses read it again."""
    environ["wsgi.input"] = None
    for key in [k for k in environ if k.startswith("HTTP_") and k not in _ENVIRON_STILL_READ]:
        del environ[key]


def bind(socket: Any, handler: Any) -> None:
    """Record that handler's WebSocket carries the Engine.IO session socket."""
    queue = socket.queue
    if isinstance(queue, SocketQueue):
        queue.ws = handler
        handler.eio_socket = socket


def parse_event(text: str) -> tuple[str, int | None, list[Any]] | None:
    """The namespace, ack id and data of an Engine.IO text packet carrying a Socket.IO
    ``EVENT`` (``42[...]``, ``42/chat,7[...]``), or None for any other packet or anything
    unusual (left to python-socketio, which answers it as it always has).

    The data is read fast where that gives the json module's values (python-socketio's
    parser; :func:`~miaws.core.model.decode_json_fast`); else None."""
    if not text.startswith("42"):
        return None
    pos = 2
    namespace = "/"
    if text.startswith("/", 2):
        comma = text.find(",", 2)
        if comma < 0:
            return None
        namespace = text[2:comma]
        if "?" in namespace:
            return None
        pos = comma + 1
    bracket = text.find("[", pos)
    if bracket < 0:
        return None
    digits = text[pos:bracket]
    if digits:
        if len(digits) > _MAX_ID_DIGITS or not digits.isdigit() or not digits.isascii():
            return None
        ack: int | None = int(digits)
    else:
        ack = None
    try:
        data = decode_json_fast(text[bracket:])
    except ValueError:
        return None
    if type(data) is not list or not data or type(data[0]) is not str:
        return None
    return namespace, ack, data


def text_frame_of(data: bytes) -> bytes:
    """The unmasked WebSocket text frame of data (UTF-8)."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + data
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + data


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame :func:`text_frame_of` made (unmasked: a 2, 4 or 10-byte head)."""
    n = frame[1]
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]


_last_deflated: tuple[bytes, int, int, bytes] | None = None  # frame, level, wbits -> deflated


def deflated_frame(deflater: Deflater, frame: bytes) -> bytes:
    """frame as deflater sends it.  A broadcast hands every recipient the same frame object
    (SocketIOBridge.encode), so the last one deflated is reused: deflated once per broadcast
    for all recipients with the same level and window, as on the native endpoint."""
    global _last_deflated
    last = _last_deflated
    if last is not None and last[0] is frame:
        if last[1] == deflater.level and last[2] == deflater.wbits:
            return last[3]
    out = deflater.frame(0x1, frame_payload(frame))
    _last_deflated = (frame, deflater.level, deflater.wbits, out)
    return out


def write(socket: Any, frame: bytes) -> None:
    """Send frame (an Engine.IO MESSAGE packet, ``4`` and the Socket.IO packet, as a text
    frame of :func:`text_frame_of`) to the session socket: written directly when its
    WebSocket is up and Engine.IO holds nothing unwritten for it, else queued for Engine.IO
    (as ``AsyncSocket.send`` does, without its task).  Nothing is sent to a closed
    session."""
    if socket.closed:
        return
    queue = socket.queue
    ws = queue.ws
    if (
        ws is not None
        and not queue.held
        and socket.upgraded
        and not socket.upgrading
        and not socket.closing
    ):
        conn = ws.ws_connection
        if conn is None or conn.is_closing():
            return  # the WebSocket is going; Engine.IO ends the session
        deflater: Deflater | None = conn._compressor
        try:
            if deflater is None:
                conn.send_frame(frame)
            else:  # permessage-deflate: the Engine.IO packet, compressed from min_size on
                conn.send_frame(deflated_frame(deflater, frame))
        except StreamClosedError:
            pass
        return
    text = frame_payload(frame)[1:].decode()  # the Socket.IO packet, for Engine.IO's queue
    queue.put_nowait(engineio.packet.Packet(engineio.packet.MESSAGE, data=text))
