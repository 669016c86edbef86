"""Building the Tornado application from a :class:`Service`."""

from __future__ import annotations

from typing import Any

import tornado.web

from miaws.ops.adminapi import PublishHandler, ReloadHandler
from miaws.ops.asyncapi import AsyncAPIHandler
from miaws.ops.httpapi import (
    ClientsHandler,
    HealthHandler,
    LivezHandler,
    PluginsHandler,
    PresenceHandler,
    ReadyzHandler,
    RoomsHandler,
)
from miaws.ops.metrics import MetricsHandler, metrics_registry
from miaws.ops.webconsole import console_routes
from miaws.service import Service
from miaws.transport.native import WebSocketEndpoint
from miaws.transport.upgrade import UpgradeServer

__all__ = ["make_app", "make_server", "MiawsApplication"]


class MiawsApplication(tornado.web.Application):
    """Tornado's application, without the access-log line of a request refused by a
    connection limit (a handler with ``limit_refused`` set): those refusals are counted and
    logged at most once per 10 s by the admission path, and a flood of them must not become
    a flood of log lines (Tornado logs every 4xx/5xx response)."""

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        if not getattr(handler, "limit_refused", False):
            super().log_request(handler)


def tornado_settings(service: Service) -> dict[str, Any]:
    """Our settings mapped onto Tornado's own."""
    s = service.settings
    return {
        "websocket_ping_interval": s.heartbeat.interval or None,
        "websocket_ping_timeout": s.heartbeat.timeout if s.heartbeat.interval else None,
        "websocket_max_message_size": s.limits.max_message_bytes,
    }


def make_app(service: Service) -> tornado.web.Application:
    kw = {"service": service}
    routes: list[Any] = [
        (service.settings.server.ws_path, WebSocketEndpoint, kw),
        (r"/health", HealthHandler, kw),
        (r"/livez", LivezHandler, kw),
        (r"/readyz", ReadyzHandler, kw),
        (r"/api/clients", ClientsHandler, kw),
        (r"/api/rooms", RoomsHandler, kw),
        (r"/api/presence", PresenceHandler, kw),
        (r"/api/plugins", PluginsHandler, kw),
        (r"/api/publish", PublishHandler, kw),
        (r"/api/reload", ReloadHandler, kw),
        (r"/metrics", MetricsHandler, {"registry": metrics_registry(service)}),
        *console_routes(service),
        (r"/asyncapi\.json", AsyncAPIHandler, kw),
    ]
    if service.settings.socketio.enabled:
        from miaws.transport.sio import PATH, SocketIOBridge  # python-socketio only when it is used

        service.socketio = SocketIOBridge(service)
        routes.append((PATH, service.socketio.handler()))
    return MiawsApplication(routes, **tornado_settings(service))


# Bytes IOStream reads per recv.  Tornado's default is 64 KiB, and it allocates and zeroes a
# buffer of that size for every recv it tries, the last one of each read (EAGAIN) included:
# ~3 per connection and 2 per read, each wiping the CPU's L1 data cache.  Frames here are
# small; a large one takes a few more recvs.  (Tornado's HTTP/1 connections read request
# bodies in chunks of this size too.)
READ_CHUNK_SIZE = 8192


def make_server(app: tornado.web.Application, service: Service) -> UpgradeServer:
    """Tornado's HTTP server for app, with the short way in for WebSocket upgrades
    (:mod:`miaws.transport.upgrade`).

    ``server.header_timeout`` bounds the first request head of every connection (read by
    UpgradeServer, whichever path it is for); ``server.idle_timeout`` is Tornado's
    ``idle_connection_timeout``, the wait for each later request head of a keep-alive
    connection (Tornado's default is 3600 s); ``server.body_timeout`` is Tornado's
    ``body_timeout``, the time a request has to send its whole body once its head is read
    (Tornado's default is none)."""
    s = service.settings.server
    return UpgradeServer(
        app,
        ws_path=service.settings.server.ws_path,
        ws_handler=WebSocketEndpoint,
        ws_kwargs={"service": service},
        chunk_size=READ_CHUNK_SIZE,
        header_timeout=s.header_timeout,
        idle_connection_timeout=s.idle_timeout,
        body_timeout=s.body_timeout,
    )
