"""Test helpers: bounded waiting, free ports, ``miaws serve`` as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["eventually", "free_port", "ServerProcess", "chromium"]

CHROMIUM = "/usr/bin/chromium"  # Debian's package; .ci/run installs it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Debian Chromium driven by Playwright; yields a Browser, closed on exit."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until predicate() is true (bounded); fail the test otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the timeout")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``miaws serve`` in a subprocess on a free 127.0.0.1 port, for CLI and signal tests."""

    def __init__(
        self,
        config_text: str | None,
        tmp_path: Path,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ):
        self.port = free_port()
        args = [sys.executable, "-m", "miaws", "serve", "--port", str(self.port), *extra_args]
        cfg = tmp_path / f"config-{self.port}.yaml"
        cfg.write_text(config_text or "server:\n  host: 127.0.0.1\n")
        args += ["--config", str(cfg)]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("PORT", None)
        self.log_path = tmp_path / f"server-{self.port}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path
        )
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.http = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server not ready:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
