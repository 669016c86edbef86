"""The lifecycle of one miaws node: :class:`Server` ``start()``, ``stop(grace)``, ``reload()``.

``miaws serve`` and the test fixtures both run a node through this object, so what a test
starts is what an operator runs.  Signals are the command's business (``miaws.cli.main``):
SIGTERM/SIGINT call :meth:`Server.stop`, SIGHUP :meth:`Server.reload`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Iterable
from pathlib import Path

import tornado.netutil
import tornado.web

from miaws.app import make_app, make_server
from miaws.config import Settings
from miaws.core.clock import Clock
from miaws.core.errors import CloseCode
from miaws.ops.reload import ReloadResult, reload_config
from miaws.service import Service
from miaws.transport import accept
from miaws.transport.protocol import run_corked
from miaws.transport.upgrade import UpgradeServer

__all__ = ["Server"]

log = logging.getLogger("miaws")

BACKLOG = 1024  # pending connections the kernel queues for accept
DRAIN_STEP = 0.1  # seconds between two batches of a drain (shutdown.drain_seconds)


class Server:
    """One node: its :class:`Service` (plugins, broker, dispatcher), Tornado application and
    HTTP server.  ``config_path``, ``port_override`` and ``host_override`` are what a
    reload re-reads."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        port_override: int | None = None,
        host_override: str | None = None,
        clock: Clock | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port  # a worker of ``--workers``: the port is shared
        self.config_path = config_path
        self.port_override = port_override
        self.host_override = host_override
        self.clock = clock
        self.service: Service | None = None
        self.app: tornado.web.Application | None = None
        self.http: UpgradeServer | None = None

    async def start(self, sockets: Iterable[socket.socket] | None = None) -> None:
        """Load plugins and schemas (ConfigError on any problem), start the broker and listen
        on ``server.host``/``server.port``, or on the given bound sockets (tests).

        The soft descriptor limit is raised to the hard one (once the plugins load); with
        ``limits.max_connections`` 0 the cap is derived from it
        (:mod:`miaws.transport.accept`)."""
        service = Service.from_settings(self.settings, self.clock)
        nofile = accept.raise_nofile_limit()
        service.derived_max_connections = accept.connection_cap(nofile)
        service.config_path, service.port_override = self.config_path, self.port_override
        service.host_override = self.host_override
        service.broker.read_with(run_corked)  # messages from other nodes: corked writes
        await service.broker.start()
        await service.presence.start()
        if service.webhooks is not None:
            await service.webhooks.start()
        self.service = service
        self.app = make_app(service)
        self.http = make_server(self.app, service)
        if sockets is None:
            s = self.settings.server
            sockets = tornado.netutil.bind_sockets(
                s.port, address=s.host, backlog=BACKLOG, reuse_port=self.reuse_port
            )
        accept.add_sockets(self.http, sockets, service.stats)

    def reload(self) -> ReloadResult:
        """Re-read the config file and apply what can change live (:mod:`miaws.ops.reload`)."""
        assert self.service is not None and self.app is not None, "start() first"
        return reload_config(self.service, self.app)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting (``/readyz`` answers 503 from now on), close every client with 1001,
        give their close handshakes up to ``grace`` seconds, then end what is left and stop the
        broker.

        With ``shutdown.drain_seconds`` the clients are closed in even batches over that
        window (every 0.1 s the share of them due by then), so that they do not all reconnect
        elsewhere at once; it ends early when every client has gone."""
        service, http = self.service, self.http
        if service is None or http is None:
            return
        service.shutting_down = True
        http.stop()
        await self._drain(service, self.settings.shutdown.drain_seconds)
        deadline = asyncio.get_running_loop().time() + grace
        while service.connected_count() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await http.close_all_connections()
        if service.socketio is not None:
            await service.socketio.shutdown()
        await service.presence.close()  # pending leaves count now: the node is going
        if service.webhooks is not None:
            await service.webhooks.close()
        await service.broker.close()
        await service.backends.close()
        self.service = self.app = self.http = None

    @staticmethod
    async def _drain(service: Service, seconds: float) -> None:
        """Close the clients connected now with 1001: all at once (0), else in even batches
        over ``seconds``."""
        clients = list(service.local.clients())
        loop = asyncio.get_running_loop()
        start = loop.time()
        closed = 0
        while closed < len(clients):
            elapsed = loop.time() - start
            due = (
                len(clients) if elapsed >= seconds else math.ceil(len(clients) * elapsed / seconds)
            )
            for client in clients[closed:due]:
                client.close(CloseCode.GOING_AWAY, "server shutting down")
            closed = max(closed, due)
            if closed >= len(clients) or not service.connected_count():
                return
            await asyncio.sleep(DRAIN_STEP)
