"""The sans-I/O dispatch core: one text frame in, a list of :class:`Outgoing` out.

``Dispatcher.handle(client, text)`` parses the JSON, checks the envelope (object, string
``type``, valid ``id``), finds the type's plugin, checks the type's schema, asks the
``authorize_message`` hook, calls the handler and turns a :class:`MessageError` into an
``error`` reply.  It imports no transport: the Tornado handler and the Socket.IO adapter
translate frames and events to and from it.  Any other exception from a handler propagates;
the transport closes that connection with 1011.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Awaitable
from time import perf_counter
from typing import Any

import orjson

from miaws.core.clock import Clock
from miaws.core.context import Context, JoinGate, Membership
from miaws.core.errors import (
    CloseCode,
    Forbidden,
    InvalidJSON,
    InvalidMessage,
    MessageError,
    UnknownType,
    bounded,
    clip,
)
from miaws.core.model import Client, Outgoing
from miaws.core.plugins import Registry
from miaws.core.presence import PresenceReader
from miaws.core.ratelimit import FLOODING, Limits, MessageLimits, RateLimiter
from miaws.core.stats import Stats

__all__ = ["Dispatcher", "Context", "valid_id", "json_problem", "loads"]


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Strict JSON: NaN, Infinity and numbers beyond a double are refused (invalid-json) instead
# of being echoed as tokens no JSON parser reads.  Both hooks run only on such tokens.
_strict_loads = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant).decode

MAX_DEPTH = 128
"""Deepest nesting accepted (invalid-json beyond): every reply must still encode."""
_DEEP_TEXT = 2 * MAX_DEPTH  # a shorter text cannot nest that deep


def _too_deep(text: str, value: Any) -> bool:
    """True if value nests deeper than MAX_DEPTH; the text count keeps it cheap."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    level = [(value, 1)]
    while level:
        item, depth = level.pop()
        if depth > MAX_DEPTH:
            return True
        if type(item) is dict:
            level.extend((v, depth + 1) for v in item.values())
        elif type(item) is list:
            level.extend((v, depth + 1) for v in item)
    return False


def json_problem(value: Any) -> MessageError | None:
    """Why value, decoded by another reader than miaws's (python-socketio's ``json.loads``,
    its binary attachments), is not what a /ws frame could carry: binary data
    (invalid-message), NaN or an infinity, or nesting deeper than :data:`MAX_DEPTH`
    (invalid-json); None when it is plain JSON."""
    level: list[tuple[Any, int, str]] = [(value, 1, "")]
    while level:
        item, depth, path = level.pop()
        kind = type(item)
        if kind is dict or kind is list or kind is tuple:
            if depth > MAX_DEPTH:
                return InvalidJSON("Message is not valid JSON")
            pairs = item.items() if kind is dict else enumerate(item)
            level.extend((v, depth + 1, f"{path}/{k}") for k, v in pairs)
        elif kind is float:
            if not math.isfinite(item):
                return InvalidJSON("Message is not valid JSON")
        elif kind is bytes or kind is bytearray or kind is memoryview:
            return InvalidMessage(
                "Binary data is not supported: send JSON",
                {"path": clip(path) or "/", "reason": "binary data is not JSON"},
            )
    return None


_long_number = re.compile(r"[0-9]{19}").search  # may be an integer beyond 64 bits


def loads(text: str) -> Any:
    """orjson for speed; the strict json decoder for what orjson refuses (NaN, infinities,
    lone surrogates: then invalid-json or the json module's reading) or would turn into a
    float (integers beyond 64 bits), so the result is always the json module's."""
    if _long_number(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _strict_loads(text)


def valid_id(value: object) -> bool:
    """A message id is a string of at most 64 characters or an integer (not a bool)."""
    if isinstance(value, str):
        return len(value) <= 64
    return isinstance(value, int) and not isinstance(value, bool)


class Dispatcher:
    """Turns client messages into outgoing messages; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        rooms: Membership,
        clock: Clock | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.rooms = rooms  # the broker: joins and leaves, and the local registry
        self.clock = clock or Clock()
        self.stats: Stats | None = None  # counters behind /metrics (the Service sets them)
        self.presence: PresenceReader | None = None  # who is in a room (the Service sets it)
        self.registry = registry
        self.limits = limits or MessageLimits()
        self.join_gate: JoinGate | None = None  # rooms.join_proxy_url (the Service sets it)

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        """``limits.*`` for rates and rooms; swapping them takes effect from the next message."""
        self.limiter = RateLimiter.from_settings(limits)  # first: a failure changes nothing
        self._limits = limits
        self._room_limits = (limits.max_rooms_per_client, limits.max_room_members)

    @property
    def registry(self) -> Registry:
        return self._registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        """Swapping the registry (config reload) takes effect from the next message."""
        self._registry = registry
        self._types = registry.types
        self._authorize = registry.pm.hook.authorize_message if registry.has_authorizers else None

    def error(self, exc: MessageError, message_id: Any = None) -> Outgoing:
        if self.stats is not None:
            self.stats.errors[exc.code] += 1
        payload: dict[str, Any] = {
            "type": "error",
            "code": exc.code,
            "message": bounded(exc.message),  # a plugin's text may quote the client too
            "timestamp": self.clock.timestamp(),
        }
        if message_id is not None:
            payload["id"] = message_id
        if exc.details is not None:
            payload["details"] = bounded(exc.details)
        return Outgoing(payload)

    def handle(self, client: Client, text: str) -> list[Outgoing] | Awaitable[list[Outgoing]]:
        """Handle one text frame.  Returns the outgoing messages, or an awaitable of them
        when the handler is async."""
        try:
            message = loads(text)
            if len(text) > _DEEP_TEXT and _too_deep(text, message):
                raise ValueError("nested too deeply")
        except (ValueError, RecursionError):
            return self.refuse(client, InvalidJSON("Message is not valid JSON"))
        return self.handle_message(client, message)

    def refuse(self, client: Client, exc: MessageError) -> list[Outgoing]:
        """A message that never reached a handler (not JSON, or not JSON a frame could
        carry): counted and rate limited as any, answered with exc's error."""
        client.messages_in += 1
        if self.limiter is not None and not self.limiter.allow(client):
            return self._refuse(client, None)
        return [self.error(exc)]

    def handle_message(
        self, client: Client, message: Any
    ) -> list[Outgoing] | Awaitable[list[Outgoing]]:
        """Handle one decoded message (the Socket.IO adapter enters here)."""
        client.messages_in += 1
        if self.limiter is not None and not self.limiter.allow(client):
            mid = message.get("id") if type(message) is dict else None
            return self._refuse(client, mid if valid_id(mid) else None)
        message_id = None
        try:
            if type(message) is not dict:
                raise InvalidMessage(
                    "Message must be a JSON object", {"path": "", "reason": "must be an object"}
                )
            kind = message.get("type")
            if type(kind) is not str:
                raise InvalidMessage(
                    "Message must have a string 'type'",
                    {"path": "/type", "reason": "must be a string"},
                )
            if "id" in message:
                if not valid_id(message["id"]):
                    raise InvalidMessage(
                        "Invalid message id",
                        {
                            "path": "/id",
                            "reason": "must be a string of at most 64 characters or an integer",
                        },
                    )
                message_id = message["id"]
            bound = self._types.get(kind)
            if bound is None:
                raise UnknownType(f"Unknown message type: {clip(kind)}")
            details = bound.schema.errors(message)
            if details is not None:
                raise InvalidMessage(
                    f"Invalid {kind} message: {details['path'] or '/'} {details['reason']}", details
                )
            if self._authorize is not None:
                verdict = self._authorize(client=client, message=message)
                if verdict is False:
                    raise Forbidden(f"Not allowed: {kind}")
            ctx = Context(
                client,
                self.rooms,
                self.clock,
                message_id,
                self._room_limits,
                self.join_gate,
                self.presence,
            )
            stats = self.stats
            started = perf_counter() if stats is not None else 0.0
            result = bound.descriptor.handler(ctx, message)
            if result is not None and type(result) is not dict and inspect.isawaitable(result):
                return self._finish(ctx, result, kind, started)
            if stats is not None:
                stats.handled(kind, perf_counter() - started)
            if result is not None:
                ctx.reply(result)
            return ctx._out
        except MessageError as exc:
            return [self.error(exc, message_id)]

    def _refuse(self, client: Client, message_id: Any) -> list[Outgoing]:
        """A rate-limited message: error ``rate-limited``, or close 1008 for a flooder."""
        assert self.limiter is not None
        if self.limiter.flooding(client):
            client.close(CloseCode.POLICY_VIOLATION, FLOODING)
            return []
        return [self.error(self.limiter.refusal(client), message_id)]

    async def _finish(
        self,
        ctx: Context,
        pending: Awaitable[dict[str, Any] | None],
        kind: str,
        started: float,
    ) -> list[Outgoing]:
        try:
            result = await pending
        except MessageError as exc:
            return [self.error(exc, ctx.message_id)]
        finally:
            if self.stats is not None:
                self.stats.handled(kind, perf_counter() - started)
        if result is not None:
            ctx.reply(result)
        return ctx._out
