"""``miaws serve --workers N``: N worker processes on one port, and the supervisor over them.

The supervisor serves nothing itself.  It starts N ``miaws serve --worker I`` processes with
the same config file, host and port; each binds the port with ``SO_REUSEPORT``, so the
kernel spreads new connections over them, and each is a node of its own on the shared Redis
(its own node id in ``/health``'s cluster view).

- SIGTERM / SIGINT: passed to every worker (each closes its clients with 1001, with
  ``shutdown.drain_seconds`` as configured); the supervisor waits for them, kills what is
  left after :func:`stop_timeout` and exits 0.
- SIGHUP: passed to every worker; each re-reads the config file (:mod:`miaws.ops.reload`).
- A worker that exits on its own is logged with its exit code or signal and started again,
  after 1 s, doubling up to 30 s while it keeps dying within 10 s of its start.  A worker
  that exits with code 2 (a bad config or a port it cannot bind) is not: the supervisor then
  stops the others and exits 2.
- A worker whose supervisor is gone (``kill -9`` of the supervisor) stops on its own, as on
  SIGTERM, within a second (:func:`watch_supervisor`).

Standard library only; the workers are ``sys.executable -m miaws`` processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from miaws.config import Settings

__all__ = ["Supervisor", "check_port", "stop_timeout", "watch_supervisor", "worker_argv"]

log = logging.getLogger("miaws")

RESTART_FIRST = 1.0  # seconds before a dead worker is started again
RESTART_MAX = 30.0
SHORT_LIFE = 10.0  # a worker that dies sooner than this after its start doubles the delay
PARENT_CHECK = 1.0  # seconds between two looks of a worker at its supervisor


def stop_timeout(settings: Settings) -> float:
    """Seconds a worker may take to stop after SIGTERM: its drain, its close grace (2 s in
    ``miaws serve``), and a margin for the broker to close."""
    return settings.shutdown.drain_seconds + 2.0 + 3.0


def worker_argv(
    index: int, count: int, config: Path | None, host: str | None, port: int | None
) -> list[str]:
    """The command line of worker ``index`` (1-based) of ``count``."""
    argv = [sys.executable, "-m", "miaws", "serve", "--worker", f"{index}/{count}"]
    if config is not None:
        argv += ["--config", str(config.resolve())]
    if host:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    return argv


def check_port(host: str, port: int) -> None:
    """Raise OSError now if the workers could not bind host:port with SO_REUSEPORT (another
    program holds it), so that the operator gets one line, not one per worker.  The socket
    is bound, never listening, and closed at once: no connection is routed to it."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(address[:2])


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    delay: float = RESTART_FIRST
    restarts: int = field(default=0)


class Supervisor:
    """Runs ``count`` workers until SIGTERM/SIGINT; see the module docstring."""

    def __init__(self, count: int, argv: Callable[[int], list[str]], stop_after: float) -> None:
        self.workers = [Worker(i) for i in range(1, count + 1)]
        self.argv = argv
        self.stop_after = stop_after
        self.stopping = asyncio.Event()
        self.exit_code = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.forward, signal.SIGHUP)
        tasks = [asyncio.create_task(self.keep(worker)) for worker in self.workers]
        log.info(
            "miaws supervisor (pid %d): %d workers on one port (SO_REUSEPORT); SIGTERM and "
            "SIGHUP go to all of them",
            os.getpid(),
            len(self.workers),
            extra={"event": "workers-start", "workers": len(self.workers)},
        )
        await self.stopping.wait()
        self.forward(signal.SIGTERM)
        done, pending = await asyncio.wait(tasks, timeout=self.stop_after)
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                log.warning(
                    "worker %d (pid %d) still running %.0f s after SIGTERM; killing it",
                    worker.index,
                    worker.process.pid,
                    self.stop_after,
                )
                worker.process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        log.info("miaws supervisor: every worker has stopped", extra={"event": "workers-stop"})
        return self.exit_code

    def stop(self) -> None:
        self.stopping.set()

    def forward(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)
        if sig == signal.SIGHUP:
            log.info("SIGHUP passed to %d workers: each reloads its config", len(self.workers))

    async def keep(self, worker: Worker) -> None:
        """Run one worker; start it again when it dies while the supervisor is not
        stopping, unless it exited with 2."""
        while not self.stopping.is_set():
            worker.started = time.monotonic()
            worker.process = await asyncio.create_subprocess_exec(*self.argv(worker.index))
            code = await worker.process.wait()
            if self.stopping.is_set():
                return
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if code == 2:
                log.error(
                    "worker %d (pid %d) %s (bad configuration or port); stopping the others",
                    worker.index,
                    worker.process.pid,
                    how,
                    extra={"event": "worker-exit", "worker": worker.index, "code": code},
                )
                self.exit_code = 2
                self.stop()
                return
            lived = time.monotonic() - worker.started
            worker.delay = RESTART_FIRST if lived >= SHORT_LIFE else worker.delay
            worker.restarts += 1
            log.error(
                "worker %d (pid %d) %s after %.1f s; starting it again in %.0f s (restart %d)",
                worker.index,
                worker.process.pid,
                how,
                lived,
                worker.delay,
                worker.restarts,
                extra={"event": "worker-exit", "worker": worker.index, "code": code},
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), worker.delay)
                return
            except asyncio.TimeoutError:
                pass
            worker.delay = min(worker.delay * 2, RESTART_MAX)


async def watch_supervisor(stop: Callable[[], None]) -> None:
    """In a worker: call stop() once the supervisor that started it is gone (the worker
    was re-parented)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK)
    log.warning("the supervisor (pid %d) is gone; this worker stops", parent)
    stop()
