"""A test harness for plugin authors: messages through the real core, no socket.

In the spirit of Django Channels' ``WebsocketCommunicator``: a :class:`PluginHarness` is a
node built from the same settings a ``config.yaml`` holds (so a plugin is found, enabled,
schema-checked and dispatched exactly as in ``miaws serve``), and each :meth:`connect` gives
a :class:`RecordingClient` that keeps every message the server sends it::

    async def test_shout() -> None:
        harness = PluginHarness.for_plugin("plugins/shout.py")
        alice, bob = harness.connect(), harness.connect()
        await alice.send_json({"type": "join-room", "room": "lobby"})
        await bob.send_json({"type": "join-room", "room": "lobby"})
        replies = await alice.send_json({"type": "shout", "room": "lobby", "message": "hi"})
        assert replies == []                                   # no direct reply
        assert bob.received[-1]["message"] == "HI"

Handlers may be sync or async; :meth:`RecordingClient.send_json` awaits either.  Nothing here
listens on a port, so tests need no free port and no event-loop server.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from miaws.config import BUILTIN_PLUGINS, build_settings
from miaws.core.clock import Clock
from miaws.core.errors import CloseCode
from miaws.core.model import Client, Closed, Encoded, Outgoing
from miaws.service import Service

__all__ = ["PluginHarness", "RecordingClient"]


class RecordingClient(Client):
    """A connected client that records what it is sent (``received``, decoded JSON) and how
    the server closed it (``closed``: ``(code, reason)`` or None)."""

    __slots__ = ("harness", "received", "closed", "connected")

    def __init__(self, harness: PluginHarness, client_id: str, **kw: Any) -> None:
        super().__init__(client_id, "test", **kw)
        self.harness = harness
        self.received: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.connected = False

    def deliver(self, message: Encoded) -> None:
        if self.closed is None:
            self.received.append(json.loads(message.data))
            self.messages_out += 1

    def close(self, code: int, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.harness.disconnect(self, code, reason)

    async def send_json(self, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Send one message as this client would, and return what this client received
        because of it (its replies, an ``error``, any broadcast that reached it, in order)."""
        return await self.harness.receive(self, dict(message))

    async def send_text(self, text: str) -> list[dict[str, Any]]:
        """:meth:`send_json` for the raw text of a frame (not JSON, say)."""
        return await self.harness.receive(self, text)


class PluginHarness:
    """A node without sockets; see the module docstring.  ``config`` is the mapping a
    ``config.yaml`` holds (``plugins.enabled``, ``plugins.paths``, ``limits``, ...)."""

    def __init__(self, config: Mapping[str, Any] | None = None, *, clock: Clock | None = None):
        settings = build_settings(dict(config or {}), source="miaws.testing", environ={})
        self.service = Service.from_settings(settings, clock)

    @classmethod
    def for_plugin(
        cls, *files: str | Path, config: Mapping[str, Any] | None = None
    ) -> PluginHarness:
        """The built-in types plus the plugin in each file (enabled by its file stem)."""
        paths = sorted({str(Path(f).resolve().parent) for f in files})
        names: Sequence[str] = [*BUILTIN_PLUGINS, *(Path(f).stem for f in files)]
        data = {**(config or {}), "plugins": {"enabled": list(names), "paths": paths}}
        return cls(data)

    def connect(self, *, user: str | None = None, namespace: str = "/") -> RecordingClient:
        """A new client, registered and welcomed (its ``received`` starts with the welcome)."""
        service = self.service
        client = RecordingClient(
            self, service.new_client_id(), connected_at=service.clock.timestamp()
        )
        client.user = user
        client.namespace = namespace
        service.connect(client)
        client.connected = True
        return client

    async def receive(
        self, client: RecordingClient, message: dict[str, Any] | str
    ) -> list[dict[str, Any]]:
        """The server's side of :meth:`RecordingClient.send_json` and ``send_text``."""
        if client.closed is not None:
            raise RuntimeError(f"client {client.client_id} is closed: {client.closed}")
        before = len(client.received)
        dispatcher = self.service.dispatcher
        try:
            if isinstance(message, str):
                result: Any = dispatcher.handle(client, message)
            else:
                result = dispatcher.handle_message(client, message)
            outgoing: list[Outgoing] = await result if inspect.isawaitable(result) else result
        except Exception:
            client.close(CloseCode.INTERNAL_ERROR, "internal error")  # as a transport does
            raise
        self.service.deliver(client, outgoing)
        return client.received[before:]

    def disconnect(self, client: RecordingClient, code: int = 1000, reason: str = "") -> None:
        """End client's connection as the transports do: out of every room, hooks called."""
        if client.closed is None:
            client.closed = (code, reason)
        if client.connected:
            client.connected = False
            self.service.disconnect(client, Closed(code, reason))
