"""The native WebSocket endpoint: a thin Tornado translator over the dispatch core.

Tornado does the protocol work: heartbeat (``websocket_ping_interval`` /
``websocket_ping_timeout``) and the size limit (``websocket_max_message_size``, closed with
1009).  :class:`MiawsProtocol` only records who closed the connection and how, so that every
disconnect is logged with the right code: the code the server sent, the code in the
client's close frame (1005 if it had none), or 1006 when the connection was lost without a
close frame.  A client that misses its heartbeat is dropped at once and logged as dead.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import tornado.iostream
import tornado.websocket
from tornado.websocket import WebSocketProtocol, WebSocketProtocol13

from miaws.errors import CloseCode
from miaws.service import Service
from miaws.types import Client, Encoded, Outgoing

__all__ = ["WebSocketEndpoint", "NativeClient"]

log = logging.getLogger("miaws")

PING_TIMED_OUT = "ping timed out"  # the reason Tornado's periodic_ping closes with


class MiawsProtocol(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, remembering how the connection ended."""

    sent_close: tuple[int, str] | None = None
    got_close_frame = False
    dead = False

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.sent_close is None and not self.client_terminated:
            self.sent_close = (code or CloseCode.NORMAL_CLOSURE, reason or "")
        if reason == PING_TIMED_OUT and not self.dead:
            # The peer is gone: waiting 5 s for its close frame would only keep it listed.
            self.dead = True
            super().close(code, reason)
            self._abort()
            return
        super().close(code, reason)

    def _handle_message(self, opcode: int, data: bytes) -> Any:
        if opcode == 0x8:
            self.got_close_frame = True
        return super()._handle_message(opcode, data)

    def ended(self, close_code: int | None) -> tuple[int, str]:
        """(code, reason) to report for this connection's end."""
        if self.dead:
            return CloseCode.ABNORMAL_CLOSURE, "dead: missed heartbeat"
        if self.sent_close is not None:
            return self.sent_close
        if self.got_close_frame:
            return close_code or CloseCode.NO_STATUS_RECEIVED, "closed by client"
        return CloseCode.ABNORMAL_CLOSURE, "connection lost"


class NativeClient(Client):
    """A client of the native endpoint; writes prebuilt frames straight to its stream."""

    __slots__ = ("handler",)

    def __init__(self, handler: WebSocketEndpoint, client_id: str, **kw: Any) -> None:
        super().__init__(client_id, "ws", **kw)
        self.handler = handler

    def deliver(self, message: Encoded) -> None:
        conn = self.handler.ws_connection
        if conn is None or conn.is_closing() or conn.stream is None:
            return
        try:
            conn.stream.write(message.frame)
        except tornado.iostream.StreamClosedError:
            return
        self.messages_out += 1

    def close(self, code: int, reason: str = "") -> None:
        self.handler.close(code, reason)


class WebSocketEndpoint(tornado.websocket.WebSocketHandler):
    """``server.ws_path``: welcome on open, each text frame through the dispatcher."""

    service: Service
    client: NativeClient | None = None

    def initialize(self, service: Service) -> None:
        self.service = service

    def check_origin(self, origin: str) -> bool:
        return True  # a public real-time endpoint: browsers from any page may connect

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if protocol is not None:
            # Tornado builds its protocol from private parameters; reuse that and only
            # change the class, so every Tornado setting keeps applying.
            protocol.__class__ = MiawsProtocol
            self._protocol: MiawsProtocol = protocol  # type: ignore[assignment]
        return protocol

    def open(self, *args: str, **kwargs: str) -> None:
        if self.service.shutting_down:
            self.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        self.set_nodelay(True)
        self.client = NativeClient(
            self,
            self.service.new_client_id(),
            remote_ip=self.request.remote_ip or "",
            user_agent=self.request.headers.get("User-Agent", ""),
            connected_at=self.service.clock.timestamp(),
        )
        self.service.connect(self.client)

    def on_message(self, message: str | bytes) -> Any:
        client = self.client
        if client is None:
            return None
        if isinstance(message, bytes):
            self.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
            return None
        try:
            result = self.service.dispatcher.handle(client, message)
        except Exception:
            return self._internal_error()
        if inspect.isawaitable(result):
            return self._deliver_later(result)
        self.service.deliver(client, result)
        return None

    async def _deliver_later(self, pending: Any) -> None:
        try:
            outgoing: list[Outgoing] = await pending
        except Exception:
            self._internal_error()
            return
        if self.client is not None:
            self.service.deliver(self.client, outgoing)

    def _internal_error(self) -> None:
        log.exception(
            "handler failed for clientId=%s; closing with 1011",
            self.client.client_id if self.client else "?",
        )
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def on_close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        code, reason = self._protocol.ended(self.close_code)
        self.service.disconnect(client, code, reason)
