"""Errors that reach a client, and the close codes miaws uses.

Hierarchy::

    MiawsError
    ├── ConfigError             a bad setting, plugin or schema: start-up stops (exit 2) or a
    │                           reload is refused; the text is one line naming the key
    ├── AuthError               a client is refused: HTTP 401 before the upgrade, 1008 after
    ├── BrokerUnavailable       the broker (Redis) cannot be reached: no cluster-wide view
    ├── ConnectionLost          (miaws.client) the server closed or the connection dropped
    └── MessageError            a message was refused; the client gets an ``error`` reply
        ├── InvalidJSON         code ``invalid-json``: the frame is not JSON
        ├── InvalidMessage      code ``invalid-message``: not an object, no string type, bad id,
        │                       or the type's schema rejects it (``details`` names the path)
        ├── UnknownType         code ``unknown-type``: no enabled plugin handles the type
        ├── NotInRoom           code ``not-in-room``: the client is not a member of the room
        ├── RateLimited         code ``rate-limited``: too many messages
        ├── Forbidden           code ``forbidden``: a plugin or the auth policy denied it
        ├── BackendError        code ``backend-error``: a backend (an HTTP proxy) answered an
        │                       error status or an unreadable answer, or cannot be reached
        └── BackendTimeout      code ``backend-timeout``: a backend did not answer in time

A plugin raises one of these from its handler; the core turns it into the reply.  The
connection stays open.  Any other exception from a handler closes the connection with 1011.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar

__all__ = [
    "MiawsError",
    "ConfigError",
    "AuthError",
    "BrokerUnavailable",
    "MessageError",
    "InvalidJSON",
    "InvalidMessage",
    "UnknownType",
    "NotInRoom",
    "RateLimited",
    "Forbidden",
    "BackendError",
    "refused_upgrade_text",
    "refusal_is_final",
    "BackendTimeout",
    "CloseCode",
    "close_meaning",
    "ERROR_CODES",
    "QUOTE_LIMIT",
    "clip",
    "bounded",
]

QUOTE_LIMIT = 256
"""Characters of a client's value an error reply may quote; more is cut and ends with ``…``."""


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """text, or its first ``limit`` characters and ``…`` when it is longer."""
    return text if len(text) <= limit else text[:limit] + "…"


def bounded(value: Any, limit: int = 2 * QUOTE_LIMIT, depth: int = 4) -> Any:
    """A JSON value with every string clipped to limit, at most 16 items per list or mapping
    and ``depth`` levels: what an error reply's ``message`` and ``details`` pass through, so
    that no reply grows with what the client sent (a plugin's error text included)."""
    if isinstance(value, str):
        return clip(value, limit)
    if depth <= 0 and isinstance(value, (dict, list, tuple)):
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        out = {clip(str(k), limit): bounded(v, limit, depth - 1) for k, v in items[:16]}
        if len(items) > 16:
            out["…"] = f"{len(items) - 16} more"
        return out
    if isinstance(value, (list, tuple)):
        head = [bounded(v, limit, depth - 1) for v in value[:16]]
        return head + ["…"] if len(value) > 16 else head
    return value


class MiawsError(Exception):
    """Base of every miaws exception."""


class ConfigError(MiawsError):
    """A configuration problem; its text is one line meant for the operator."""


class AuthError(MiawsError):
    """The client is refused: HTTP 401 before the upgrade, close 1008 after it.

    Its text is short and safe to send to the client (no secrets, no token).  ``status`` is
    the HTTP status to refuse with: 401, or 403 when a connect backend (``auth.mode: proxy``)
    said so.
    """

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class BrokerUnavailable(MiawsError):
    """The broker (Redis) cannot be reached, so there is no cluster-wide view."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(reason)
        self.node = node


class MessageError(MiawsError):
    """A refused message. ``code`` is the wire error code; ``details`` is optional JSON."""

    code: ClassVar[str] = "invalid-message"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"details={self.details!r})"
        )


class InvalidJSON(MessageError):
    code = "invalid-json"


class InvalidMessage(MessageError):
    code = "invalid-message"


class UnknownType(MessageError):
    code = "unknown-type"


class NotInRoom(MessageError):
    code = "not-in-room"

    def __init__(self, room: str) -> None:
        super().__init__(f"Not a member of room {room}", None)


class RateLimited(MessageError):
    code = "rate-limited"


class Forbidden(MessageError):
    code = "forbidden"


class BackendError(MessageError):
    """A backend called over HTTP (a proxied type, the join proxy) answered an error status or
    an answer that is not what miaws reads, or could not be reached (or its circuit is open).
    ``details`` says which: ``{"status": N}``, ``{"reason": "unreadable answer"}``, ..."""

    code = "backend-error"


class BackendTimeout(MessageError):
    """A backend called over HTTP did not answer within its timeout."""

    code = "backend-timeout"


ERROR_CODES = tuple(
    c.code
    for c in (
        InvalidJSON,
        InvalidMessage,
        UnknownType,
        NotInRoom,
        RateLimited,
        Forbidden,
        BackendError,
        BackendTimeout,
    )
)


class CloseCode(IntEnum):
    """WebSocket close codes (RFC 6455 section 7.4.1) that miaws sends or reports."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RECEIVED = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


_MEANINGS = {
    1000: "normal closure",
    1001: "going away: server shutdown or page left",
    1002: "protocol error",
    1003: "unsupported data: binary frame",
    1005: "no status received, normal when a tab closes or the network drops",
    1006: "abnormal closure: connection lost without a close frame",
    1007: "invalid frame payload data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
}


def close_meaning(code: int) -> str:
    """A short human-readable meaning of a close code."""
    if code in _MEANINGS:
        return _MEANINGS[code]
    if 3000 <= code <= 4999:
        return "application-defined"
    return "unknown"


def refused_upgrade_text(url: str, status: int, reason: str, body: bytes | None) -> str:
    """``URL refused the upgrade: HTTP 401 Unauthorized (authentication required: no token)``:
    a WebSocket upgrade answered with an HTTP status, as the clients and the CLI say it; the
    body is added when it is one short line of text (miaws's own refusals), not a page."""
    text = f"{url} refused the upgrade: HTTP {status} {reason}".rstrip()
    try:
        detail = (body or b"").decode().strip()
    except UnicodeDecodeError:
        detail = ""
    if detail and "\n" not in detail and len(detail) <= 200 and not detail.startswith("<"):
        text += f" ({detail})"
    return text


def refusal_is_final(status: int) -> bool:
    """Whether retrying an upgrade refused with status is pointless: all but 429 (a
    connection limit) and 5xx (a draining or failing node), which may pass later."""
    return not (status == 429 or status >= 500)
