"""Shared fixtures: a real miaws server on an unused 127.0.0.1 port (pytest-tornasync) and
clients that are closed at teardown.

Settings for one test come from ``@pytest.mark.config({...})`` (the same mapping a config
file holds).  ``ws_connect()`` opens a :class:`miaws.cli.check.Peer` to the running server and
has already read its ``welcome``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from helpers import ServerProcess
from rawws import RawWS
from redis_server import RedisServer

from miaws.cli.check import Peer, expect_type
from miaws.config import Settings, build_settings
from miaws.server import Server
from miaws.service import Service

ROOT = Path(__file__).resolve().parent.parent
Connect = Callable[..., Awaitable[Peer]]
RawConnect = Callable[..., Awaitable[RawWS]]


@pytest.fixture
def config_data(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("config")
    return dict(marker.args[0]) if marker else {}


@pytest.fixture
def settings(config_data: dict[str, Any]) -> Settings:
    return build_settings(config_data, source="test", environ={})


@pytest.fixture
def miaws_server(
    settings: Settings, io_loop: Any, http_server_port: tuple[socket.socket, int]
) -> Iterator[Server]:
    """The node ``miaws serve`` runs (:class:`miaws.server.Server`), on pytest-tornasync's
    unused port; stopped at teardown as SIGTERM stops it, without the grace period."""
    server = Server(settings)
    io_loop.run_sync(lambda: server.start([http_server_port[0]]))
    yield server
    io_loop.run_sync(lambda: server.stop(grace=0), timeout=10)


@pytest.fixture
def service(miaws_server: Server) -> Service:
    assert miaws_server.service is not None
    return miaws_server.service


@pytest.fixture
def app(miaws_server: Server) -> tornado.web.Application:
    assert miaws_server.app is not None
    return miaws_server.app


@pytest.fixture
def http_server(miaws_server: Server) -> Any:
    """pytest-tornasync's fixture: the node's own HTTP server."""
    return miaws_server.http


@pytest.fixture
def port(http_server: Any, http_server_port: tuple[socket.socket, int]) -> int:
    return http_server_port[1]


@pytest.fixture
def ws_url(port: int, settings: Settings) -> str:
    return f"ws://127.0.0.1:{port}{settings.server.ws_path}"


@pytest.fixture
def ws_connect(ws_url: str) -> Iterator[Connect]:
    """``await ws_connect()`` -> a Peer that has read its welcome; closed at teardown."""
    peers: list[Peer] = []

    async def connect(url: str | None = None, **kw: Any) -> Peer:
        peer = await Peer.connect(url or ws_url, timeout=5.0, **kw)
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        peer.close()


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``await connect(node, *rooms)``: a Peer on that :class:`ServerProcess` node, in those
    rooms; closed at teardown."""
    opened: list[Peer] = []

    async def open_peer(node: ServerProcess, *rooms: str) -> Peer:
        peer = await Peer.connect(node.url)
        opened.append(peer)
        for room in rooms:
            expect_type(await peer.request({"type": "join-room", "room": room}), "room-joined")
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


@pytest.fixture
def raw_connect(port: int) -> Iterator[RawConnect]:
    """``await raw_connect(path, headers, rcvbuf)`` -> a :class:`RawWS` (tests/rawws.py) that
    has done the handshake; aborted at teardown."""
    conns: list[RawWS] = []

    async def connect(*args: Any, **kw: Any) -> RawWS:
        conn = await RawWS.open(port, *args, **kw)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        conn.abort()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``miaws serve`` subprocesses; each is killed at teardown."""
    started: list[ServerProcess] = []

    def start(
        config_text: str | None = None, env: dict[str, str] | None = None, ready: bool = True
    ) -> ServerProcess:
        server = ServerProcess(config_text, tmp_path, env)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port (stop()/start() simulate an outage)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
