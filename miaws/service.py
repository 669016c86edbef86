"""The service: settings, plugins, hub and dispatcher of one running server, in one object.

Transports call :meth:`Service.connect`, :meth:`Service.deliver` and
:meth:`Service.disconnect`; operators' endpoints read :meth:`connected_count`,
:meth:`clients_info` and :meth:`rooms_info`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from miaws.config import Settings
from miaws.core.clock import Clock
from miaws.core.dispatch import Dispatcher
from miaws.core.errors import close_meaning
from miaws.core.model import Client, Outgoing
from miaws.core.plugins import Registry, build_registry
from miaws.core.rooms import Hub, make_hub, send_to_namespace
from miaws.core.stats import Stats
from miaws.transport.auth import Authenticator

__all__ = ["Service"]

log = logging.getLogger("miaws")


class Service:
    """One miaws server's state.  Build it with :meth:`from_settings`."""

    def __init__(
        self, settings: Settings, registry: Registry, hub: Hub, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.clock = clock or Clock()
        self.dispatcher = Dispatcher(registry, hub, self.clock, settings.limits)
        self.auth = Authenticator(settings)  # ConfigError on bad auth.* settings
        self.started = time.time()
        self.shutting_down = False
        sio = settings.socketio
        # With Socket.IO namespaces besides "/", a broadcast to all stays in its namespace.
        self.namespaced = sio.enabled and set(sio.namespaces) != {"/"}
        self.stats = Stats()  # plain counters behind /metrics
        self.dispatcher.stats = self.stats
        self.socketio: Any = None  # the SocketIOBridge when Socket.IO is enabled
        self.config_path: Path | None = None  # what a reload re-reads (None: defaults)
        self.port_override: int | None = None  # `serve --port`, kept across reloads

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> Service:
        """Load plugins and schemas (ConfigError on any problem) and call ``startup``."""
        service = cls(
            settings, build_registry(settings.plugin_sources()), make_hub(settings), clock
        )
        service.hooks.startup(service=service)
        return service

    @property
    def registry(self) -> Registry:
        return self.dispatcher.registry

    @property
    def hooks(self) -> Any:
        return self.dispatcher.registry.pm.hook

    # ------------------------------------------------------------ lifecycle
    def welcome(self, client: Client) -> dict[str, Any]:
        return {
            "type": "welcome",
            "clientId": client.client_id,
            "message": "Connected to WebSocket server",
            "timestamp": self.clock.timestamp(),
        }

    def connect(self, client: Client) -> None:
        """Register client, send its welcome, tell the plugins."""
        self.hub.add(client)
        self.stats.connected(client.transport)
        client.send(self.welcome(client))
        self.stats.messages_out["welcome"] += 1
        log.debug(
            "client connected clientId=%s transport=%s remote=%s",
            client.client_id,
            client.transport,
            client.remote_ip,
        )
        hook = self.hooks.client_connected
        if hook.get_hookimpls():  # none listening: skip pluggy's call (~2 µs a connection)
            hook(client=client)

    def disconnect(self, client: Client, code: int, reason: str = "") -> None:
        """Remove client from the hub, log one line, tell the plugins."""
        rooms = sorted(client.rooms)
        self.hub.remove(client)
        self.stats.disconnected(client.transport, code, reason)
        client.rooms.update(rooms)  # the hook and the log still see where it was
        duration = time.monotonic() - client.started
        note = f" {reason}" if reason else ""
        level = logging.WARNING if reason.startswith("dead") or code == 1011 else logging.INFO
        log.log(
            level,
            "client disconnected clientId=%s transport=%s code=%d (%s)%s duration=%.1fs rooms=[%s]",
            client.client_id,
            client.transport,
            code,
            close_meaning(code),
            note,
            duration,
            ",".join(rooms),
            extra={
                "event": "disconnect",
                "clientId": client.client_id,
                "transport": client.transport,
                "code": code,
                "reason": reason,
                "duration": round(duration, 3),
                "rooms": rooms,
            },
        )
        hook = self.hooks.client_disconnected
        if hook.get_hookimpls():
            hook(client=client, code=code, reason=reason)

    def at_capacity(self) -> bool:
        """True when ``limits.max_connections`` is reached: refuse the next client (1013)."""
        limit = self.settings.limits.max_connections
        return limit > 0 and self.hub.count() >= limit

    def new_client_id(self) -> str:
        return self.clock.new_client_id()

    # ------------------------------------------------------------ delivery
    def deliver(self, client: Client, outgoing: list[Outgoing]) -> None:
        """Send what the dispatcher produced: replies to client, broadcasts through the hub."""
        sent = self.stats.messages_out
        for out in outgoing:
            if out.broadcast:
                if out.room is None and self.namespaced:
                    n = send_to_namespace(self.hub, client.namespace, out.payload)
                else:
                    n = self.hub.group_send(out.room, out.payload)
                sent[out.payload.get("type", "")] += n
            else:
                client.send(out.payload)
                sent[out.payload.get("type", "")] += 1

    # ------------------------------------------------------------ registry views
    def connected_count(self) -> int:
        return self.hub.count()

    def clients_info(self) -> list[dict[str, Any]]:
        return [c.info() for c in self.hub.clients()]

    def rooms_info(self) -> dict[str, int]:
        return self.hub.rooms()

    def health(self) -> dict[str, Any]:
        return {
            "status": self.hub.status(),
            "connections": self.connected_count(),
            "rooms": len(self.rooms_info()),
            "uptime": round(time.time() - self.started, 3),
            "timestamp": self.clock.timestamp(),
        }
