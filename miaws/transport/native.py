"""The native endpoint, service side: the Tornado handler of ``server.ws_path`` and its client.

:class:`WebSocketEndpoint` is what Tornado routes an upgrade to (directly, through
:mod:`miaws.transport.upgrade`, in the common case): it answers the upgrade (401 for a bad
token, 403 for a foreign origin), admits the connection, hands each text frame to the
dispatcher and reports the connection's end.  :class:`NativeClient` is the
:class:`~miaws.core.model.Client` the core sees; it writes prebuilt frames through the
connection's :class:`~miaws.transport.protocol.MiawsProtocol` (the wire side).
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import logging
import re
import time
from collections.abc import Awaitable
from typing import Any

import tornado
import tornado.httputil
import tornado.websocket
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketProtocol

from miaws.core.errors import CloseCode
from miaws.core.model import Client, Encoded, Outgoing
from miaws.service import Service
from miaws.transport.admission import SLOW_CONSUMER, Refused, refuse_request
from miaws.transport.auth import Identity
from miaws.transport.deflate import DeflateProtocol, Deflater, compression_options
from miaws.transport.frames import text_frame
from miaws.transport.protocol import MiawsProtocol, lighten_stream

__all__ = ["WebSocketEndpoint", "NativeClient", "DeflateClient"]

log = logging.getLogger("miaws")

_SERVER = f"TornadoServer/{tornado.version}"
_date: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The HTTP ``Date`` of now, as Tornado writes it, formatted once a second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, email.utils.formatdate(second, usegmt=True))
    return _date[1]


class NativeClient(Client):
    """A client of the native endpoint; writes prebuilt frames straight to its stream."""

    __slots__ = ("handler", "protocol", "max_queued")

    def __init__(
        self,
        handler: WebSocketEndpoint,
        protocol: MiawsProtocol,
        client_id: str,
        max_queued: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(client_id, "ws", **kw)
        self.handler = handler
        self.protocol = protocol
        self.max_queued = max_queued  # limits.max_queued_bytes; 0: no cap

    def deliver(self, message: Encoded) -> None:
        conn = self.protocol
        if conn.stream is None or conn.is_closing():
            return
        stream = conn.stream
        frame = message.wire or text_frame(message)
        if self.max_queued:
            # IOStream.write hands bytes to the kernel at once; what stays in _write_buffer
            # is what the peer has not taken (Tornado has no public accessor for its size).
            # Nearly always nothing: the admission path's rule only runs when something is.
            queued = len(stream._write_buffer)
            if queued and self.handler.service.admission.over_queue_cap(queued, len(frame)):
                self.handler.slow_consumer(queued)
                return
        try:
            conn.send_frame(frame)
        except StreamClosedError:
            return
        self.messages_out += 1

    def close(self, code: int, reason: str = "") -> None:
        self.handler.close(code, reason)


class DeflateClient(NativeClient):
    """A native client whose connection negotiated permessage-deflate: messages from
    ``compression.min_size`` bytes on get the compressed frame, made once per message for
    all such recipients (:meth:`miaws.transport.deflate.Deflater.text_frame`)."""

    __slots__ = ()

    def deliver(self, message: Encoded) -> None:
        # NativeClient.deliver's steps with another frame; written out again rather than
        # shared through a helper so that the uncompressed fan-out keeps its one call.
        conn = self.protocol
        deflater: Deflater | None = conn._compressor  # type: ignore[assignment]
        if deflater is None or len(message.data) < deflater.min_size:
            NativeClient.deliver(self, message)
            return
        if conn.stream is None or conn.is_closing():
            return
        frame = deflater.text_frame(message)
        if self.max_queued:
            queued = len(conn.stream._write_buffer)
            if queued and self.handler.service.admission.over_queue_cap(queued, len(frame)):
                self.handler.slow_consumer(queued)
                return
        try:
            conn.send_frame(frame)
        except StreamClosedError:
            return
        self.messages_out += 1


class WebSocketEndpoint(tornado.websocket.WebSocketHandler):
    """``server.ws_path``: welcome on open, each text frame through the dispatcher."""

    # Slots keep the instance dict below CPython's 30-key limit for shared-key dicts
    # (Tornado adds seven keys when the WebSocket opens); past it each handler carries a
    # private 1.6 KiB dict.
    __slots__ = ("service", "client", "identity", "_late_timer", "_held", "limit_refused")

    def initialize(self, service: Service) -> None:
        self.service = service
        self.client: NativeClient | None = None
        self.identity: Identity | None = None  # None after open: waiting for {"type":"auth"}
        self._late_timer: object | None = None
        self._held: str | None = None  # what admission.arrive counted, until _leave()
        self.limit_refused = False  # refused by a connection limit: no access-log line

    def prepare(self) -> Awaitable[None] | None:
        """Before the upgrade: the connection limits (429, or 503 with ``Retry-After``), then
        authentication (a missing or bad token is answered 401; a connect backend may say
        403, or fail: 503); an awaitable when a backend decides."""
        admission = self.service.admission
        remote_ip = self.request.remote_ip or ""
        try:
            self._held = admission.arrive(remote_ip)
        except Refused as exc:
            self.limit_refused = True
            refuse_request(self, exc)
            return None
        try:
            identity = admission.identify(
                self.request.headers, self.request.query_arguments, remote_ip=remote_ip
            )
        except Refused as exc:
            self._refuse_upgrade(exc)
            return None
        if identity is None or isinstance(identity, Identity):
            self.identity = identity
            return None
        return self._identify_later(identity)

    async def _identify_later(self, pending: Awaitable[Identity]) -> None:
        try:
            # A task of its own: the short way in runs this handler without one
            # (miaws.transport.upgrade._run), and aiohttp's timeouts need a task.
            self.identity = await asyncio.ensure_future(pending)
        except Refused as exc:
            self._refuse_upgrade(exc)

    def _refuse_upgrade(self, exc: Refused) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="miaws"'} if exc.status == 401 else None
        refuse_request(self, exc, headers)

    def on_finish(self) -> None:
        # The response is written: a refusal (401, 403, 400, ...) ends the connection here;
        # a 101 goes on until on_close.
        if self.get_status() != 101:
            self._leave()

    def _leave(self) -> None:
        held, self._held = self._held, None
        self.service.admission.leave(held)

    def check_origin(self, origin: str) -> bool:
        """Called by Tornado for cross-origin upgrades only; False answers 403."""
        try:
            self.service.admission.origin(origin, remote_ip=self.request.remote_ip or "")
        except Refused:
            return False
        return True

    def _request_summary(self) -> str:
        # Access log lines must not carry the token.  (Tornado builds this summary for every
        # upgrade even when its access log is off, so the common case stays cheap.)
        uri = self.request.uri or ""
        if "token=" in uri:
            uri = re.sub(r"(?<=[?&]token=)[^&]*", "***", uri)
        return f"{self.request.method} {uri} ({self.request.remote_ip})"

    def clear(self) -> None:
        """Tornado's ``RequestHandler.clear``, with the ``Date`` header formatted once a
        second: the same headers without ~10 µs of date formatting and
        ``MutableMapping.update`` per connection."""
        headers = tornado.httputil.HTTPHeaders()
        headers["Server"] = _SERVER
        headers["Content-Type"] = "text/html; charset=UTF-8"
        headers["Date"] = _http_date()
        self._headers = headers
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def get_compression_options(self) -> dict[str, Any] | None:
        """permessage-deflate offered back when ``compression.enabled``."""
        c = self.service.settings.compression
        return compression_options(c.enabled, c.level, c.min_size)

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if protocol is not None:
            # Tornado builds its protocol from private parameters; reuse that and only
            # change the class, so every Tornado setting keeps applying.  DeflateProtocol
            # becomes a MiawsProtocol when the client offers no compression.
            enabled = self.service.settings.compression.enabled
            protocol.__class__ = DeflateProtocol if enabled else MiawsProtocol
        return protocol

    def open(self, *args: str, **kwargs: str) -> None:
        refused = self.service.admission.refusal(self.request.remote_ip or "")
        if refused is not None:
            self.close(refused.code, refused.reason)
            return
        if not getattr(self.request.connection, "nodelay", False):
            # Not the short way in (miaws.transport.upgrade), whose socket has TCP_NODELAY from its
            # listening socket: Tornado's HTTP/1 connection turns Nagle back on after each
            # request, and Nagle would hold the second of two small writes ~40 ms.
            self.set_nodelay(True)
        if self.identity is None:  # auth.late_timeout: the first frame must be the token
            self._late_timer = IOLoop.current().call_later(
                self.service.auth.late_timeout, self._refuse, "authentication timed out"
            )
            return
        self._start(self.identity)

    def _start(self, identity: Identity) -> None:
        # Negotiated by now (the protocol's class changes only at its first read).
        deflating = getattr(self.ws_connection, "_compressor", None) is not None
        self.client = (DeflateClient if deflating else NativeClient)(
            self,
            self.ws_connection,  # type: ignore[arg-type]
            self.service.new_client_id(),
            self.service.settings.limits.max_queued_bytes,
            remote_ip=self.request.remote_ip or "",
            user_agent=self.request.headers.get("User-Agent", ""),
            connected_at=self.service.clock.timestamp(),
        )
        self.service.admission.admit(self.client, identity, self.request.headers)
        self._shed()

    def _shed(self) -> None:
        """Drop what an open WebSocket never uses again (about 4 KiB per connection): the
        request and response headers (the client keeps the User-Agent), the template UI
        namespace (Tornado drops it at close anyway) and the HTTP/1 connection objects the
        upgrade came through (with the request headers they keep)."""
        request = self.request
        request.headers = tornado.httputil.HTTPHeaders()
        request.connection = None
        request.server_connection = None
        self._headers = tornado.httputil.HTTPHeaders()
        self.ui = None  # type: ignore[assignment]
        if self.ws_connection is not None and self.ws_connection.stream is not None:
            lighten_stream(self.ws_connection.stream)

    def _late_auth(self, message: str | bytes) -> None:
        """The first frame of a connection that came without a token."""
        if self._late_timer is None:
            return  # refused already; frames still in flight are ignored
        IOLoop.current().remove_timeout(self._late_timer)
        self._late_timer = None
        remote_ip = self.request.remote_ip or ""
        try:
            identity = self.service.admission.identify_late(message, remote_ip=remote_ip)
        except Refused as exc:
            self.close(exc.code, exc.reason)
            return
        self._start(identity)

    def _refuse(self, reason: str) -> None:
        self._late_timer = None
        refused = self.service.admission.late_refused(
            reason, remote_ip=self.request.remote_ip or ""
        )
        self.close(refused.code, refused.reason)

    def slow_consumer(self, queued: int) -> None:
        """The client stopped reading: close it before its queue grows without bound."""
        if self.client is not None:
            self.service.admission.slow_consumer(self.client, queued)
        self.close(*SLOW_CONSUMER[:2])

    def on_message(self, message: str | bytes) -> Any:
        client = self.client
        if client is None:
            return self._late_auth(message)
        if isinstance(message, bytes):
            self.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
            return None
        try:
            result = self.service.dispatcher.handle(client, message)
            if type(result) is not list and inspect.isawaitable(result):  # an async handler
                return self._deliver_later(client, result)
            # What the handler asked for may fail only now (a broadcast the broker cannot
            # encode): the same 1011 as a handler that raised.
            self.service.deliver(client, result)
        except Exception:
            return self.service.admission.handler_failed(client)
        return None

    async def _deliver_later(self, client: NativeClient, pending: Any) -> None:
        try:
            outgoing: list[Outgoing] = await pending
            if self.client is not None:
                self.service.deliver(self.client, outgoing)
        except Exception:
            self.service.admission.handler_failed(client)

    def on_close(self) -> None:
        self._leave()
        if self._late_timer is not None:
            IOLoop.current().remove_timeout(self._late_timer)
            self._late_timer = None
        client, self.client = self.client, None
        if client is None:
            return
        self.service.admission.end(client, client.protocol.ended(self.close_code))
