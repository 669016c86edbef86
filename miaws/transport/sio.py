"""The Socket.IO endpoint: python-socketio on the same Tornado app, over the same dispatch core.

An event is a message: its name is the message ``type`` and its one argument the message
object (``type`` is set from the event name).  Everything after that is the native path:
``Dispatcher.handle_message`` then ``Service.deliver``.  Each reply is emitted as an event named
by its ``type``; when the client asked for an ack, the ack gets the reply too (for a
``broadcast``, which has no reply, the broadcast as delivered).  Rooms live in the hub, so
delivery to a room reaches native and Socket.IO members alike; python-socketio's own rooms are
not used.

Connections come in and go out through the admission path (:mod:`miaws.transport.admission`),
as on /ws.  Disconnect reasons of Socket.IO become these :class:`~miaws.core.model.Closed` codes
(``docs/socketio.md``): ``client disconnect`` 1000, ``server disconnect`` 1000 (or the code
given to :meth:`SocketIOClient.close`), ``transport close`` 1005, ``transport error`` and
``ping timeout`` 1006 (the latter logged as ``dead``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import engineio.exceptions
import socketio

from miaws.core.errors import CloseCode
from miaws.core.model import Client, Closed, Encoded, Outgoing
from miaws.service import Service
from miaws.transport.admission import SLOW_CONSUMER, Refused, refuse_request
from miaws.transport.auth import Identity

__all__ = ["SocketIOBridge", "SocketIOClient", "REASON_CODES"]

log = logging.getLogger("miaws")

PATH = r"/socket.io/"

REASON_CODES: dict[str, Closed] = {
    "client disconnect": Closed(CloseCode.NORMAL_CLOSURE, "closed by client"),
    "server disconnect": Closed(CloseCode.NORMAL_CLOSURE, "closed by server"),
    "transport close": Closed(CloseCode.NO_STATUS_RECEIVED, "transport closed"),
    "transport error": Closed(CloseCode.ABNORMAL_CLOSURE, "connection lost: transport error"),
    "ping timeout": Closed(CloseCode.ABNORMAL_CLOSURE, "dead: missed heartbeat", dead=True),
}
"""python-socketio's disconnect reason -> how the connection ended, as the log shows it."""


def compression_enabled(settings: Any) -> bool:
    """Whether Socket.IO compresses: permessage-deflate on its WebSocket, gzip/deflate on its
    polling responses.  The one place that reads it: ``compression.enabled`` (off by default,
    as socket.io 4's), the native endpoint's setting too.  (Socket.IO's WebSocket then uses
    Tornado's permessage-deflate and reader: context takeover, Tornado's level 6.)"""
    return bool(settings.compression.enabled)


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The HTTP headers of the request that opened the Engine.IO connection, by lower-case
    name (from the WSGI-style environ python-engineio builds)."""
    return {
        name[5:].replace("_", "-").lower(): value
        for name, value in environ.items()
        if name.startswith("HTTP_") and isinstance(value, str)
    }


class _Server(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, closing a connection that sends a packet it cannot parse
    (as socket.io's own server does) instead of logging a traceback and going on, and
    telling the bridge when an Engine.IO connection starts and ends (what the admission path
    counted for it is given back then)."""

    bridge: SocketIOBridge

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        self.bridge.eio_connected(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.bridge.eio_disconnected(eio_sid)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError:
            await self.bridge.bad_packet(eio_sid)


class SocketIOClient(Client):
    """A client connected to one Socket.IO namespace."""

    __slots__ = ("bridge", "sid", "eio_sid", "closed_with", "handler")

    def __init__(
        self, bridge: SocketIOBridge, sid: str, eio_sid: str, client_id: str, **kw: Any
    ) -> None:
        super().__init__(client_id, "socket.io", **kw)
        self.bridge = bridge
        self.sid = sid
        self.eio_sid = eio_sid
        self.closed_with: Closed | None = None  # how the server closed it
        self.handler: Any = None  # the Tornado handler of a connection opened as WebSocket

    def deliver(self, message: Encoded) -> None:
        """Emit the event named by the message's ``type``, with the message as its argument."""
        text = self.bridge.encode(message, self.namespace)
        if self.bridge.over_queue_cap(self, len(text)):
            return
        self.bridge.send(self, text)
        self.messages_out += 1

    def close(self, code: int, reason: str = "") -> None:
        """Disconnect from the namespace; the disconnect is logged with this code."""
        if self.closed_with is None:
            self.closed_with = Closed(code, reason)
            self.bridge.spawn(self.bridge.sio.disconnect(self.sid, namespace=self.namespace))


class SocketIOBridge:
    """One python-socketio ``AsyncServer`` wired to a :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        s = service.settings
        self.compression = compression_enabled(s)
        options: dict[str, Any] = {
            "max_http_buffer_size": s.limits.max_message_bytes,
            "http_compression": self.compression,  # Engine.IO's default is on
        }
        if s.heartbeat.interval:
            options.update(ping_interval=s.heartbeat.interval, ping_timeout=s.heartbeat.timeout)
        self.sio = _Server(
            async_mode="tornado",
            cors_allowed_origins=s.socketio.cors_allowed_origins,
            namespaces=list(s.socketio.namespaces),
            async_handlers=False,  # one client's events in order, as on the native endpoint
            **options,
        )
        self.sio.bridge = self
        self.clients: dict[tuple[str, str], SocketIOClient] = {}  # (namespace, sid) -> client
        self.held: dict[str, str] = {}  # eio_sid -> what admission.arrive counted for it
        self._tasks: set[asyncio.Future[Any]] = set()
        self._last: tuple[Encoded, str, str] | None = None
        self.sio.on("connect", self.on_connect, namespace="*")
        self.sio.on("disconnect", self.on_disconnect, namespace="*")
        self.sio.on("*", self.on_event, namespace="*")

    def handler(self) -> Any:
        """The Tornado request handler class to mount at :data:`PATH`."""
        base: Any = socketio.get_tornado_handler(self.sio)
        admission = self.service.admission
        compression = self.compression

        class Handler(base):  # type: ignore[misc]
            # What admission.arrive counted for the new connection this request opens, until
            # Engine.IO makes a session of it (SocketIOBridge.eio_connected) or it ends.
            held: str | None = None
            limit_refused = False  # refused by a connection limit: no access-log line

            def prepare(self) -> Any:
                request = self.request
                remote_ip = request.remote_ip or ""
                # A GET without a sid opens an Engine.IO connection (polling or WebSocket):
                # the connection limits answer 429, or 503 with Retry-After, before Engine.IO
                # sees it.  Every later request of a connection carries its sid.
                if request.method == "GET" and "sid" not in request.query_arguments:
                    try:
                        self.held = admission.arrive(remote_ip, transport="socket.io")
                    except Refused as exc:
                        self.limit_refused = True
                        refuse_request(self, exc)
                        return None
                # security.allowed_origins, as on /ws: a foreign origin gets 403 before
                # Engine.IO sees the request (same-origin pages are always allowed).
                origin = request.headers.get("Origin")
                if origin is not None and urlsplit(origin).netloc != request.host:
                    try:
                        admission.origin(origin, remote_ip=remote_ip, endpoint="Socket.IO")
                    except Refused as exc:
                        self.set_status(exc.status)
                        self.finish()
                        return None
                return super().prepare()

            def on_finish(self) -> None:
                # A polling handshake that made no session, or a refusal; a 101 goes on
                # until on_close.
                if self.get_status() != 101:
                    self.leave()

            def on_close(self) -> None:
                self.leave()
                super().on_close()

            def leave(self) -> None:
                held, self.held = self.held, None
                admission.leave(held)

            def open(self, *args: Any, **kwargs: Any) -> Any:
                # As on /ws: without it Nagle holds the second of two small writes (reply
                # event, then ack) until the client's delayed ACK, some 40 ms later.
                self.set_nodelay(True)
                return super().open(*args, **kwargs)

            def get_compression_options(self) -> dict[str, Any] | None:
                # Engine.IO's handler offers permessage-deflate to every WebSocket ({}); it
                # follows miaws's setting instead (None: not negotiated).
                return {} if compression else None

        return Handler

    def eio_connected(self, eio_sid: str, environ: dict[str, Any]) -> None:
        """Engine.IO made a session of a new connection: what its handshake request held
        is now the session's, given back when it ends (:meth:`eio_disconnected`)."""
        handler: Any = environ.get("tornado.handler")
        held = getattr(handler, "held", None)
        if held is not None:
            handler.held = None
            self.held[eio_sid] = held

    def eio_disconnected(self, eio_sid: str) -> None:
        self.service.admission.leave(self.held.pop(eio_sid, None))

    async def shutdown(self) -> None:
        """End every Engine.IO connection and python-socketio's background tasks."""
        for socket in list(self.sio.eio.sockets.values()):
            await socket.close(wait=False, abort=True)
        await self.sio.shutdown()

    # ------------------------------------------------------------ sending
    def encode(self, message: Encoded, namespace: str) -> str:
        """The Socket.IO EVENT packet for message, encoded once per broadcast: the hub hands
        every recipient the same :class:`Encoded`, so the last packet is reused.

        Written from the message's JSON text (encoded once, as for /ws) rather than through
        python-socketio's ``Packet``, which would JSON-encode the payload again and walk it
        for binary parts first (a message is JSON: it has none).  Same text as
        ``Packet(EVENT, namespace, [type, payload]).encode()`` but for non-ASCII characters,
        which stay unescaped (as on /ws and in Node's socket.io)."""
        last = self._last
        if last is not None and last[0] is message and last[1] == namespace:
            return last[2]
        prefix = "2[" if namespace == "/" else f"2{namespace},["
        event = json.dumps(message.payload["type"])
        text = f"{prefix}{event},{message.text}]"
        self._last = (message, namespace, text)
        return text

    def over_queue_cap(self, client: SocketIOClient, size: int) -> bool:
        """limits.max_queued_bytes for a Socket.IO client: True (and the client is dropped with
        1013) when what waits for it would pass the cap: Tornado's write buffer of its
        WebSocket plus Engine.IO's packet queue (counted as packets of this size; polling
        clients queue there).  An empty queue takes any packet."""
        admission = self.service.admission
        if not self.service.settings.limits.max_queued_bytes:
            return False
        socket = self.sio.eio.sockets.get(client.eio_sid)
        queued = socket.queue.qsize() * size if socket is not None else 0
        conn = getattr(client.handler, "ws_connection", None)
        if conn is not None and conn.stream is not None:
            queued += len(conn.stream._write_buffer)  # what the peer has not taken yet
        if not admission.over_queue_cap(queued, size):
            return False
        if client.closed_with is None:
            client.closed_with = SLOW_CONSUMER
            admission.slow_consumer(client, queued, about=True)
            if conn is not None:
                conn.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
            if socket is not None:
                self.spawn(socket.close(wait=False, abort=True))
        return True

    def send(self, client: SocketIOClient, text: str) -> None:
        self.spawn(self._send(client.eio_sid, text))

    async def _send(self, eio_sid: str, text: str) -> None:
        try:
            await self.sio.eio.send(eio_sid, text)
        except engineio.exceptions.SocketIsClosedError:
            pass  # the client is gone; its disconnect is on its way

    def spawn(self, coro: Any) -> None:
        """Run coro soon, keeping a reference until it is done (tasks run in FIFO order)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def bad_packet(self, eio_sid: str) -> None:
        """Drop a connection that sent a malformed packet (logged as 1007 in each namespace)."""
        for client in self.clients.values():
            if client.eio_sid == eio_sid:
                client.closed_with = Closed(CloseCode.INVALID_PAYLOAD, "invalid Socket.IO packet")
        socket = self.sio.eio.sockets.get(eio_sid)
        await self.sio.eio.disconnect(eio_sid)
        if socket is not None:
            # Engine.IO only asks the client to close; this client is not to be trusted to,
            # so also end the transport (None stops Engine.IO's writer, which then closes).
            await socket.queue.put(None)

    # ------------------------------------------------------------ events
    async def on_connect(
        self, namespace: str, sid: str, environ: dict[str, Any], auth: Any = None
    ) -> bool:
        if (namespace, sid) in self.clients:
            return True  # a client-sent "connect" event, not a connection
        admission = self.service.admission
        # Engine.IO's Tornado driver sets REMOTE_ADDR to 127.0.0.1 whoever connects; the
        # address is the request's, as Tornado worked it out.
        handler = environ.get("tornado.handler")
        remote_ip = getattr(getattr(handler, "request", None), "remote_ip", None) or ""
        # The token may also come in the Socket.IO auth payload.  There is no late token
        # here: a client without one is refused (connect_error).
        token = auth.get("token") if isinstance(auth, dict) else None
        headers = request_headers(environ)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            identity = admission.identify(
                headers,
                query,
                remote_ip=remote_ip,
                extra=token,
                late_allowed=False,
                endpoint="Socket.IO",
            )
            if identity is not None and not isinstance(identity, Identity):
                identity = await identity  # auth.mode proxy: a backend decides
            refused = admission.refusal(remote_ip, transport="socket.io")
            if refused is not None:
                raise refused
        except Refused as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.reason) from None
        assert identity is not None
        client = SocketIOClient(
            self,
            sid,
            self.sio.manager.eio_sid_from_sid(sid, namespace),
            self.service.new_client_id(),
            remote_ip=remote_ip,
            user_agent=environ.get("HTTP_USER_AGENT", ""),
            connected_at=self.service.clock.timestamp(),
            namespace=namespace,
        )
        client.handler = environ.get("tornado.handler")
        self.clients[namespace, sid] = client
        admission.admit(client, identity, headers)
        return True

    async def on_disconnect(self, namespace: str, sid: str, reason: str = "") -> None:
        if self.sio.manager.is_connected(sid, namespace):
            return  # a client-sent "disconnect" event; the connection is still up
        client = self.clients.pop((namespace, sid), None)
        if client is None:
            return
        closed = client.closed_with or REASON_CODES.get(reason)
        self.service.admission.end(client, closed or Closed(CloseCode.ABNORMAL_CLOSURE, reason))

    async def on_event(self, event: str, namespace: str, sid: str, *args: Any) -> Any:
        """One event in; the reply (or the broadcast) is the ack's value."""
        client = self.clients.get((namespace, sid))
        if client is None:
            return None
        message = args[0] if len(args) == 1 else args
        if type(message) is dict:
            message = {**message, "type": event}
        try:
            result = self.service.dispatcher.handle_message(client, message)
            outgoing: list[Outgoing] = await result if inspect.isawaitable(result) else result
        except Exception:
            self.service.admission.handler_failed(client)
            return None
        self.service.deliver(client, outgoing)
        for out in outgoing:
            if not out.broadcast:
                return out.payload
        return outgoing[0].payload if outgoing else None
