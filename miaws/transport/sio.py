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
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import engineio.payload
import socketio

from miaws.core.dispatch import MAX_DEPTH, json_problem
from miaws.core.errors import CloseCode
from miaws.core.model import Client, Closed, Encoded, Outgoing, encode_json_bytes
from miaws.service import Service
from miaws.transport import sio_wire
from miaws.transport.admission import SLOW_CONSUMER, Refused, refuse_request
from miaws.transport.auth import Identity
from miaws.transport.deflate import DeflateProtocol, compression_options
from miaws.transport.protocol import MiawsProtocol

__all__ = ["SocketIOBridge", "SocketIOClient", "REASON_CODES"]

log = logging.getLogger("miaws")

PATH = r"/socket.io/"
ENGINEIO_QUERY = frozenset(("EIO", "transport", "t", "sid", "j", "b64"))
"""Engine.IO's own query parameters (``t`` a cache-buster per request): not the client's
query, which auth and a connect backend (and its cache key) see."""
EVENT_NAMES_KEPT = 256  # event names whose JSON is kept (types are few; a backend may name more)

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
    as socket.io 4's), the native endpoint's setting too: Socket.IO's WebSocket then uses
    the native endpoint's permessage-deflate (:mod:`miaws.transport.deflate`)."""
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

    def _engineio_server_class(self) -> Any:
        return sio_wire.EngineServer  # Engine.IO with miaws's per-session queue

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        # What the handshake request's admission counted is now the session's; and
        # python-socketio keeps the environ of each session for its namespace connects:
        # keep only what they read (the whole one holds a class and every header, ~3 KiB).
        self.bridge.eio_connected(eio_sid, environ)
        await super()._handle_eio_connect(eio_sid, self.bridge.session_opened(eio_sid, environ))

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

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        # python-socketio answers CONNECT after the connect handler has run (and queued the
        # welcome); what was sent to the client meanwhile goes out after that answer.
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            self.bridge.connected(eio_sid, namespace or "/")


class SocketIOClient(Client):
    """A client connected to one Socket.IO namespace."""

    __slots__ = ("bridge", "sid", "eio_sid", "closed_with", "socket", "pending")

    def __init__(
        self,
        bridge: SocketIOBridge,
        sid: str,
        eio_sid: str,
        socket: Any,
        client_id: str,
        **kw: Any,
    ) -> None:
        super().__init__(client_id, "socket.io", **kw)
        self.bridge = bridge
        self.sid = sid
        self.eio_sid = eio_sid
        self.socket = socket  # the Engine.IO session (AsyncSocket)
        self.closed_with: Closed | None = None  # how the server closed it
        # Packets sent before python-socketio has answered the namespace's CONNECT, which
        # must go first; None once it has.
        self.pending: list[bytes] | None = []  # their frames

    def deliver(self, message: Encoded) -> None:
        """Emit the event named by the message's ``type``, with the message as its argument."""
        frame = self.bridge.encode(message, self.namespace)
        if self.bridge.over_queue_cap(self, len(frame)):
            return
        pending = self.pending
        if pending is not None:
            pending.append(frame)
        else:
            sio_wire.write(self.socket, frame)
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
        c = s.compression
        self.compression_options = compression_options(self.compression, c.level, c.min_size)
        # python-engineio drops a polling POST of more than 16 packets (logged, answered 200:
        # the client thinks them sent); socket.io's server has no such cap.  The body is
        # bounded by max_http_buffer_size, and a packet takes at least two bytes of it.
        engineio.payload.Payload.max_decode_packets = max(16, s.limits.max_message_bytes // 2)
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
        # The environ keys on_connect reads: identity, and the headers backends are sent.
        proxied = s.auth.proxy_headers if s.auth.mode == "proxy" else []
        wanted = {"authorization", *service.forward_headers, *(h.lower() for h in proxied)}
        self._environ_read = (*_ENVIRON_READ, *(_environ_key(h) for h in sorted(wanted)))
        # (namespace, Engine.IO sid) -> client: the fast path's way from a packet to its client
        self.by_session: dict[tuple[str, str], SocketIOClient] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._last: tuple[Encoded, str, bytes] | None = None
        self._event_names: dict[str, bytes] = {}
        self.sio.on("connect", self.on_connect, namespace="*")
        self.sio.on("disconnect", self.on_disconnect, namespace="*")
        self.sio.on("*", self.on_event, namespace="*")

    def handler(self) -> Any:
        """The Tornado request handler class to mount at :data:`PATH`."""
        base: Any = socketio.get_tornado_handler(self.sio)
        admission = self.service.admission
        compression = self.compression
        offer = self.compression_options
        bridge = self
        sockets = self.sio.eio.sockets

        class Handler(base):  # type: ignore[misc]
            # Kept out of the instance dict (see WebSocketEndpoint's slots).
            __slots__ = ("eio_socket", "waiting", "receive_queue", "held", "limit_refused")
            eio_socket: Any
            waiting: bool
            # What admission.arrive counted for the new connection this request opens, until
            # Engine.IO makes a session of it (SocketIOBridge.eio_connected) or it ends.
            held: str | None
            limit_refused: bool  # refused by a connection limit: no access-log line

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

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.held = None
                self.limit_refused = False
                super().__init__(*args, **kwargs)
                self.receive_queue = sio_wire.LightQueue()  # Engine.IO's: an asyncio.Queue

            def get_websocket_protocol(self) -> Any:
                protocol = super().get_websocket_protocol()
                if protocol is not None:
                    # The native endpoint's reader and corked writes, and its
                    # permessage-deflate when compression is on (as WebSocketEndpoint does).
                    protocol.__class__ = DeflateProtocol if compression else MiawsProtocol
                return protocol

            def open(self, *args: Any, **kwargs: Any) -> Any:
                # As on /ws: without it Nagle holds the second of two small writes (reply
                # event, then ack) until the client's delayed ACK, some 40 ms later.
                self.set_nodelay(True)
                self.eio_socket = None
                self.waiting = False
                sid = self.get_query_argument("sid", None)
                if sid is not None and sid in sockets:  # an upgrade from long-polling
                    sio_wire.bind(sockets[sid], self)
                return super().open(*args, **kwargs)

            def on_message(self, message: str | bytes) -> Any:
                # Synchronous (Engine.IO's is a coroutine, a task per frame): an event is
                # handled here when it can be, anything else goes to Engine.IO's reader.
                if type(message) is str and message.startswith("42"):
                    handled = bridge.fast_event(self, message)
                    if handled is not False:
                        return None if handled is True else handled
                self.receive_queue.put_nowait(message)
                return None

            async def get_next_message(self) -> Any:
                self.waiting = True  # Engine.IO's reader has handled all it was given
                try:
                    return await self.receive_queue.get()
                finally:
                    self.waiting = False

            def get_compression_options(self) -> dict[str, Any] | None:
                # Engine.IO's handler offers permessage-deflate to every WebSocket ({}); it
                # follows miaws's setting instead (None: not negotiated).
                return offer

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
            ws = getattr(socket.queue, "ws", None)
            if ws is not None:
                ws.close()  # and its WebSocket, which ends Engine.IO's reader and writer
        await self.sio.shutdown()

    # ------------------------------------------------------------ sending
    def encode(self, message: Encoded, namespace: str) -> bytes:
        """The WebSocket frame of the Socket.IO EVENT packet for message, encoded once per
        broadcast: the hub hands every recipient the same :class:`Encoded`, so the last
        frame is reused.

        Written from the message's JSON text (encoded once, as for /ws) rather than through
        python-socketio's ``Packet``, which would JSON-encode the payload again and walk it
        for binary parts first (a message is JSON: it has none).  Same text as
        ``Packet(EVENT, namespace, [type, payload]).encode()`` but for non-ASCII characters,
        which stay unescaped (as on /ws and in Node's socket.io)."""
        last = self._last
        if last is not None and last[0] is message and last[1] == namespace:
            return last[2]
        head = b"42[" if namespace == "/" else b"42" + namespace.encode() + b",["
        frame = sio_wire.text_frame_of(
            head + self._event_name(message.payload["type"]) + b"," + message.data + b"]"
        )
        self._last = (message, namespace, frame)
        return frame

    def _event_name(self, name: str) -> bytes:
        """The event name's JSON, as python-socketio writes it (``json.dumps``)."""
        known = self._event_names.get(name)
        if known is None:
            known = json.dumps(name).encode()
            if len(self._event_names) < EVENT_NAMES_KEPT:
                self._event_names[name] = known
        return known

    def _json(self, value: Any) -> bytes:
        """value's JSON, reusing the last packet's when value is its message."""
        last = self._last
        if last is not None and last[0].payload is value:
            return last[0].data
        return encode_json_bytes(value)

    def over_queue_cap(self, client: SocketIOClient, size: int) -> bool:
        """limits.max_queued_bytes for a Socket.IO client: True (and the client is dropped with
        1013) when what waits for it would pass the cap: Tornado's write buffer of its
        WebSocket plus Engine.IO's packet queue (counted as packets of this size; polling
        clients queue there).  An empty queue takes any packet."""
        admission = self.service.admission
        if not self.service.settings.limits.max_queued_bytes:
            return False
        socket = client.socket
        queue = socket.queue
        queued = queue.queued_bytes  # packets Engine.IO has not sent yet (polling, upgrading)
        conn = getattr(queue.ws, "ws_connection", None) if socket.upgraded else None
        if conn is not None and conn.stream is not None:
            queued += len(conn.stream._write_buffer)  # what the peer has not taken yet
        if not admission.over_queue_cap(queued, size):
            return False
        if client.closed_with is None:
            client.closed_with = SLOW_CONSUMER
            admission.slow_consumer(client, queued, about=True)
            if conn is not None:
                conn.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
            self.spawn(socket.close(wait=False, abort=True))
        return True

    def session_opened(self, eio_sid: str, environ: dict[str, Any]) -> dict[str, Any]:
        """An Engine.IO session has opened: bind it to its WebSocket when it came as one (then
        shed what that handler no longer needs); the part of environ its namespace connects
        read."""
        kept = {key: environ[key] for key in self._environ_read if key in environ}
        handler = environ.get("tornado.handler")
        # Engine.IO's Tornado driver sets REMOTE_ADDR to 127.0.0.1 whoever connects; the
        # address is the request's, as Tornado worked it out.
        kept["REMOTE_ADDR"] = getattr(getattr(handler, "request", None), "remote_ip", None) or ""
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is not None and getattr(handler, "ws_connection", None) is not None:
            sio_wire.bind(socket, handler)
            sio_wire.shed(handler)
            sio_wire.shed_environ(environ)
        return kept

    def connected(self, eio_sid: str, namespace: str) -> None:
        """python-socketio has answered the CONNECT of namespace: send what waited for it."""
        client = self.by_session.get((namespace, eio_sid))
        if client is None or client.pending is None:
            return
        pending, client.pending = client.pending, None
        for frame in pending:
            sio_wire.write(client.socket, frame)

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
        remote_ip = environ.get("REMOTE_ADDR", "")  # the request's (session_opened)
        # The token may also come in the Socket.IO auth payload.  There is no late token
        # here: a client without one is refused (connect_error).
        token = auth.get("token") if isinstance(auth, dict) else None
        headers = request_headers(environ)
        query = {
            key: value
            for key, value in parse_qs(environ.get("QUERY_STRING", "")).items()
            if key not in ENGINEIO_QUERY
        }
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
            refused = admission.refusal(
                remote_ip,
                transport="socket.io",
                connection=self.sio.manager.eio_sid_from_sid(sid, namespace),
            )
            if refused is not None:
                raise refused
        except Refused as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.reason) from None
        assert identity is not None
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, namespace)
        socket = self.sio.eio.sockets[eio_sid]
        client = SocketIOClient(
            self,
            sid,
            eio_sid,
            socket,
            self.service.new_client_id(),
            remote_ip=remote_ip,
            user_agent=environ.get("HTTP_USER_AGENT", ""),
            connected_at=self.service.clock.timestamp(),
            namespace=namespace,
            connection=eio_sid,  # limits.max_connections counts it once, whatever namespaces
        )
        self.clients[namespace, sid] = client
        self.by_session[namespace, eio_sid] = client
        admission.admit(client, identity, headers)
        return True

    async def on_disconnect(self, namespace: str, sid: str, reason: str = "") -> None:
        if self.sio.manager.is_connected(sid, namespace):
            return  # a client-sent "disconnect" event; the connection is still up
        client = self.clients.pop((namespace, sid), None)
        if client is None:
            return
        self.by_session.pop((namespace, client.eio_sid), None)
        closed = client.closed_with or REASON_CODES.get(reason)
        self.service.admission.end(client, closed or Closed(CloseCode.ABNORMAL_CLOSURE, reason))

    async def on_event(self, event: str, namespace: str, sid: str, *args: Any) -> Any:
        """One event in (from python-socketio); the reply (or the broadcast) is the ack's
        value."""
        client = self.clients.get((namespace, sid))
        if client is None:
            return None
        result = self._handle(client, event, args)
        if type(result) is _Later:
            return await result.pending
        return result

    def fast_event(self, handler: Any, text: str) -> bool | Awaitable[None]:
        """Handle an event that came over handler's WebSocket here, as python-socketio
        would (:mod:`miaws.transport.sio_wire`), and send its ack; False when it is not one
        the fast path takes.  An awaitable when the message handler is async: the reader
        waits for it before the next frame."""
        socket = handler.eio_socket
        if (
            socket is None
            or not handler.waiting  # Engine.IO's reader still has a packet of this session
            or not handler.receive_queue.empty()
            or not socket.upgraded
            or socket.upgrading
            or socket.closing
            or socket.sid in self.sio._binary_packet  # attachments awaited
        ):
            return False
        parsed = sio_wire.parse_event(text)
        if parsed is None:
            return False
        namespace, ack, data = parsed
        client = self.by_session.get((namespace, socket.sid))
        event = data[0]
        if client is None or client.closed_with is not None or event in _RESERVED:
            return False
        # orjson read it: no NaN, infinity or binary data; only a text with more than
        # MAX_DEPTH brackets can nest too deep
        shallow = len(text) <= 2 * MAX_DEPTH or text.count("[") + text.count("{") <= MAX_DEPTH
        result = self._handle(client, event, data[1:], checked=shallow)
        if type(result) is _Later:
            return self._ack_later(client, ack, result.pending)
        if ack is not None:
            self._ack(client, ack, result)
        return True

    async def _ack_later(self, client: SocketIOClient, ack: int | None, pending: Any) -> None:
        value = await pending
        if ack is not None:
            self._ack(client, ack, value)

    def _ack(self, client: SocketIOClient, ack: int, value: Any) -> None:
        """Send the ACK packet of ack with value (none for None), as python-socketio does."""
        namespace = client.namespace
        head = b"43%d" % ack if namespace == "/" else b"43%s,%d" % (namespace.encode(), ack)
        args = b"[]" if value is None else b"[" + self._json(value) + b"]"
        sio_wire.write(client.socket, sio_wire.text_frame_of(head + args))

    def _handle(
        self, client: SocketIOClient, event: str, args: Sequence[Any], checked: bool = False
    ) -> Any:
        """Dispatch one event; the ack's value, or a :class:`_Later` of it for an async
        message handler.  Unless checked, its arguments are first held to what a /ws frame
        could carry (python-socketio's reader takes NaN, any depth and binary attachments)."""
        message: Any = args[0] if len(args) == 1 else tuple(args)
        dispatcher = self.service.dispatcher
        problem = None if checked else json_problem(message)
        if problem is not None:
            return self._delivered(client, dispatcher.refuse(client, problem))
        if type(message) is dict:
            message = {**message, "type": event}
        try:
            result = dispatcher.handle_message(client, message)
            if type(result) is not list and inspect.isawaitable(result):
                return _Later(self._finish(client, result))
            return self._delivered(client, result)
        except Exception:  # a handler's, or what it sent (a payload that is no JSON)
            self.service.admission.handler_failed(client)
            return None

    async def _finish(self, client: SocketIOClient, pending: Awaitable[list[Outgoing]]) -> Any:
        try:
            return self._delivered(client, await pending)
        except Exception:
            self.service.admission.handler_failed(client)
            return None

    def _delivered(self, client: SocketIOClient, outgoing: list[Outgoing]) -> Any:
        self.service.deliver(client, outgoing)
        for out in outgoing:
            if not out.broadcast:
                return out.payload
        return outgoing[0].payload if outgoing else None


_ENVIRON_READ = ("QUERY_STRING", "HTTP_USER_AGENT")
"""The environ keys :meth:`SocketIOBridge.on_connect` always reads (and the headers of
``SocketIOBridge._environ_read``)."""


def _environ_key(header: str) -> str:
    """A header's key in the WSGI-style environ python-engineio builds."""
    return "HTTP_" + header.upper().replace("-", "_")


_RESERVED = frozenset(("connect", "disconnect"))
"""Event names python-socketio hands to the connect / disconnect handlers: left to it."""


class _Later(NamedTuple):
    """The ack value of an async message handler, still to come."""

    pending: Awaitable[Any]
