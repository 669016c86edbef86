"""A real ``redis-server`` (Debian's package) on a free 127.0.0.1 port, for tests and benches.

No persistence (``--save '' --appendonly no``).  :meth:`RedisServer.stop` and
:meth:`RedisServer.start` may be called again to simulate an outage: the port stays the same.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from helpers import free_port

__all__ = ["RedisServer"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server and wait until it answers PING."""
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--enable-debug-command", "local"]  # DEBUG SLEEP (tests of a stalled Redis)
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server not ready:\n{self.log_path.read_text()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill redis-server (no goodbye to its clients) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
