"""HTTP backends: one pooled aiohttp session per backend, a cap on calls in flight, and a
circuit breaker.

A *backend* is a scheme, host and port; every URL of it (``proxy.types``, ``auth.proxy_url``,
``rooms.join_proxy_url``) shares its :class:`Backend`: one ``aiohttp.ClientSession`` whose
connector keeps connections alive and holds at most ``proxy.max_concurrent`` of them, so
calls beyond the cap wait for a free connection (within their timeout).

The circuit breaker (:class:`CircuitBreaker`) counts consecutive *failures*: a 5xx status, a
timeout, a backend that cannot be reached.  After ``proxy.breaker_failures`` of them the
circuit opens: calls fail at once (:class:`~miaws.core.errors.BackendError`, reason
``circuit open``) for ``proxy.breaker_seconds``; then one probe call goes through
(half-open): its success closes the circuit, its failure opens it again.  An answer below
500 is a success for the breaker (the backend is up and said something).  Each change is
logged; :meth:`Backends.snapshot` is what ``/metrics`` and ``/health`` show.

::

    answer = await service.backends.post(url, {"a": 1}, timeout=5.0, headers={...})
    answer.status, answer.body        # raises BackendTimeout or BackendError on failure
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from miaws.core.errors import BackendError, BackendTimeout

__all__ = ["Backends", "Backend", "CircuitBreaker", "Answer", "CLOSED", "OPEN", "HALF_OPEN"]

log = logging.getLogger("miaws.backend")

CLOSED, HALF_OPEN, OPEN = "closed", "half-open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
"""The circuit state as the ``miaws_backend_circuit_state`` gauge shows it."""

USER_AGENT = "miaws"


@dataclass(frozen=True)
class Answer:
    """A backend's HTTP answer: its status and body."""

    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON (``None`` when empty); :class:`BackendError` if unreadable."""
        if not self.body.strip():
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise BackendError(
                "Backend answer is not JSON", {"reason": "unreadable answer"}
            ) from None


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures -> half-open after
    ``cooldown`` seconds (one probe) -> closed on its success, open on its failure.
    ``threshold`` 0: never opens."""

    __slots__ = (
        "name",
        "threshold",
        "cooldown",
        "state",
        "failures",
        "opened_at",
        "_probing",
        "_now",
    )

    def __init__(
        self,
        name: str,
        threshold: int,
        cooldown: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        self._probing = False
        self._now = now

    def allow(self) -> bool:
        """May a call go now?  In half-open, only one (the probe) until it is done."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._now() - self.opened_at < self.cooldown:
                return False
            self._change(HALF_OPEN, "letting one probe call through")
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self._probing = False
        if self.state != CLOSED:
            self._change(CLOSED, "the probe call succeeded")

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.state == HALF_OPEN or (
            self.state == CLOSED and self.threshold and self.failures >= self.threshold
        ):
            self.opened_at = self._now()
            self._change(
                OPEN,
                f"{self.failures} consecutive failures; failing calls at once for "
                f"{self.cooldown:g} s",
            )

    def abandoned(self) -> None:
        """A call that was let through ended without an outcome (cancelled)."""
        self._probing = False

    def _change(self, state: str, why: str) -> None:
        self.state = state
        level = logging.INFO if state == CLOSED else logging.WARNING
        log.log(
            level,
            "backend %s circuit %s: %s",
            self.name,
            state,
            why,
            extra={"event": "backend-circuit", "backend": self.name, "state": state},
        )


class Backend:
    """One backend (scheme, host, port): its session, cap and breaker."""

    def __init__(self, name: str, max_concurrent: int, breaker: CircuitBreaker) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.breaker = breaker
        self.outcomes: Counter[str] = Counter()  # ok, error, timeout, rejected
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use (it needs the running event loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_concurrent, limit_per_host=self.max_concurrent, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}, auto_decompress=True
            )
        return self._session

    async def post(
        self, url: str, body: Any, timeout: float, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """POST body as JSON; the answer, whatever its status.  Raises
        :class:`BackendTimeout` after timeout seconds (waiting for a free connection
        included), :class:`BackendError` when the backend cannot be reached or its circuit
        is open."""
        breaker = self.breaker
        if not breaker.allow():
            self.outcomes["rejected"] += 1
            raise BackendError(
                f"Backend {self.name} unavailable (circuit open)", {"reason": "circuit open"}
            )
        try:
            answer = await self._send(url, body, timeout, headers)
        except (BackendTimeout, BackendError) as exc:
            self.outcomes["timeout" if isinstance(exc, BackendTimeout) else "error"] += 1
            breaker.failure()
            raise
        except BaseException:  # cancelled: no outcome, but a probe must not stay pending
            breaker.abandoned()
            raise
        if answer.status >= 500:
            self.outcomes["error"] += 1
            breaker.failure()
        else:
            self.outcomes["ok"] += 1
            breaker.success()
        return answer

    async def _send(
        self, url: str, body: Any, timeout: float, headers: Mapping[str, str] | None
    ) -> Answer:
        sent = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with self.session().post(
                url,
                data=orjson.dumps(body),
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                return Answer(response.status, await response.read())
        except asyncio.TimeoutError:
            raise BackendTimeout(
                f"Backend {self.name} did not answer within {timeout:g} s", {"timeout": timeout}
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.info("backend %s call to %s failed: %s", self.name, url, exc or type(exc).__name__)
            raise BackendError(
                f"Backend {self.name} cannot be reached", {"reason": "unreachable"}
            ) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Backends:
    """Every backend this node calls, by scheme, host and port (``proxy.*`` settings)."""

    def __init__(
        self, max_concurrent: int = 64, breaker_failures: int = 5, breaker_seconds: float = 10.0
    ) -> None:
        self.max_concurrent = max_concurrent
        self.breaker_failures = breaker_failures
        self.breaker_seconds = breaker_seconds
        self._backends: dict[str, Backend] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> Backends:
        p = settings.proxy
        return cls(p.max_concurrent, p.breaker_failures, p.breaker_seconds)

    def backend(self, url: str) -> Backend:
        """The backend of url (made on first use)."""
        parts = urlsplit(url)
        name = f"{parts.scheme}://{parts.netloc}"
        found = self._backends.get(name)
        if found is None:
            breaker = CircuitBreaker(name, self.breaker_failures, self.breaker_seconds)
            found = self._backends[name] = Backend(name, self.max_concurrent, breaker)
        return found

    async def post(
        self, url: str, body: Any, timeout: float, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """POST body as JSON to url through its backend; see :meth:`Backend.post`."""
        return await self.backend(url).post(url, body, timeout, headers)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Backend name -> ``{"circuit": state, "calls": {outcome: count}}``."""
        return {
            name: {"circuit": b.breaker.state, "calls": dict(b.outcomes)}
            for name, b in sorted(self._backends.items())
        }

    async def close(self) -> None:
        """Close every session (at shutdown)."""
        for backend in self._backends.values():
            await backend.close()
