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
import re
from collections.abc import Awaitable
from typing import Any

import orjson

from miaws.clock import Clock
from miaws.errors import (
    Forbidden,
    InvalidJSON,
    InvalidMessage,
    MessageError,
    NotInRoom,
    UnknownType,
)
from miaws.hub import Hub, valid_room
from miaws.plugins import Registry
from miaws.types import Client, Outgoing

__all__ = ["Dispatcher", "Context", "valid_id"]


_long_number = re.compile(r"[0-9]{19}").search  # may be an integer beyond 64 bits


def _loads(text: str) -> Any:
    """orjson for speed; the json module for what orjson refuses (NaN, lone surrogates) or
    would turn into a float (integers beyond 64 bits), so the result is the json module's."""
    if _long_number(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def valid_id(value: object) -> bool:
    """A message id is a string of at most 64 characters or an integer (not a bool)."""
    if isinstance(value, str):
        return len(value) <= 64
    return isinstance(value, int) and not isinstance(value, bool)


class Context:
    """What a handler gets besides the message: the sender, the hub, and ways to answer."""

    __slots__ = ("client", "hub", "clock", "message_id", "out")

    def __init__(self, client: Client, hub: Hub, clock: Clock, message_id: Any) -> None:
        self.client = client
        self.hub = hub
        self.clock = clock
        self.message_id = message_id
        self.out: list[Outgoing] = []

    def timestamp(self) -> str:
        return self.clock.timestamp()

    def reply(self, payload: dict[str, Any]) -> None:
        """Send payload to the sender, adding ``timestamp`` and the request's ``id``."""
        payload.setdefault("timestamp", self.clock.timestamp())
        if self.message_id is not None:
            payload["id"] = self.message_id
        self.out.append(Outgoing(payload))

    def broadcast(self, payload: dict[str, Any], room: str | None = None) -> None:
        """Send payload to every client (room None) or to the members of room.

        Adds ``timestamp``.  Raises :class:`NotInRoom` if the sender is not a member.
        """
        if room is not None:
            self._check_room(room)
            self.require_member(room)
        payload.setdefault("timestamp", self.clock.timestamp())
        self.out.append(Outgoing(payload, True, room))

    def require_member(self, room: str) -> None:
        if not self.hub.is_member(room, self.client):
            raise NotInRoom(room)

    def join(self, room: str) -> bool:
        """Add the sender to room; False if it was a member already."""
        self._check_room(room)
        return self.hub.group_add(room, self.client)

    def leave(self, room: str) -> None:
        """Take the sender out of room; raises :class:`NotInRoom` if it was not a member."""
        self._check_room(room)
        if not self.hub.group_discard(room, self.client):
            raise NotInRoom(room)

    @staticmethod
    def _check_room(room: str) -> None:
        if not valid_room(room):
            raise InvalidMessage(
                f"Invalid room name: {room!r}",
                {"path": "/room", "reason": "must be 1-64 characters of [A-Za-z0-9_.:-]"},
            )


class Dispatcher:
    """Turns client messages into outgoing messages; see the module docstring."""

    def __init__(self, registry: Registry, hub: Hub, clock: Clock | None = None) -> None:
        self.hub = hub
        self.clock = clock or Clock()
        self.registry = registry
        self.stats: Any = None  # optional metrics sink with .message(type) / .error(code)

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
        payload: dict[str, Any] = {
            "type": "error",
            "code": exc.code,
            "message": exc.message,
            "timestamp": self.clock.timestamp(),
        }
        if message_id is not None:
            payload["id"] = message_id
        if exc.details is not None:
            payload["details"] = exc.details
        return Outgoing(payload)

    def handle(self, client: Client, text: str) -> list[Outgoing] | Awaitable[list[Outgoing]]:
        """Handle one text frame.  Returns the outgoing messages, or an awaitable of them
        when the handler is async."""
        try:
            message = _loads(text)
        except ValueError:
            client.messages_in += 1
            return [self.error(InvalidJSON("Message is not valid JSON"))]
        return self.handle_message(client, message)

    def handle_message(
        self, client: Client, message: Any
    ) -> list[Outgoing] | Awaitable[list[Outgoing]]:
        """Handle one decoded message (the Socket.IO adapter enters here)."""
        client.messages_in += 1
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
                raise UnknownType(f"Unknown message type: {kind}")
            details = bound.schema.errors(message)
            if details is not None:
                raise InvalidMessage(
                    f"Invalid {kind} message: {details['path'] or '/'} {details['reason']}", details
                )
            if self._authorize is not None:
                verdict = self._authorize(client=client, message=message)
                if verdict is False:
                    raise Forbidden(f"Not allowed: {kind}")
            ctx = Context(client, self.hub, self.clock, message_id)
            result = bound.descriptor.handler(ctx, message)
            if result is None:
                return ctx.out
            if type(result) is not dict and inspect.isawaitable(result):
                return self._finish(ctx, result)
            ctx.reply(result)
            return ctx.out
        except MessageError as exc:
            return [self.error(exc, message_id)]

    async def _finish(
        self, ctx: Context, pending: Awaitable[dict[str, Any] | None]
    ) -> list[Outgoing]:
        try:
            result = await pending
        except MessageError as exc:
            return [self.error(exc, ctx.message_id)]
        if result is not None:
            ctx.reply(result)
        return ctx.out
