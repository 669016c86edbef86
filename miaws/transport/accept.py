"""miaws's accept loop, and what it does when the process runs out of file descriptors.

Tornado's ``netutil.add_accept_handler`` lets ``accept()`` failing with EMFILE or ENFILE
escape: the listening socket stays readable (the connection waits in the kernel's queue), so
the event loop calls the handler again at once, and each call logs a traceback.  Measured
under ``ulimit -n 256`` with 300 clients: 94% of a core and 368 MB of log in five seconds.

Here, on EMFILE/ENFILE the listening socket leaves the event loop for a back-off (100 ms,
doubling up to 1 s, back to 100 ms after an accept succeeds); the connections that wait stay
in the kernel's queue (``server.BACKLOG``) and are accepted once descriptors are free.  Each
refusal is counted (``Stats.accept_exhausted``, ``miaws_accept_exhausted_total``) and one
warning line per 10 s at most says how many there were.

:func:`raise_nofile_limit` raises the soft ``RLIMIT_NOFILE`` to the hard limit at start-up;
:func:`connection_cap` derives a connection cap from it when ``limits.max_connections`` is 0.

Tornado private names used (declared in :mod:`miaws.transport.tornado_private`):
``TCPServer._handlers`` (fd -> the callable that removes a socket's accept handler, called
by ``TCPServer.stop``) and ``TCPServer._handle_connection`` (what an accepted socket is given
to).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from tornado.ioloop import IOLoop
from tornado.tcpserver import TCPServer

from miaws.core.stats import Stats

__all__ = ["add_accept_handler", "add_sockets", "raise_nofile_limit", "connection_cap"]

log = logging.getLogger("miaws")

ACCEPTS_PER_TURN = 128  # connections accepted in one turn of the event loop, at most
BACKOFF_FIRST = 0.1  # seconds without accepting after the first EMFILE/ENFILE
BACKOFF_MAX = 1.0
LOG_EVERY = 10.0  # seconds between two "out of descriptors" lines, at least
EXHAUSTED = (errno.EMFILE, errno.ENFILE)


class Exhaustion:
    """The back-off and the rate-limited log line of one server's listening sockets."""

    def __init__(self, stats: Stats | None) -> None:
        self.stats = stats
        self.delay = BACKOFF_FIRST
        self.unlogged = 0  # refusals since the last line
        self.logged_at = -LOG_EVERY

    def refused(self, exc: OSError) -> float:
        """Count one refusal, log if due; the seconds to pause accepting."""
        if self.stats is not None:
            self.stats.accept_exhausted += 1
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY:
            log.warning(
                "accept: out of file descriptors (%s): %d connection(s) left waiting in the "
                "last %.0f s; accepting again in %.1f s (at most one such line per %.0f s)",
                errno.errorcode.get(exc.errno or 0, exc.errno),
                self.unlogged,
                min(now - self.logged_at, LOG_EVERY),
                self.delay,
                LOG_EVERY,
                extra={"event": "accept_exhausted", "count": self.unlogged},
            )
            self.logged_at, self.unlogged = now, 0
        delay = self.delay
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return delay

    def accepted(self) -> None:
        self.delay = BACKOFF_FIRST


def add_accept_handler(
    sock: socket.socket,
    callback: Callable[[socket.socket, Any], None],
    exhaustion: Exhaustion,
) -> Callable[[], None]:
    """Tornado's ``add_accept_handler`` with the back-off above; returns the remover."""
    io_loop = IOLoop.current()
    state: dict[str, Any] = {"removed": False, "timer": None}

    def resume() -> None:
        state["timer"] = None
        if not state["removed"]:
            io_loop.add_handler(sock, accept_handler, IOLoop.READ)

    def accept_handler(fd: Any, events: int) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            if state["removed"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in EXHAUSTED:
                    raise
                io_loop.remove_handler(sock)
                state["timer"] = io_loop.call_later(exhaustion.refused(exc), resume)
                return
            exhaustion.accepted()
            callback(connection, address)

    def remove_handler() -> None:
        if state["timer"] is not None:
            io_loop.remove_timeout(state["timer"])
        else:
            io_loop.remove_handler(sock)
        state["removed"] = True

    io_loop.add_handler(sock, accept_handler, IOLoop.READ)
    return remove_handler


def add_sockets(server: TCPServer, sockets: Iterable[socket.socket], stats: Stats | None) -> None:
    """``server.add_sockets(sockets)`` (its socket options included), then each socket's
    accept handler replaced by miaws's."""
    sockets = list(sockets)
    server.add_sockets(sockets)
    exhaustion = Exhaustion(stats)
    handlers: dict[int, Callable[[], None]] = server._handlers
    for sock in sockets:
        fd = sock.fileno()
        handlers[fd]()  # Tornado's handler off
        handlers[fd] = add_accept_handler(
            sock,
            server._handle_connection,
            exhaustion,
        )


_logged_limit: int | None = None


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (once logged); the soft limit now."""
    global _logged_limit
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open (macOS)
            pass
    if _logged_limit != soft:
        log.info(
            "file descriptors: this process may open %d (RLIMIT_NOFILE; hard limit %s)",
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
        )
        _logged_limit = soft
    return soft


def connection_cap(nofile: int) -> int:
    """The connection cap when ``limits.max_connections`` is 0: the descriptor limit less a
    reserve of 10% plus 32 (listening sockets, the log, Redis, HTTP requests on their way to
    /health or /metrics, connections still sending their request head), at least 1."""
    return max(1, nofile - nofile // 10 - 32)
