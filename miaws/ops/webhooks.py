"""Signed lifecycle webhooks: events POSTed in batches to each ``webhooks`` endpoint.

Each endpoint has its own bounded queue (``webhooks.queue_size``) and one sender task.  The
task takes what has queued (up to ``webhooks.batch_max`` events, after a short gathering
pause of :data:`GATHER` seconds) and POSTs it as ``{"time_ms": …, "events": […]}`` with
``X-Miaws-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>``.  A
failed POST (a connection error, a timeout of ``webhooks.timeout``, any status but 2xx) is
retried, the same body, with exponential back-off (:data:`BACKOFF_FIRST` doubling up to
:data:`BACKOFF_MAX`) for ``webhooks.retry_for`` seconds; then the batch is dropped.  Events
dropped (queue full, retries given up) are counted per endpoint
(``miaws_webhook_events_dropped_total``) and logged at most once per :data:`LOG_EVERY`.

The HTTP client is aiohttp: one session per endpoint keeps its connection alive between
batches, and miaws's outgoing backend calls use the same library.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from miaws.config import WebhookEndpoint, WebhooksSettings
from miaws.core.model import encode_json_bytes
from miaws.core.tasks import cancel_and_wait

if TYPE_CHECKING:
    import aiohttp

__all__ = ["WebhookSender", "sign", "SIGNATURE_HEADER"]

log = logging.getLogger("miaws.webhooks")

SIGNATURE_HEADER = "X-Miaws-Signature"
GATHER = 0.05  # seconds a sender waits for more events before it POSTs
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
LOG_EVERY = 10.0  # seconds between two "dropped" log lines of one endpoint


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _Endpoint:
    def __init__(self, config: WebhookEndpoint, settings: WebhooksSettings) -> None:
        self.url = config.url
        self.secret = config.secret or ""
        self.events = frozenset(config.events)
        self.settings = settings
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(settings.queue_size)
        self.task: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.dropped_unlogged = 0
        self.logged_at = 0.0
        self.busy = False  # a batch is being posted


class WebhookSender:
    """Queues events for every endpoint that wants them, and posts them."""

    def __init__(self, settings: WebhooksSettings) -> None:
        self.settings = settings
        self._endpoints = [_Endpoint(e, settings) for e in settings.endpoints]
        self.events = frozenset().union(*(e.events for e in self._endpoints))
        self.posted: Counter[str] = Counter()  # result (ok / error) -> POSTs, by endpoint URL
        self.dropped: Counter[str] = Counter()  # endpoint URL -> events dropped
        self.delivered: Counter[str] = Counter()  # endpoint URL -> events delivered

    @property
    def urls(self) -> Sequence[str]:
        return [e.url for e in self._endpoints]

    def emit(self, event: dict[str, Any]) -> None:
        """Queue event for every endpoint subscribed to its kind (never blocks)."""
        for endpoint in self._endpoints:
            if event["event"] not in endpoint.events:
                continue
            try:
                endpoint.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(endpoint, 1, "queue full")

    def _drop(self, endpoint: _Endpoint, n: int, why: str) -> None:
        self.dropped[endpoint.url] += n
        endpoint.dropped_unlogged += n
        now = time.monotonic()
        if now - endpoint.logged_at >= LOG_EVERY:
            endpoint.logged_at = now
            log.warning(
                "webhook %s: %d events dropped (%s; %d in all)",
                endpoint.url,
                endpoint.dropped_unlogged,
                why,
                self.dropped[endpoint.url],
            )
            endpoint.dropped_unlogged = 0

    async def start(self) -> None:
        for endpoint in self._endpoints:
            endpoint.task = asyncio.create_task(self._send(endpoint), name="miaws-webhook")

    async def close(self, flush: float = 2.0) -> None:
        """Post what is queued (for up to ``flush`` seconds), then stop."""
        deadline = time.monotonic() + flush
        while time.monotonic() < deadline and any(
            not e.queue.empty() or e.busy for e in self._endpoints
        ):
            await asyncio.sleep(0.02)
        for endpoint in self._endpoints:
            await cancel_and_wait([endpoint.task])
            left = endpoint.queue.qsize()
            if left:
                self._drop(endpoint, left, "server stopping")
            if endpoint.session is not None:
                await endpoint.session.close()

    async def _send(self, endpoint: _Endpoint) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        endpoint.session = aiohttp.ClientSession(timeout=timeout)
        while True:
            batch = [await endpoint.queue.get()]
            endpoint.busy = True
            try:
                await asyncio.sleep(GATHER)
                while len(batch) < self.settings.batch_max and not endpoint.queue.empty():
                    batch.append(endpoint.queue.get_nowait())
                await self._post(endpoint, batch)
            finally:
                endpoint.busy = False

    async def _post(self, endpoint: _Endpoint, batch: list[dict[str, Any]]) -> None:
        import aiohttp

        assert endpoint.session is not None
        body = encode_json_bytes({"time_ms": int(time.time() * 1000), "events": batch})
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(endpoint.secret, body),
            "User-Agent": "miaws-webhooks",
        }
        give_up = time.monotonic() + self.settings.retry_for
        delay = BACKOFF_FIRST
        while True:
            try:
                async with endpoint.session.post(endpoint.url, data=body, headers=headers) as r:
                    await r.read()
                    if 200 <= r.status < 300:
                        self.posted["ok"] += 1
                        self.delivered[endpoint.url] += len(batch)
                        return
                    why = f"HTTP {r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
            self.posted["error"] += 1
            if time.monotonic() + delay > give_up:
                self._drop(endpoint, len(batch), f"retried for {self.settings.retry_for:g} s")
                return
            log.info("webhook %s failed (%s); retrying in %.1f s", endpoint.url, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
