"""The ``miaws`` command: ``serve``, ``health``, ``check``, ``clients``, ``rooms``, ``listen``,
``send``, ``asyncapi``.

Exit codes: 0 success, 1 a check failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from miaws.config import ConfigError, Settings, config_path, load_settings

__all__ = ["main"]

log = logging.getLogger("miaws")


def default_url() -> str:
    return f"ws://127.0.0.1:{os.environ.get('PORT') or 3001}/ws"


def default_http_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('PORT') or 3001}"


def ws_url(url: str) -> str:
    """The WebSocket URL of what a user may type: ``ws(s)://...``, the server's
    ``http(s)://`` address or ``host:port``; without a path, ``/ws``."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{url!r} is not a ws:// or http:// server URL")
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path or "/ws", parts.query, ""))


def setup_logging(settings: Settings) -> None:
    from miaws.ops.logs import configure_logging

    configure_logging(settings)


async def serve(
    settings: Settings,
    path: Path | None = None,
    port_override: int | None = None,
    worker: tuple[int, int] | None = None,
    host_override: str | None = None,
) -> None:
    """Run one node until SIGTERM or SIGINT (SIGHUP reloads the config).  A worker (index,
    count) of ``--workers`` shares the port (SO_REUSEPORT) and stops when its supervisor
    is gone."""
    from miaws.cli.workers import watch_supervisor
    from miaws.server import Server

    server = Server(
        settings,
        config_path=path,
        port_override=port_override,
        host_override=host_override,
        reuse_port=worker is not None,
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    if _early_hup:
        server.reload()
    watcher = asyncio.create_task(watch_supervisor(stop.set)) if worker else None
    log.info(
        "miaws listening on http://%s:%d (WebSocket at %s)%s, plugins: %s, config %s",
        settings.server.host,
        settings.server.port,
        settings.server.ws_path,
        f", worker {worker[0]} of {worker[1]} (pid {os.getpid()})" if worker else "",
        ", ".join(settings.plugins.enabled),
        path if path is not None else "none: built-in defaults",
    )
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    assert server.service is not None
    log.info("shutting down: closing %d connections with 1001", server.service.connected_count())
    await server.stop(grace=2.0)


_early_hup = False  # a worker's SIGHUP before its server listened: reload once it does


def _hup_before_start(signum: int, frame: object) -> None:
    global _early_hup
    _early_hup = True


def cmd_serve(args: argparse.Namespace) -> int:
    from miaws.config import check_workers

    if args.worker is not None:  # the supervisor may pass a SIGHUP on while we start
        signal.signal(signal.SIGHUP, _hup_before_start)
    settings: Settings | None = None
    try:
        path = config_path(args.config)
        settings = load_settings(path)
        if args.port is not None:
            settings = _with_port(settings, args.port)
        if args.host:
            settings = _with_host(settings, args.host)
        worker = _worker(args.worker)
        if worker is not None:
            from miaws.ops.logs import set_worker

            set_worker(worker[0])
        workers = settings.server.workers if args.workers is None else args.workers
        if args.workers is not None:
            check_workers(settings, "--workers", args.workers)
        setup_logging(settings)
        if worker is None and workers > 1:
            return _supervise(settings, workers, path, args)
        asyncio.run(serve(settings, path, args.port, worker, args.host or None))
    except ConfigError as exc:
        print(f"miaws: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" on {settings.server.host}:{settings.server.port}" if settings else ""
        print(f"miaws: cannot listen{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _worker(value: str | None) -> tuple[int, int] | None:
    """``--worker I/N`` (set by the supervisor for its workers) as (I, N)."""
    if value is None:
        return None
    index, _, count = value.partition("/")
    try:
        return int(index), int(count)
    except ValueError:
        raise ConfigError(f"--worker has value {value!r}; expected INDEX/COUNT") from None


def _supervise(
    settings: Settings, workers: int, path: Path | None, args: argparse.Namespace
) -> int:
    """Run ``workers`` worker processes on the port until SIGTERM (miaws.cli.workers)."""
    from miaws.cli.workers import Supervisor, check_port, stop_timeout, worker_argv

    check_port(settings.server.host, settings.server.port)  # OSError: one line, exit 2
    if settings.socketio.enabled:
        log.warning(
            "Socket.IO with %d workers: the kernel spreads connections over them, so the "
            "requests of one long-polling session may reach different workers (HTTP 400 "
            "'Invalid session'); have Socket.IO clients use transports: ['websocket'], or run "
            "one worker per port behind a sticky proxy (docs/scaling.md)",
            workers,
        )
    supervisor = Supervisor(
        workers,
        lambda i: worker_argv(i, workers, path, args.host, args.port),
        stop_timeout(settings),
    )
    return asyncio.run(supervisor.run())


def _with_port(settings: Settings, port: int) -> Settings:
    import dataclasses

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port has value {port}; expected a port number from 1 to 65535")
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, port=port))


def _with_host(settings: Settings, host: str) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, host=host))


def cmd_health(args: argparse.Namespace) -> int:
    from miaws.cli.check import run_health

    code, line = asyncio.run(run_health(args.url, args.timeout))
    print(line)
    return code


def cmd_check(args: argparse.Namespace) -> int:
    from miaws.cli.check import Refused, run_check

    try:
        results = asyncio.run(run_check(args.url, args.max_message_bytes, args.timeout))
    except Refused as exc:  # every other scenario would be refused too: one line
        _print_results(exc.results)
        print(f"miaws check: {exc}", file=sys.stderr)
        return 1
    _print_results(results)
    failed = sum(1 for _, passed, _ in results if not passed)
    print(f"{len(results) - failed} passed, {failed} failed")
    if any(not passed and "1009" in name for name, passed, _ in results):
        print(
            "hint: the size scenario assumes limits.max_message_bytes is "
            f"{args.max_message_bytes}; pass --max-message-bytes with the server's value",
            file=sys.stderr,
        )
    return 0 if failed == 0 else 1


def _print_results(results: list[tuple[str, bool, str]]) -> None:
    from miaws.cli.check import SCENARIOS

    width = max(len(name) for name, _ in SCENARIOS)
    for name, passed, detail in results:
        print(f"{'PASS' if passed else 'FAIL'}  {name.ljust(width)}  {detail}".rstrip())


def cmd_registry(args: argparse.Namespace) -> int:
    from miaws.cli.admin import AdminError, clients_table, fetch, node_line, rooms_table

    key = args.api_key or os.environ.get("MIAWS_API_KEY") or None
    try:
        if args.command == "clients":
            print(clients_table(fetch(args.url, "/api/clients", key, args.timeout)))
            with contextlib.suppress(AdminError):
                line = node_line(fetch(args.url, "/health", None, args.timeout))
                if line:
                    print(line)
        else:
            print(rooms_table(fetch(args.url, "/api/rooms", key, args.timeout)))
    except AdminError as exc:
        print(f"miaws: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from miaws.cli.listen_send import listen

    return asyncio.run(listen(args.url, args.room, args.count, args.timeout))


def cmd_send(args: argparse.Namespace) -> int:
    from miaws.cli.listen_send import send_one

    return asyncio.run(send_one(args.url, args.message, args.join, args.timeout, args.no_reply))


def cmd_asyncapi(args: argparse.Namespace) -> int:
    import json

    from miaws.core.plugins import build_registry
    from miaws.ops.asyncapi import asyncapi_document

    try:
        settings = load_settings(config_path(args.config))
        registry = build_registry(settings.plugin_sources())
    except ConfigError as exc:
        print(f"miaws: {exc}", file=sys.stderr)
        return 2
    host = settings.server.host if settings.server.host != "0.0.0.0" else "localhost"
    document = asyncapi_document(
        registry, f"{host}:{settings.server.port}", settings.server.ws_path
    )
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


class _Intermixed(argparse.ArgumentParser):
    """A command's parser that takes options anywhere among its positionals:
    ``send URL --join R JSON`` (plain argparse has ``[url]`` take URL and leaves JSON
    unrecognized).  ``parse_known_intermixed_args`` calls ``parse_known_args`` itself on
    Python 3.10-3.11, hence the flag."""

    _inner = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


URL_HELP = (
    "the server: ws://HOST:PORT/ws, http://HOST:PORT or HOST:PORT "
    "(default: ws://127.0.0.1:$PORT/ws, PORT 3001)"
)


def parser() -> argparse.ArgumentParser:
    from miaws import __version__

    p = argparse.ArgumentParser(
        prog="miaws",
        description="A real-time WebSocket server. Exit codes: 0 success, 1 a check or "
        "request failed, 2 bad configuration or usage, 3 (health) the node is degraded.",
    )
    p.add_argument("--version", action="version", version=f"miaws {__version__}")
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Intermixed
    )

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description)

    def ws_url_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("url", nargs="?", type=ws_url, default=default_url(), help=URL_HELP)

    def timeout(parser: argparse.ArgumentParser, default: float | None = 5.0) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=default,
            metavar="SECONDS",
            help=f"give up after this many seconds (default: {default or 'none'})",
        )

    s = command(
        "serve",
        "run the server",
        "Run the server until SIGTERM or SIGINT (clients get close 1001); SIGHUP re-reads "
        "the config file. With --workers N, a supervisor runs N such processes on the port "
        "and passes both signals to all of them.",
    )
    s.add_argument(
        "--config",
        help="config file (default: $MIAWS_CONFIG, else ./config.yaml "
        "when present, else built-in defaults)",
    )
    s.add_argument("--host", help="override server.host (the address to listen on)")
    s.add_argument("--port", type=int, help="override server.port (and $PORT)")
    s.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="override server.workers: run N processes on the port (SO_REUSEPORT), each a "
        "node on the configured Redis broker",
    )
    s.add_argument("--worker", help=argparse.SUPPRESS)  # INDEX/COUNT, set by the supervisor
    s.set_defaults(func=cmd_serve)
    h = command(
        "health",
        "connect, expect welcome, ping, expect pong",
        "Connect, expect the welcome, ping, expect the pong, then read GET /health. Prints one "
        "line. Exit 0 healthy, 1 failed, 3 serving but degraded (its broker is down).",
    )
    ws_url_argument(h)
    timeout(h)
    h.set_defaults(func=cmd_health)
    c = command(
        "check",
        "run every wire-contract scenario against a server",
        "Run every scenario of the wire contract against a running server and print a "
        "pass/fail table. Exit 0 only if all pass.",
    )
    ws_url_argument(c)
    timeout(c)
    c.add_argument(
        "--max-message-bytes",
        type=int,
        default=65536,
        metavar="BYTES",
        help="the server's limits.max_message_bytes (default: 65536)",
    )
    c.set_defaults(func=cmd_check)
    for name, what in (("clients", "connected clients"), ("rooms", "rooms and member counts")):
        r = command(
            name,
            f"print a running server's {what} as a table",
            f"Print a running server's {what} (GET /api/{name}) as a table.",
        )
        r.add_argument(
            "url",
            nargs="?",
            default=default_http_url(),
            help="the server: http://HOST:PORT (default: http://127.0.0.1:$PORT, PORT 3001)",
        )
        r.add_argument("--api-key", help="bearer key for /api (default: $MIAWS_API_KEY)")
        timeout(r)
        r.set_defaults(func=cmd_registry)
    li = command(
        "listen",
        "join rooms and print messages as they come (JSON lines)",
        "Join rooms and print every message as one JSON line as it comes; reconnects and "
        "re-joins. An upgrade refused with HTTP 429 or 5xx is retried; any other refusal "
        "(401, 403, 404) ends it at once with exit 1, as do no connection within "
        "min(--timeout, 10) seconds and --count messages not arriving in time.",
    )
    ws_url_argument(li)
    li.add_argument("--room", action="append", default=[], help="room to join (repeatable)")
    li.add_argument("--count", type=int, help="stop after this many messages")
    timeout(li, None)
    li.set_defaults(func=cmd_listen)
    se = command(
        "send",
        "send one JSON message and print the reply",
        "Send one JSON message and print the reply. Exit 1 on an error reply, a close, or "
        "an upgrade the server refused (any HTTP status, said at once).",
    )
    ws_url_argument(se)
    se.add_argument("message", help='the message, e.g. \'{"type":"ping"}\'')
    se.add_argument("--join", action="append", default=[], help="room to join first")
    timeout(se)
    se.add_argument(
        "--no-reply",
        action="store_true",
        help="the type answers only on error (like broadcast): exit 0 once it was handled",
    )
    se.set_defaults(func=cmd_send)
    a = command(
        "asyncapi",
        "print the AsyncAPI 3.0 document of the configured server",
        "Print the AsyncAPI 3.0 document of the protocol the configured plugins serve.",
    )
    a.add_argument("--config", help="config file (found as for serve)")
    a.set_defaults(func=cmd_asyncapi)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code
