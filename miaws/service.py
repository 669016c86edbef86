"""The service: settings, plugins, broker and dispatcher of one running server, in one object.

Transports call :meth:`Service.connect`, :meth:`Service.deliver` and
:meth:`Service.disconnect`; operators' endpoints read :meth:`connected_count`,
:meth:`clients_info` and :meth:`rooms_info`.

Every message meant for more than its sender goes one way: :meth:`Service.publish`, which
hands it to the broker (:mod:`miaws.broker`) and counts its recipients; a client's broadcast
(through :meth:`deliver`) and the publish API alike.  The server's own room events
(``member-joined``, ``member-left``) take :meth:`publish_event`: the same way, but never
stamped nor kept in a room's history.  ``self.local`` is this node's registry
of clients and rooms (:class:`~miaws.core.registry.LocalRegistry`), which the broker delivers
to; the Service does not know which broker runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from miaws.broker import Broker, make_broker
from miaws.broker.presence import PresenceTracker
from miaws.config import Settings, log_deprecations
from miaws.core.clock import Clock
from miaws.core.dispatch import Dispatcher
from miaws.core.errors import CloseCode, close_meaning
from miaws.core.model import Client, Closed, Outgoing
from miaws.core.plugins import Registry, build_registry
from miaws.core.presence import RoomRules
from miaws.core.rooms import split_key
from miaws.core.stats import Stats
from miaws.integration.backend import Backends
from miaws.integration.join_proxy import JoinProxy
from miaws.ops.webhooks import WebhookSender
from miaws.transport.admission import Admission
from miaws.transport.auth import Authenticator

__all__ = ["Service"]

log = logging.getLogger("miaws")


class Service:
    """One miaws server's state.  Build it with :meth:`from_settings`."""

    def __init__(
        self, settings: Settings, registry: Registry, broker: Broker, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.local = broker.registry  # this node's clients and rooms
        self.clock = clock or Clock()
        self.dispatcher = Dispatcher(registry, broker, self.clock, settings.limits)
        # Every HTTP backend this node calls (proxy.*): pooled sessions and circuit breakers,
        # shared by auth.mode proxy, rooms.join_proxy_url and the proxy plugin's types.
        self.backends = Backends.from_settings(settings)
        # The upgrade headers kept on each client for backends (proxy.types forward_headers).
        self.forward_headers = sorted(
            {h.lower() for t in settings.proxy.types for h in t.forward_headers}
        )
        if settings.rooms.join_proxy_url:
            self.dispatcher.join_gate = JoinProxy(
                self.backends, settings.rooms.join_proxy_url, settings.proxy.timeout
            )
        self.auth = Authenticator(settings, self.backends)  # ConfigError on bad auth.*
        self.admission = Admission(self)  # the way in and out for every transport
        self.started = time.time()
        self.shutting_down = False
        self.stats = Stats()  # plain counters behind /metrics
        self.dispatcher.stats = self.stats
        self.socketio: Any = None  # the SocketIOBridge when Socket.IO is enabled
        self.config_path: Path | None = None  # what a reload re-reads (None: defaults)
        self.port_override: int | None = None  # `serve --port`, kept across reloads
        self.host_override: str | None = None  # `serve --host`, likewise
        # The cap when limits.max_connections is 0: derived from the descriptor limit by
        # Server.start (miaws.transport.accept.connection_cap); 0: none.
        self.derived_max_connections = 0
        self.webhooks = WebhookSender(settings.webhooks) if settings.webhooks.endpoints else None
        self.presence = PresenceTracker(
            self.local,
            broker.presence,
            RoomRules(settings.rooms.rules),
            leave_delay=settings.rooms.leave_delay,
            cap=settings.rooms.presence_max_members,
            publish=self.publish_event,
            emit=None if self.webhooks is None else self.webhooks.emit,
            webhook_events=frozenset() if self.webhooks is None else self.webhooks.events,
            timestamp=self.clock.timestamp,
        )
        self.dispatcher.presence = self.presence
        self.local.watch_members(self)  # the room_joined / room_left hooks

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> Service:
        """Load plugins and schemas (ConfigError on any problem) and call ``startup``."""
        log_deprecations(settings)
        service = cls(
            settings, build_registry(settings.plugin_sources()), make_broker(settings), clock
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
        self.local.add(client)
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
        self._lifecycle("client-connected", client)

    def disconnect(self, client: Client, closed: Closed) -> None:
        """Remove client from the registry, log one line (a warning when it was dead or a
        handler failed), count it, tell the plugins."""
        code, reason, dead = closed
        rooms = sorted(client.rooms)
        self.local.remove(client)
        self.stats.disconnected(client.transport, code, dead)
        client.rooms.update(rooms)  # the hook and the log still see where it was
        duration = time.monotonic() - client.started
        note = f" {reason}" if reason else ""
        level = logging.WARNING if dead or code == CloseCode.INTERNAL_ERROR else logging.INFO
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
        self._lifecycle("client-disconnected", client, code=code)

    def _lifecycle(self, event: str, client: Client, **extra: Any) -> None:
        """A client webhook event, when an endpoint wants it."""
        if self.webhooks is not None and event in self.webhooks.events:
            self.webhooks.emit(
                {
                    "event": event,
                    "clientId": client.client_id,
                    "user": client.user,
                    "transport": client.transport,
                    **({} if client.namespace == "/" else {"namespace": client.namespace}),
                    **extra,
                }
            )

    # ------------------------------------------------------------ room hooks
    def member_joined(self, key: str, client: Client) -> None:
        hook = self.hooks.room_joined
        if hook.get_hookimpls():
            hook(client=client, room=split_key(key)[1])

    def member_left(self, key: str, client: Client) -> None:
        hook = self.hooks.room_left
        if hook.get_hookimpls():
            hook(client=client, room=split_key(key)[1])

    def max_connections(self) -> int:
        """``limits.max_connections``, or when that is 0 the cap derived from the descriptor
        limit (0: none)."""
        return self.settings.limits.max_connections or self.derived_max_connections

    def at_capacity(self, connection: str | None = None) -> bool:
        """True when :meth:`max_connections` is reached: refuse the next client (1013).

        The cap counts transport connections, not clients: a client on a connection that
        has one registered already (connection: a Socket.IO client's Engine.IO session,
        joining a second namespace) is not refused by it."""
        limit = self.max_connections()
        if limit <= 0 or self.local.connections() < limit:
            return False
        return connection is None or not self.local.has_connection(connection)

    def new_client_id(self) -> str:
        return self.clock.new_client_id()

    # ------------------------------------------------------------ delivery
    def deliver(self, client: Client, outgoing: list[Outgoing]) -> None:
        """Send what the dispatcher produced: replies to client, broadcasts through
        :meth:`publish` (a broadcast to all stays in the sender's namespace)."""
        for out in outgoing:
            if out.broadcast:
                self.publish(out.payload, out.room, client.namespace)
            else:
                client.send(out.payload)
                self.stats.messages_out[out.payload.get("type", "")] += 1

    def publish(
        self, payload: dict[str, Any], key: str | None = None, namespace: str | None = None
    ) -> int:
        """Send payload to the members of the room key, or (key None) to every client of
        namespace, or (both None) to every client, on every node; count the recipients of
        this node in the stats and return them."""
        n = self.broker.publish(payload, key, namespace)
        self.stats.messages_out[payload.get("type", "")] += n
        return n

    def publish_event(self, payload: dict[str, Any], key: str) -> int:
        """Send a server event that is no room broadcast (``member-joined``) to the members
        of the room key on every node, unstamped and not kept in its history; counted like
        :meth:`publish`."""
        n = self.broker.publish_event(payload, key)
        self.stats.messages_out[payload.get("type", "")] += n
        return n

    # ------------------------------------------------------------ registry views
    def connected_count(self) -> int:
        """Clients of this node (a Socket.IO connection once per namespace it joined)."""
        return self.local.count()

    def connection_count(self) -> int:
        """Transport connections of this node (what ``limits.max_connections`` caps)."""
        return self.local.connections()

    def clients_info(self) -> list[dict[str, Any]]:
        return [c.info() for c in self.local.clients()]

    def rooms_info(self) -> dict[str, int]:
        return self.local.rooms()

    def health(self) -> dict[str, Any]:
        body = {
            "status": self.broker.status(),
            "connections": self.connected_count(),
            "rooms": len(self.rooms_info()),
            "uptime": round(time.time() - self.started, 3),
            "timestamp": self.clock.timestamp(),
        }
        backends = self.backends.snapshot()
        if backends:  # a backend's open circuit does not degrade the node: its calls fail
            body["backends"] = {name: b["circuit"] for name, b in backends.items()}
        return body
