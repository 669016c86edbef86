"""A real HTTP backend for the integration tests: an aiohttp app on a free 127.0.0.1 port.

Each path answers with what the test scripted (:meth:`TestBackend.route`), and every request
is recorded (path, headers, JSON body), so a test asserts what the backend was sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from helpers import free_port

__all__ = ["TestBackend", "Seen", "reply", "Script"]


@dataclass
class Seen:
    """One request the backend received."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: Any


Script = Callable[[Seen], Awaitable[web.StreamResponse]]


def reply(
    body: Any = None, status: int = 200, delay: float = 0.0, raw: bytes | None = None
) -> Script:
    """A script answering body as JSON (or raw bytes) with status, after delay seconds."""

    async def answer(seen: Seen) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        if raw is not None:
            return web.Response(body=raw, status=status, content_type="text/plain")
        if body is None:
            return web.Response(status=status)
        return web.json_response(body, status=status)

    return answer


class TestBackend:
    """The backend; ``url`` is its base (``http://127.0.0.1:PORT``)."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        self.scripts: dict[str, Script] = {}
        self.in_flight = 0
        self.most_in_flight = 0
        self._runner: web.AppRunner | None = None

    def route(self, path: str, script: Script) -> None:
        self.scripts[path] = script

    def calls(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        seen = Seen(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        self.seen.append(seen)
        script = self.scripts.get(request.path)
        if script is None:
            return web.Response(status=404)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await script(seen)
        finally:
            self.in_flight -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
