"""A short way in for WebSocket upgrades: Tornado's HTTP server with less per connection.

Every connection to Tornado's ``HTTPServer`` gets an ``HTTP1ServerConnection``, an
``HTTP1Connection``, a request loop task, a header timeout through ``gen.with_timeout``, the
routing delegates and then the handler.  For a WebSocket that work is spent once per
connection and is most of what a connect costs.  :class:`UpgradeServer` reads the request
head itself; when it is a plain WebSocket upgrade of ``server.ws_path`` (``GET`` over HTTP/1.1,
``Upgrade: websocket``, no body) it builds Tornado's own ``HTTPServerRequest`` and runs the
``WebSocketEndpoint`` handler on it directly, through :class:`UpgradeConnection`, a minimal
``HTTPConnection`` that writes the handler's one response (101, or a refusal such as 401,
403 or 400 followed by closing).  The handler, its checks and the WebSocket protocol are
Tornado's, unchanged.  Anything else (every other path and method, a malformed request, a
request with a body) is given back to Tornado untouched: the bytes read are put back in
front of the stream's buffer and Tornado's ``HTTPServer`` handles the connection as always.

Start-line parsing, the header size limit (``max_header_size``) and the header
timeout (``idle_connection_timeout``) are Tornado's own; header lines are split here but each
goes through Tornado's ``HTTPHeaders.add`` (:func:`parse_headers`).  The handler runs in the
turn of the event loop that read the head, without a task unless it has to wait
(:func:`_run`), and the frames it sends are corked: its 101 response leaves in one ``send``
with the welcome frame.
"""

from __future__ import annotations

import socket
from collections.abc import Coroutine, Iterable
from typing import Any, cast

import tornado.web
from tornado import httputil
from tornado.concurrent import Future
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError

from miaws.transport.protocol import MiawsProtocol, corking, run_corked

__all__ = ["UpgradeServer", "UpgradeConnection", "parse_headers"]


class UpgradeConnection(httputil.HTTPConnection):
    """The ``HTTPConnection`` of one upgrade request: one response, then detach or close."""

    nodelay = True  # the socket has TCP_NODELAY (see UpgradeServer.add_sockets)

    def __init__(self, stream: IOStream, context: _HTTPRequestContext) -> None:
        self.stream: IOStream | None = stream
        self.context = context  # remote_ip and protocol, worked out as Tornado does
        self.handler: tornado.web.RequestHandler | None = None  # set once it exists
        self._status = 0

    def set_close_callback(self, callback: Any) -> None:
        # Nothing to tell: miaws's handler runs from the request head to detach() in one
        # turn of the event loop.  One whose prepare waits meets a stream closed meanwhile
        # when it writes its response, or its WebSocket reader does.
        pass

    def write_headers(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> Future[None]:
        assert isinstance(start_line, httputil.ResponseStartLine) and self.stream is not None
        self._status = start_line.code
        if start_line.code != 101:
            headers["Connection"] = "close"  # a refused upgrade ends the connection
        lines = [f"HTTP/1.1 {start_line.code} {start_line.reason}"]
        lines += [f"{name}: {value}" for name, value in headers.get_all()]
        joined = "".join(lines)
        if "\r" in joined or "\n" in joined:  # what Tornado's HTTP/1 writer refuses too
            line = next(line for line in lines if "\r" in line or "\n" in line)
            raise ValueError(f"Illegal characters (CR or LF) in header: {line!r}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin1")
        if chunk:
            data += chunk
        protocol = getattr(self.handler, "ws_connection", None)
        if start_line.code == 101 and isinstance(protocol, MiawsProtocol) and corking():
            protocol.send_frame(data)  # corked: it leaves in one send with the welcome
            done: Future[None] = Future()
            done.set_result(None)
            return done
        return self.write(data)

    def write(self, chunk: bytes) -> Future[None]:
        assert self.stream is not None
        if self.stream.closed():
            future: Future[None] = Future()
            future.set_exception(StreamClosedError())
            future.exception()  # retrieved: nobody need wait for it
            return future
        return self.stream.write(chunk)

    def finish(self) -> None:
        self.handler = None  # written its one response: no cycle through the handler
        stream = self.stream
        if self._status != 101 and stream is not None:
            self.stream = None
            if stream.closed():
                return
            stream.write(b"").add_done_callback(lambda _: stream.close())

    def detach(self) -> IOStream:
        stream, self.stream = self.stream, None
        assert stream is not None
        return stream


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run coro now, as far as it goes; if it has to wait, go on when what it waits for is done.

    A WebSocket upgrade's ``_execute`` does not wait (prepare, the checks, the 101 and open
    are synchronous), so a ``Task`` for it would only cost an extra turn of the event loop
    per connection.  No cancellation: nothing cancels a request handler.  An exception
    escaping coro goes to the event loop's exception handler, as a task's would be logged.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    if waiting is None:  # a bare yield: asyncio.sleep(0)
        IOLoop.current().add_callback(_run, coro)
    else:  # an asyncio future, as a Task would see it
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(lambda _done: _run(coro))


def parse_headers(block: str) -> httputil.HTTPHeaders:
    """``HTTPHeaders.parse(block)``, the same headers or the same ``HTTPInputError``, 3x faster.

    Tornado's ``parse_line`` runs a regular-expression search for the line ending on every
    header line, over the whole line: ~1.2 µs a line, most of the ~17 µs the headers of an
    upgrade cost.  Here the lines are split once; each keeps Tornado's rules (a CR before
    the LF dropped, no folding, a colon required, the value stripped of spaces and tabs)
    and goes through Tornado's ``HTTPHeaders.add``, which validates the name and value."""
    headers = httputil.HTTPHeaders()
    lines = block.split("\n")
    last = lines.pop()  # not ended by a LF: any CR in it stays (and is refused)
    for line in lines:
        _parse_line(headers, line[:-1] if line.endswith("\r") else line)
    _parse_line(headers, last)
    return headers


def _parse_line(headers: httputil.HTTPHeaders, line: str) -> None:
    if not line:
        return
    if line[0] in httputil.HTTP_WHITESPACE:
        raise httputil.HTTPInputError(
            "header line cannot start with whitespace, folding not supported"
        )
    name, colon, value = line.partition(":")
    if not colon:
        raise httputil.HTTPInputError("no colon in header line")
    headers.add(name, value.strip(httputil.HTTP_WHITESPACE))


class UpgradeServer(HTTPServer):
    """Tornado's ``HTTPServer``, running WebSocket upgrades of one path straight into their
    handler (see the module docstring)."""

    def initialize(  # type: ignore[override]
        self,
        request_callback: tornado.web.Application,
        *,
        ws_path: str,
        ws_handler: type[tornado.web.RequestHandler],
        ws_kwargs: dict[str, Any],
        header_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().initialize(request_callback, **kwargs)
        # The first request head's deadline (server.header_timeout), whichever path it is
        # for; Tornado's own (idle_connection_timeout) then bounds each later keep-alive one.
        self.header_timeout = header_timeout or self.conn_params.header_timeout
        self.application = request_callback
        self.ws_path = ws_path
        self.ws_handler = ws_handler
        self.ws_kwargs = ws_kwargs

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Tornado's, with ``TCP_NODELAY`` set on each listening TCP socket.

        WebSockets need it (without it Nagle holds the second of two small writes until
        the client's delayed ACK, ~40 ms later); on Linux an accepted socket inherits it
        from its listening socket, which saves a system call per connection."""
        sockets = list(sockets)
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().add_sockets(sockets)

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        params = self.conn_params
        # A Future (typed Awaitable by Tornado): done already when the head was buffered.
        head = cast(
            "Future[bytes]",
            stream.read_until_regex(b"\r?\n\r?\n", max_bytes=params.max_header_size),
        )
        if head.done():  # the head came with the connection (the usual case): go on now
            self._on_head(stream, address, head, None)
            return
        timeout = self.header_timeout
        timer = None
        if timeout is not None:
            timer = IOLoop.current().call_later(timeout, stream.close)
        head.add_done_callback(lambda read: self._on_head(stream, address, read, timer))

    def _on_head(
        self, stream: IOStream, address: tuple[Any, ...], read: Future[bytes], timer: Any
    ) -> None:
        if timer is not None:
            IOLoop.current().remove_timeout(timer)
        try:
            data = read.result()
        except Exception:  # closed, timed out or over max_header_size: as Tornado does
            stream.close()
            return
        request = self._upgrade_request(stream, address, data)
        if request is None:
            # Not ours: give the bytes back and let Tornado handle the connection.
            stream._read_buffer[0:0] = data
            stream._read_buffer_size += len(data)
            super().handle_stream(stream, address)
            return
        # What Tornado's _HandlerDelegate.execute does once routing has found the handler.
        handler = self.ws_handler(self.application, request, **self.ws_kwargs)
        cast(UpgradeConnection, request.connection).handler = handler
        transforms = [t(request) for t in self.application.transforms]
        run_corked(_run, handler._execute(transforms))

    def _upgrade_request(
        self, stream: IOStream, address: tuple[Any, ...], data: bytes
    ) -> httputil.HTTPServerRequest | None:
        """Tornado's request for a plain WebSocket upgrade of ws_path, else None."""
        text = data.decode("latin1").lstrip("\r\n")
        eol = text.find("\n")
        try:
            start_line = httputil.parse_request_start_line(text[:eol].rstrip("\r"))
            if (
                start_line.method != "GET"
                or start_line.version != "HTTP/1.1"
                or start_line.path.partition("?")[0] != self.ws_path
            ):
                return None
            headers = parse_headers(text[eol:])
            if (
                headers.get("Upgrade", "").lower() != "websocket"
                or "Content-Length" in headers
                or "Transfer-Encoding" in headers
            ):
                return None
            context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
            return httputil.HTTPServerRequest(
                connection=UpgradeConnection(stream, context),
                start_line=start_line,
                headers=headers,
            )
        except httputil.HTTPInputError:
            return None  # Tornado answers malformed requests its own way
