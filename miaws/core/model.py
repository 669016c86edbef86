"""Small shared types: the message-type descriptor, a connected client, an outgoing message."""

from __future__ import annotations

import json
import re
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from miaws.core.rooms import split_key

if TYPE_CHECKING:
    from miaws.core.context import Context
    from miaws.core.ratelimit import TokenBucket

__all__ = [
    "MessageType",
    "Handler",
    "Client",
    "Outgoing",
    "Encoded",
    "Closed",
    "encode_json",
    "encode_json_bytes",
    "decode_json_fast",
]

Reply = dict[str, Any] | None
Handler = Callable[["Context", dict[str, Any]], "Reply | Awaitable[Reply]"]
"""``handler(ctx, message)``: may reply through ``ctx`` or return the reply dict; may be async."""


@dataclass(frozen=True)
class MessageType:
    """What a plugin returns from ``register_message_types``: one client message type.

    :param type: the ``type`` string clients send (case-sensitive).
    :param handler: ``handler(ctx, message)``; see :class:`miaws.core.context.Context`.
    :param schema: ``None`` to use ``<type>.json`` from the schema directories, a file name
        to look up there, or an inline JSON Schema dict.
    :param description: one line for documentation and ``/api/plugins``.
    :param replies: what the server sends because of such a message: reply ``type`` -> the
        JSON Schema of that reply (``timestamp`` and ``id`` are added by the core and need not
        be listed).  Documentation only (the AsyncAPI document); replies are not checked.
    """

    type: str
    handler: Handler
    schema: str | dict[str, Any] | None = None
    description: str = ""
    replies: Mapping[str, dict[str, Any]] = field(default_factory=dict)


def encode_json_bytes(payload: dict[str, Any]) -> bytes:
    """The one JSON encoding miaws sends, as UTF-8: compact, non-ASCII kept as is.

    orjson writes exactly that; what it refuses (integers beyond 64 bits, keys that are not
    strings) goes through the json module instead."""
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson.JSONEncodeError included
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape) cannot be UTF-8: send it escaped, as
        # JavaScript's JSON.stringify does.
        return json.dumps(payload, separators=(",", ":")).encode()


_long_number = re.compile(r"[0-9]{19}").search  # orjson reads such an integer as a float


def decode_json_fast(text: str) -> Any:
    """text read by orjson where it gives the json module's values; ValueError otherwise:
    text holding a run of 19 digits or more (an integer orjson would make a float), or text
    orjson refuses (invalid JSON, but also NaN or a lone surrogate, which the json module
    reads).  For a caller that has a slower, exact way to fall back on."""
    if _long_number(text) is not None:
        raise ValueError("may hold an integer beyond 64 bits")
    return orjson.loads(text)


def encode_json(payload: dict[str, Any]) -> str:
    """:func:`encode_json_bytes` as a str."""
    return encode_json_bytes(payload).decode()


class Encoded:
    """A message serialised once, for any number of recipients and transports.

    ``wire`` is a transport's own encoding of it, kept by that transport on first use so the
    next recipient gets the same bytes (the native endpoint's WebSocket frame:
    :func:`miaws.transport.frames.text_frame`), ``deflated`` its compressed frame for
    permessage-deflate recipients (:mod:`miaws.transport.deflate`); the core never reads
    them."""

    __slots__ = ("payload", "data", "_text", "wire", "deflated")
    deflated: bytes | None

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.data = encode_json_bytes(payload)  # UTF-8 JSON
        self._text: str | None = None
        self.wire: bytes | None = None
        # ``deflated`` stays unset until a compressed connection wants it: no work per
        # message when compression is off (read it with getattr).

    @property
    def text(self) -> str:
        """The JSON text (decoded once, on first use)."""
        if self._text is None:
            self._text = self.data.decode()
        return self._text


class Outgoing(NamedTuple):
    """What the dispatch core asks a transport to send: a reply, or a broadcast."""

    payload: dict[str, Any]
    broadcast: bool = False
    room: str | None = None  # with broadcast: the room key; None: every client of the namespace


class Closed(NamedTuple):
    """How a connection ended, as the transport saw it: the one value that becomes the
    disconnect log line, the ``miaws_disconnects_total`` and ``miaws_heartbeat_drops_total``
    metrics and the ``client_disconnected(client, code, reason)`` hook.

    ``dead`` is True when the peer stopped answering the heartbeat (no close handshake:
    ``code`` is then 1006); it is data, so nothing parses ``reason`` to find it.
    """

    code: int  # the WebSocket close code sent, received (1005 if none) or 1006 (lost)
    reason: str = ""  # a short description for the log and the hook
    dead: bool = False  # dropped for a missed heartbeat


_NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})


class Client:
    """A connected client, whatever its transport.  Transports subclass it and implement
    :meth:`send` and :meth:`deliver`; handlers only ever see this interface."""

    __slots__ = (
        "client_id",
        "transport",
        "remote_ip",
        "user_agent",
        "connected_at",
        "started",
        "rooms",
        "messages_in",
        "messages_out",
        "user",
        "namespace",
        "allowed_rooms",
        "bucket",
        "connect_info",
        "headers",
        "connection",
        "__weakref__",
    )

    def __init__(
        self,
        client_id: str,
        transport: str,
        *,
        remote_ip: str = "",
        user_agent: str = "",
        connected_at: str = "",
        namespace: str = "/",
        connection: str = "",
    ) -> None:
        self.client_id = client_id
        self.transport = transport
        # The transport connection this client is on, what limits.max_connections counts:
        # its own id for a native client; a Socket.IO client's Engine.IO session id, which
        # the clients of its other namespaces on that connection share.
        self.connection = connection or client_id
        self.remote_ip = remote_ip
        self.user_agent = user_agent
        self.connected_at = connected_at
        self.started = time.monotonic()
        self.rooms: set[str] = set()
        self.messages_in = 0
        self.messages_out = 0
        self.user: str | None = None
        self.namespace = namespace
        self.allowed_rooms: frozenset[str] | None = None  # None: any room
        self.bucket: TokenBucket | None = None  # rate limit state, made on first message
        self.connect_info: Any = (
            None  # what a connect backend said about the client (auth.mode proxy)
        )
        # The upgrade request's headers that backends are sent (proxy.types forward_headers),
        # by lower-case name; the rest are not kept.
        self.headers: Mapping[str, str] = _NO_HEADERS

    def send(self, payload: dict[str, Any]) -> None:
        """Send one message to this client alone."""
        self.deliver(Encoded(payload))

    def deliver(self, message: Encoded) -> None:
        """Send an already encoded message (shared by many recipients)."""
        raise NotImplementedError

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection with a WebSocket close code."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Who the client is, as backends are told (proxied types, the join proxy):
        ``clientId``, ``user``, ``info``, ``transport``, ``rooms`` (by name, in its own
        namespace, sorted)."""
        namespace = self.namespace
        rooms = sorted(
            room for ns, room in (split_key(key) for key in self.rooms) if ns == namespace
        )
        return {
            "clientId": self.client_id,
            "user": self.user,
            "info": self.connect_info,
            "transport": self.transport,
            "rooms": rooms,
        }

    def info(self) -> dict[str, Any]:
        """The registry view of this client, as ``/api/clients`` shows it."""
        return {
            "clientId": self.client_id,
            "transport": self.transport,
            "remoteAddress": self.remote_ip,
            "userAgent": self.user_agent,
            "connectedAt": self.connected_at,
            "rooms": sorted(self.rooms),
            "messagesIn": self.messages_in,
            "messagesOut": self.messages_out,
            "user": self.user,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.client_id} {self.transport}>"
