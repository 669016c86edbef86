"""The native endpoint's WebSocket connection: Tornado's RFC 6455 protocol, cheaper per read.

This is the wire side of the native endpoint (the handler and the client, the service side,
are :mod:`miaws.transport.native`).  Tornado does the protocol work: heartbeat
(``websocket_ping_interval`` / ``websocket_ping_timeout``; miaws only schedules Tornado's pings
on loop timers, see :meth:`MiawsProtocol.start_pinging`) and the size limit
(``websocket_max_message_size``, closed with 1009).  :class:`MiawsProtocol` records who closed
the connection and how (:meth:`MiawsProtocol.ended`, a :class:`~miaws.core.model.Closed`): the
code the server sent, the code in the client's close frame (1005 if it had none), or 1006
when the connection was lost without a close frame.  A client that misses its heartbeat is
dropped at once and its end is marked dead.

For speed, :class:`MiawsProtocol` also replaces Tornado's frame reader (one ``read_bytes`` per
header field and payload) with one that parses every complete frame of each read at once, and
it *corks* writes: frames sent while a read is being handled (replies, broadcasts) are
collected per connection and written with one ``stream.write`` each when the read is done.
Reads are driven by future callbacks, each its own turn of the event loop, so after each read
the other connections get theirs (fair turns).  The reader checks UTF-8 as it arrives
(RFC 6455 section 8.1, fail fast): a single text frame whole, as before (the hot path); a
fragmented text message with an incremental decoder, fragment by fragment; and a text frame
still incomplete, part by part as its bytes come in; any of them not UTF-8 closes with 1007.
Close frames with an invalid code (section 7.4.1) are answered with 1002, a close reason that
is not UTF-8 with 1007 (Autobahn 6.4.*, 7.5.1, 7.9.*; issue 15), an unmasked frame with
1002 (section 5.1).  Everything else - control frames, the size limit (1009), closing - stays
Tornado's.  permessage-deflate connections have a subclass of their own,
:class:`miaws.transport.deflate.DeflateProtocol`.

Tornado internals used here are declared in :mod:`miaws.transport.tornado_private`.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar, cast
from weakref import WeakKeyDictionary

from tornado.concurrent import Future
from tornado.ioloop import IOLoop
from tornado.iostream import SSLIOStream, StreamClosedError
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketProtocol13

from miaws.core.errors import CloseCode
from miaws.core.model import Closed
from miaws.transport.frames import TOO_BIG, UNMASKED, parse_frame

__all__ = [
    "MiawsProtocol",
    "Paused",
    "corking",
    "run_corked",
    "READ_CHUNK",
    "ListQueue",
    "lighten_stream",
]

log = logging.getLogger("miaws")

PING_TIMED_OUT = "ping timed out"  # the reason Tornado's periodic_ping closes with
# The most one read hands the frame reader (read_bytes(partial=True)); every complete frame
# in it is handled.  A read usually brings what one recv got: the stream's chunk size
# (miaws.app.READ_CHUNK_SIZE, 8 KiB); more only when bytes were buffered already.
READ_CHUNK = 65536

# The frames corked per connection while a read is handled; None when no read is being
# handled.  (Kept here rather than on the protocol: one more attribute would take each
# protocol's instance dict past CPython's shared-key limit, ~1.3 KiB more per connection.)
_corked: dict[MiawsProtocol, list[bytes]] | None = None
_tasks: set[asyncio.Future[Any]] = set()  # see _keep
# UTF-8 checked as it arrives (fail fast, RFC 6455 section 8.1), kept here rather than on the
# protocol (the shared-key limit again): the decoder and the text so far of a fragmented text
# message, and the check of a text frame's payload while the frame is incomplete.
_Decoder = codecs.IncrementalDecoder
_utf8 = codecs.getincrementaldecoder("utf-8")
_messages: WeakKeyDictionary[MiawsProtocol, tuple[_Decoder, list[str]]] = WeakKeyDictionary()
_partials: WeakKeyDictionary[MiawsProtocol, _PartialText] = WeakKeyDictionary()
_loop = asyncio.get_running_loop
T = TypeVar("T")


class MiawsProtocol(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, remembering how the connection ended, with a batching
    frame reader and corked writes (see the module docstring)."""

    sent_close: tuple[int, str] | None = None
    got_close_frame = False
    dead = False

    def send_frame(self, frame: bytes) -> None:
        """Send a prebuilt frame: corked while a read is handled, else written at once."""
        corked = _corked
        if corked is not None:
            box = corked.get(self)
            if box is None:
                corked[self] = [frame]
            else:
                box.append(frame)
            return
        self.write(frame)

    def write(self, data: bytes) -> Future[None] | None:
        """Write data to the stream; straight to the socket when nothing is queued.

        Tornado's ``IOStream.write`` makes a Future and a callback per call; when its write
        buffer is empty (the usual case) a direct ``send`` is equivalent, and whatever the
        socket does not take goes through ``IOStream.write`` as before.  Returns None when
        the socket took everything, else IOStream.write's future."""
        stream = self.stream
        if not stream._write_buffer and not stream.closed():
            try:
                sent = stream.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # IOStream.write meets the error again and closes the stream
            if sent == len(data):
                return None
            data = data[sent:]
        return stream.write(data)

    def _write_frame(self, fin: bool, opcode: int, data: bytes, flags: int = 0) -> Future[None]:
        """Tornado's, with the control frames it writes (close, ping, pong) going through
        :meth:`write`; a server's control frame is two header bytes and the payload."""
        if not opcode & 0x8 or not fin or flags or self.mask_outgoing or len(data) > 125:
            return super()._write_frame(fin, opcode, data, flags)  # data, or an error
        frame = bytes((0x80 | opcode, len(data))) + data
        self._wire_bytes_out += len(frame)
        pending = self.write(frame)
        if pending is None:  # all sent: what Tornado's future would be by now
            pending = Future()
            pending.set_result(None)
        return pending

    def flush(self) -> None:
        """Write this connection's corked frames now (one write)."""
        box = _corked.pop(self, None) if _corked is not None else None
        if box is not None:
            self._write_out(box)

    def _write_out(self, box: list[bytes]) -> None:
        stream = self.stream
        if stream is None or stream.closed():
            return
        try:
            self.write(box[0] if len(box) == 1 else b"".join(box))
        except StreamClosedError:
            pass

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.flush()  # what was sent before the close frame goes before it
        if self.sent_close is None and not self.client_terminated:
            self.sent_close = (code or CloseCode.NORMAL_CLOSURE, reason or "")
        if reason == PING_TIMED_OUT and not self.dead:
            # The peer is gone: waiting 5 s for its close frame would only keep it listed.
            self.dead = True
            super().close(code, reason)
            self._abort()
            return
        super().close(code, reason)

    lingering = False

    def _abort(self) -> None:
        self.flush()  # replies to what came before a protocol violation still go out
        if self.lingering:
            return  # _linger aborts when done
        stream = self.stream
        if (
            self.sent_close is not None
            and not self.dead
            and stream is not None
            and not stream.closed()
            and not stream.reading()
        ):
            # A close frame is on its way (1009 from Tornado's size check, or ours) and the
            # frame reader gives up.  Closing now, with client data still unread, would make
            # the kernel send a reset and the client would lose the close frame; so read and
            # drop its input until it closes (2 s at most) first.
            self.lingering = True
            self.client_terminated = self.server_terminated = True
            IOLoop.current().spawn_callback(self._linger)
            return
        super()._abort()

    async def _linger(self, seconds: float = 2.0) -> None:
        deadline = IOLoop.current().time() + seconds
        try:
            while True:
                left = deadline - IOLoop.current().time()
                await asyncio.wait_for(self.stream.read_bytes(READ_CHUNK, partial=True), left)
        except (StreamClosedError, asyncio.TimeoutError):
            pass
        finally:
            self.lingering = False
            super()._abort()

    def start_pinging(self) -> None:
        """Tornado's heartbeat, on loop timers instead of a task per connection.

        Same settings (``websocket_ping_interval`` / ``websocket_ping_timeout``), same frames
        and the same schedule as Tornado's ``periodic_ping``: a ping every interval, and a
        close with "ping timed out" when no pong came within the timeout.  One pending
        ``TimerHandle`` per connection costs ~150 bytes where the task, its two coroutines and
        their futures cost ~1 KiB.  The handle is kept where Tornado keeps its task, so
        Tornado's ``close`` cancels it."""
        if self._ping_coroutine is None and self.ping_interval > 0:
            self._ping_coroutine = _loop().call_later(self.ping_interval, self._send_ping)  # type: ignore[assignment]

    def _send_ping(self) -> None:
        self._received_pong = False
        try:
            self.write_ping(b"")
        except StreamClosedError:
            self._ping_coroutine = None
            return
        self._ping_coroutine = _loop().call_later(self.ping_timeout, self._check_pong)  # type: ignore[assignment]

    def _check_pong(self) -> None:
        self._ping_coroutine = None
        if self.ping_timeout > 0 and not self._received_pong:
            self.close(reason=PING_TIMED_OUT)
            return
        # The next ping is due an interval after this one was sent, a timeout ago.  (Not
        # kept as an attribute: one more key in the protocol's instance dict would take it
        # past CPython's shared-key limit, ~1.3 KiB more per connection.)
        wait = max(self.ping_interval - self.ping_timeout, 0.0)
        self._ping_coroutine = _loop().call_later(wait, self._send_ping)  # type: ignore[assignment]

    def _handle_message(self, opcode: int, data: bytes) -> Any:
        if opcode == 0x8:
            self.got_close_frame = True
            if not self.client_terminated:
                if not _valid_close(data):
                    return self._fail(CloseCode.PROTOCOL_ERROR, "invalid close frame")
                try:  # Tornado's to_unicode would raise in the frame reader
                    data[2:].decode()
                except UnicodeDecodeError:
                    return self._fail(CloseCode.INVALID_PAYLOAD, "close reason not UTF-8")
        return super()._handle_message(opcode, data)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): send a close frame with code, read
        and drop what the peer still sends (see :meth:`_abort`), stop handling frames."""
        self.close(code, reason)
        self._abort()
        self.client_terminated = True

    async def _receive_frame_loop(self) -> None:
        """Start reading frames and return.

        Tornado awaits this at the end of a chain of five coroutines (``_execute`` → ``get``
        → ``accept_connection`` → ``_accept_connection``) that would otherwise stay alive as
        long as the connection.  miaws reads with callbacks instead: each read's future
        calls :meth:`_on_read`, which handles every complete frame and asks for the next
        read, so a waiting connection holds no task or coroutine (~2.5 KiB less).  Future
        callbacks run as their own turns of the event loop, so after each read the other
        connections get theirs (fair turns)."""
        if self._decompressor is not None:  # Tornado's permessage-deflate: its own reader
            # (the native endpoint's is miaws.transport.deflate.DeflateProtocol's)
            _keep(asyncio.ensure_future(super()._receive_frame_loop()))
            return
        self._read_next()

    _pending: bytearray | None = None  # the start of a frame not complete yet
    _need = 2  # bytes _pending must hold before parsing is worth trying

    def _read_next(self) -> None:
        stream = self.stream
        try:
            if stream._read_buffer_size or stream.closed() or isinstance(stream, SSLIOStream):
                # A Future (typed Awaitable by Tornado): done already when bytes were buffered.
                future = cast("asyncio.Future[bytes]", stream.read_bytes(READ_CHUNK, partial=True))
            else:
                # read_bytes would first try a recv, which almost always finds nothing yet
                # (the peer is still answering what we sent): wait for readiness instead.
                # (Not for TLS: data decrypted already can wait in the SSL object unseen by
                # epoll, which is why Tornado tries first.)
                future = stream._start_read()
                stream._read_bytes = READ_CHUNK
                stream._read_partial = True
                stream._add_io_state(IOLoop.READ)
        except StreamClosedError:
            self._abort()
            self._stopped()
            return
        future.add_done_callback(self._on_read)

    def _on_read(self, future: asyncio.Future[bytes]) -> None:
        try:
            chunk = future.result()
        except StreamClosedError:
            self._abort()
            self._stopped()
            return
        pending = self._pending
        if pending is not None:
            pending += chunk
            partial = _partials.get(self) if _partials else None
            if len(pending) < self._need:
                if partial is not None and not partial.valid(pending):
                    self._pending = None
                    self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                    self._stopped()
                    return
                self._read_next()
                return
            if partial is not None:
                del _partials[self]  # complete: the frame loop checks it whole
            self._pending = None
            chunk = bytes(pending)
        elif len(chunk) < self._need:
            self._pending = bytearray(chunk)
            self._read_next()
            return
        self._handle_read(chunk)

    def _handle_read(self, data: bytes, pos: int = 0) -> None:
        """Handle the frames of data from pos on, then read on or stop."""
        try:
            step = run_corked(self._handle_frames, data, pos)
        except Exception:  # a bug here must not pass silently; Tornado's reader logs too
            log.exception("frame reader failed; closing the connection")
            self._abort()
            step = None
        if isinstance(step, Paused):
            _keep(asyncio.ensure_future(self._resume(step, data)))
        elif step is None or self.client_terminated:
            self._stopped()
        else:
            need, tail = step
            # Set only when it changes: each attribute the protocol gains beyond Tornado's
            # own takes its instance dict past CPython's shared-key limit (~1.3 KiB more).
            if tail:
                self._pending = bytearray(tail)
                self._need = need
            elif self._need != need:  # no tail: need is 2 again
                self._need = need
            self._read_next()

    async def _resume(self, paused: Paused, data: bytes) -> None:
        """Wait for an async handler, then go on with the frames after its message."""
        try:
            await paused.handled
        except Exception:
            pass  # Tornado's _run_callback logs it
        if self.client_terminated:
            self._stopped()
        else:
            self._handle_read(data, paused.pos)

    def _stopped(self) -> None:
        """Reading has ended: tell the handler how the connection closed."""
        self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    def _handle_frames(self, data: bytes, pos: int) -> tuple[int, bytes] | Paused | None:
        """Handle every complete frame of data from pos on (corked by :meth:`_handle_read`).

        Returns (bytes needed for the next frame, the unparsed tail); :class:`Paused` when
        an async handler must finish before the next frame; or None once the connection is
        done (aborted, closed or over the size limit)."""
        limit = self.params.max_message_size
        while True:
            fragments = self._fragmented_message_buffer
            frame = parse_frame(data, pos, limit if fragments is None else limit - len(fragments))
            if type(frame) is int:
                if frame > 0:  # incomplete: the bytes it needs from pos, and those it has
                    tail = data[pos:]
                    if frame > 10 and len(tail) > 2 and not self._check_partial(tail):
                        self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                        return None
                    return frame, tail
                if frame == UNMASKED:
                    self._fail(CloseCode.PROTOCOL_ERROR, "frame not masked")
                    return None
                if frame == TOO_BIG:
                    self.close(1009, "message too big")
                self._abort()
                return None
            opcode, fin, payload, pos = frame  # type: ignore[misc]
            if fin:
                if opcode == 0:
                    if fragments is None:  # nothing to continue
                        self._abort()
                        return None
                    fragments.extend(payload)
                    opcode = self._fragmented_message_opcode
                    self._fragmented_message_buffer = None
                    if opcode == 0x1:
                        decoder, parts = _messages.pop(self)
                        try:
                            parts.append(decoder.decode(payload, True))
                        except UnicodeDecodeError:
                            self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                            return None
                        handled = self._run_callback(self.handler.on_message, "".join(parts))
                        if handled is not None:
                            return Paused(handled, pos)
                        if self.client_terminated:
                            return None
                        continue
                    payload = bytes(fragments)
                elif fragments is not None and not opcode & 0x08:
                    self._abort()  # a new message before the last one finished
                    return None
                if opcode == 0x1:  # text: the common case, without two layers of calls
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                        return None
                    handled = self._run_callback(self.handler.on_message, text)
                else:
                    handled = self._handle_message(opcode, payload)
                if handled is not None:  # an async handler: finish it before the next
                    return Paused(handled, pos)
                if self.client_terminated:
                    return None
            elif opcode & 0x08:  # control frames must not be fragmented
                self._abort()
                return None
            elif opcode == 0:
                if fragments is None:
                    self._abort()
                    return None
                fragments.extend(payload)
                if self._fragmented_message_opcode == 0x1:
                    decoder, parts = _messages[self]
                    try:
                        parts.append(decoder.decode(payload))
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                        return None
            elif fragments is not None:
                self._abort()
                return None
            else:
                self._fragmented_message_opcode = opcode  # type: ignore[assignment]
                self._fragmented_message_buffer = bytearray(payload)
                if opcode == 0x1:
                    decoder = _utf8()
                    try:
                        parts = [decoder.decode(payload)]
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_PAYLOAD, "text not UTF-8")
                        return None
                    _messages[self] = decoder, parts

    def _check_partial(self, tail: bytes) -> bool:
        """Whether the part of an incomplete frame in tail is valid so far, when it is text
        (a text frame, or a continuation of a text message).  Its check then goes on in
        :meth:`_on_read` as the rest arrives (:class:`_PartialText`)."""
        b0, b1 = tail[0], tail[1]
        opcode = b0 & 0x0F
        if opcode == 0x1:
            decoder = _utf8()
        elif opcode == 0 and self._fragmented_message_opcode == 0x1 and self in _messages:
            decoder = _utf8()
            decoder.setstate(_messages[self][0].getstate())
        else:
            return True
        n = b1 & 0x7F
        head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
        mask = b"\0\0\0\0"
        if b1 & 0x80:
            mask = tail[head : head + 4]
            head += 4
        if len(tail) < head:
            return True  # the header is not complete yet: checked once the frame is
        partial = _PartialText(decoder, mask, head)
        if not partial.valid(tail):
            return False
        _partials[self] = partial
        return True

    def ended(self, close_code: int | None) -> Closed:
        """How this connection ended: what the server sent, what the client's close frame
        said (1005 if it had no code), dead (missed heartbeat) or lost (1006)."""
        if self.dead:
            return Closed(CloseCode.ABNORMAL_CLOSURE, "dead: missed heartbeat", dead=True)
        if self.sent_close is not None:
            return Closed(*self.sent_close)
        if self.got_close_frame:
            return Closed(close_code or CloseCode.NO_STATUS_RECEIVED, "closed by client")
        return Closed(CloseCode.ABNORMAL_CLOSURE, "connection lost")


def _valid_close(payload: bytes) -> bool:
    """A close frame's payload is empty or holds a code a peer may send (RFC 6455 section
    7.4.1; 1012-1014 from the IANA registry; 3000-4999 registered or private)."""
    if not payload:
        return True
    if len(payload) == 1:
        return False
    code = int.from_bytes(payload[:2], "big")
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def corking() -> bool:
    """True while frames sent are corked (a read being handled, or :func:`run_corked`)."""
    return _corked is not None


def run_corked(function: Callable[..., T], *args: Any) -> T:
    """Call function, corking the frames it sends: each connection's leave in one write
    when it returns (also when it raises)."""
    global _corked
    if _corked is not None:  # corked already: the outer scope writes them
        return function(*args)
    corked: dict[MiawsProtocol, list[bytes]] = {}
    _corked = corked
    try:
        return function(*args)
    finally:
        _corked = None  # frames sent while these are written go out directly
        for protocol, box in corked.items():
            protocol._write_out(box)


class ListQueue(list[Any]):
    """The part of ``collections.deque`` that Tornado's write queues (and asyncio's queue
    waiters) use, on a list: an empty deque allocates a 520-byte block, an empty list
    nothing, and these are nearly always empty."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def lighten_stream(stream: Any) -> None:
    """Make an IOStream's two write queues lists (:class:`ListQueue`), ~1 KiB less per
    connection; Tornado uses only ``append``, ``popleft``, indexing and ``clear`` on them."""
    stream._write_futures = ListQueue(stream._write_futures)
    stream._write_buffer._buffers = ListQueue(stream._write_buffer._buffers)


class _PartialText:
    """The UTF-8 check of a text frame's payload while the frame is incomplete: what came
    so far is unmasked and decoded, each part once."""

    __slots__ = ("decoder", "mask", "head", "checked")

    def __init__(self, decoder: _Decoder, mask: bytes, head: int) -> None:
        self.decoder = decoder
        self.mask = mask
        self.head = head  # the header's length: where the payload starts
        self.checked = 0  # payload bytes decoded so far

    def valid(self, frame: bytes | bytearray) -> bool:
        """Whether the payload in frame (the frame's start, incomplete) is valid so far."""
        start = self.head + self.checked
        new = bytes(frame[start:])
        if not new:
            return True
        k = self.checked % 4
        mask = self.mask[k:] + self.mask[:k]
        self.checked += len(new)
        try:
            self.decoder.decode(_websocket_mask(mask, new))
        except UnicodeDecodeError:
            return False
        return True


class Paused(NamedTuple):
    """Frame handling waits for an async handler; it goes on at ``pos`` when it is done."""

    handled: Awaitable[Any]
    pos: int


def _keep(task: asyncio.Future[Any]) -> None:
    """Hold a reference to task until it is done (the event loop keeps only weak ones)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
