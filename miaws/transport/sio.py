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
from miaws.transport.admission import SLOW_CONSUMER, Refused

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


class _Server(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, closing a connection that sends a packet it cannot parse
    (as socket.io's own server does) instead of logging a traceback and going on."""

    bridge: SocketIOBridge

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
            def prepare(self) -> Any:
                # security.allowed_origins, as on /ws: a foreign origin gets 403 before
                # Engine.IO sees the request (same-origin pages are always allowed).
                origin = self.request.headers.get("Origin")
                if origin is not None and urlsplit(origin).netloc != self.request.host:
                    try:
                        admission.origin(
                            origin, remote_ip=self.request.remote_ip or "", endpoint="Socket.IO"
                        )
                    except Refused as exc:
                        self.set_status(exc.status)
                        self.finish()
                        return None
                return super().prepare()

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
        remote_ip = environ.get("REMOTE_ADDR", "")
        # The token may also come in the Socket.IO auth payload.  There is no late token
        # here: a client without one is refused (connect_error).
        token = auth.get("token") if isinstance(auth, dict) else None
        headers = {"Authorization": environ.get("HTTP_AUTHORIZATION", "")}
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
            refused = admission.refusal(remote_ip)
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
        admission.admit(client, identity)
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
