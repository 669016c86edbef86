"""A webhook receiver for tests: a tiny Tornado app on 127.0.0.1 that checks every POST's
``X-Miaws-Signature`` (HMAC-SHA256 of the raw body) and keeps the events it accepted.

``fail_first=N`` answers the first N POSTs with 503 (before looking at them), so a test can
watch the sender retry.  A POST whose signature does not verify is answered 401 and recorded
in ``bad_signatures``; a test asserts there were none.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from typing import Any

import tornado.httpserver
import tornado.web

__all__ = ["WebhookReceiver"]


class _Hook(tornado.web.RequestHandler):
    receiver: WebhookReceiver

    def initialize(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver

    def post(self) -> None:
        r = self.receiver
        r.attempts += 1
        if r.attempts <= r.fail_first:
            self.set_status(503)
            self.finish("not yet")
            return
        body = self.request.body
        expected = "sha256=" + hmac.new(r.secret.encode(), body, hashlib.sha256).hexdigest()
        given = self.request.headers.get("X-Miaws-Signature", "")
        if not hmac.compare_digest(expected, given):
            r.bad_signatures += 1
            self.set_status(401)
            self.finish("bad signature")
            return
        batch = json.loads(body)
        assert isinstance(batch["time_ms"], int)
        r.posts.append(batch)
        for event in batch["events"]:
            r.events.append((time.monotonic(), event))
        self.finish("ok")


class WebhookReceiver:
    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.attempts = 0
        self.bad_signatures = 0
        self.posts: list[dict[str, Any]] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        app = tornado.web.Application([("/hook", _Hook, {"receiver": self})])
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets([sock])

    def kinds(self, room: str | None = None) -> list[str]:
        """The event names received, in order (of one room only, if given)."""
        return [e["event"] for _, e in self.events if room is None or e.get("room") == room]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["event"] == kind]

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 8.0) -> list[dict[str, Any]]:
        """Wait (bounded) until at least n events of kind came; they are returned."""
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} {kind} not received; got {self.kinds()}")
            await asyncio.sleep(0.02)
        return self.of(kind)

    def close(self) -> None:
        self.server.stop()
