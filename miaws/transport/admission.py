"""The one way in (and out) for every transport: :class:`Admission`.

Both endpoints, the native one (:mod:`miaws.transport.native`) and the Socket.IO bridge
(:mod:`miaws.transport.sio`), run a connection through the same steps, in this order, and only
translate each answer into their own wire form::

    before the upgrade   admission.arrive(remote_ip, ...)     -> held address, or Refused(429 | 503)
                         admission.origin(origin, ...)        -> Refused(403) or None
                         admission.identify(headers, query)   -> Identity | None, or Refused(401)
    at accept            admission.refusal(remote_ip, ...)    -> Refused(1001 | 1013) or None
                         admission.admit(client, identity)    -> registered, welcomed, hooks told
    while connected      admission.over_queue_cap(q, size)    -> True: call slow_consumer(...)
                         admission.handler_failed(client)     -> traceback logged, close 1011
    at the end           admission.end(client, closed)        -> log line, metrics, hook
                         admission.leave(held)                -> the address's count back

A :class:`Refused` carries both answers, ``status`` (the HTTP status before the upgrade) and
``code`` (the WebSocket close code after it), and a ``reason`` safe to show the client: the
native endpoint answers 401/403/429/503 before the upgrade and closes with 1001/1013 after it;
the Socket.IO bridge answers 429/503 before Engine.IO sees a new connection and refuses the
others with a ``connect_error`` carrying the reason.

A new accept-time check goes here and nowhere else.  A check that needs no identity (the
connection rate, the per-address cap) is a step of :meth:`Admission.arrive`, before
:meth:`Admission.identify`, answered with an HTTP status (and ``Retry-After`` when waiting
helps) before the upgrade.  What it counts per connection is given back by
:meth:`Admission.leave` when the *transport connection* ends, admitted or not: a refused
upgrade has no client for :meth:`Admission.end`, and one Socket.IO connection may carry a
client per namespace.

Refusals by a limit are counted (``Stats.refused``, ``miaws_connections_refused_total``) and
logged at most once per :data:`LOG_EVERY` seconds per limit, with the count since the last
line: a flood of refused connections must not become a flood of log lines.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from miaws.core.connlimits import AddressCounts, ConnectionRate
from miaws.core.errors import AuthError, BackendError, BackendTimeout, CloseCode, MiawsError
from miaws.core.model import Client, Closed
from miaws.transport.auth import Identity
from miaws.transport.origins import origin_allowed

if TYPE_CHECKING:
    import tornado.web

    from miaws.service import Service

__all__ = ["Admission", "Refused", "refuse_request", "SLOW_CONSUMER", "INTERNAL_ERROR", "LOG_EVERY"]

log = logging.getLogger("miaws")

SLOW_CONSUMER = Closed(CloseCode.TRY_AGAIN_LATER, "slow consumer: too much data queued")
INTERNAL_ERROR = Closed(CloseCode.INTERNAL_ERROR, "internal error")
LOG_EVERY = 10.0  # seconds between two lines about refusals by one limit, at least


class Refused(MiawsError):
    """An admission step said no: ``status`` before the upgrade (HTTP), ``code`` after it
    (WebSocket close), ``reason`` safe to show the client (the exception's text),
    ``retry_after`` in seconds when trying again later may help (a 503's ``Retry-After``)."""

    def __init__(
        self, status: int, code: int, reason: str, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.retry_after = retry_after

    def http_headers(self) -> dict[str, str]:
        """The headers of this refusal as an HTTP response: ``Retry-After`` in whole
        seconds (at least 1) when there is one."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def refuse_request(
    handler: tornado.web.RequestHandler,
    refused: Refused,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer a request refused before the upgrade (either transport): the status, the
    refusal's headers (``Retry-After``) and headers, the reason as the body, and the
    connection closed once it is sent (``Connection: close``), on Tornado's HTTP/1 path as on
    the short way in (:mod:`miaws.transport.upgrade`, which closes a refused upgrade itself)."""
    handler.set_status(refused.status)
    for name, value in {**refused.http_headers(), **(headers or {})}.items():
        handler.set_header(name, value)
    handler.set_header("Connection", "close")
    flushed = handler.finish(f"{refused.reason}\n")
    close = getattr(handler.request.connection, "close", None)  # Tornado's HTTP1Connection
    if close is not None:
        flushed.add_done_callback(lambda _: close())


class RefusalLog:
    """One warning per limit per :data:`LOG_EVERY` seconds: the first refusal at once, the
    ones after it counted and told in the next line."""

    __slots__ = ("unlogged", "logged_at", "now")

    def __init__(self, now: Any = time.monotonic) -> None:
        self.unlogged: Counter[str] = Counter()  # limit -> refusals since its last line
        self.logged_at: dict[str, float] = {}
        self.now = now

    def refused(self, limit: str, what: str, answer: str, remote_ip: str) -> None:
        """Count one refusal by limit (what: the limit and its figure; answer: what the
        client got), logging it when a line is due."""
        self.unlogged[limit] += 1
        now = self.now()
        last = self.logged_at.get(limit)
        if last is not None and now - last < LOG_EVERY:
            return
        count = self.unlogged.pop(limit)
        since = f"in the last {now - last:.0f} s" if last is not None else "so far"
        log.warning(
            "connection refused remote=%s: %s reached, answered %s; %d refused %s (at most "
            "one such line per %.0f s)",
            remote_ip,
            what,
            answer,
            count,
            since,
            LOG_EVERY,
            extra={"event": "connection_refused", "limit": limit, "count": count},
        )
        self.logged_at[limit] = now


class Admission:
    """The admission path of one :class:`~miaws.service.Service` (see the module docstring)."""

    __slots__ = ("service", "rate", "addresses", "refusals")

    def __init__(self, service: Service) -> None:
        self.service = service
        self.rate = ConnectionRate()  # limits.connection_rate, one bucket for the node
        self.addresses = AddressCounts()  # limits.max_connections_per_ip
        self.refusals = RefusalLog()

    def _refuse(self, limit: str, what: str, answer: str, remote_ip: str, transport: str) -> None:
        self.service.stats.refused[transport, limit] += 1
        self.refusals.refused(limit, what, answer, remote_ip)

    # ------------------------------------------------------------ before the upgrade
    def arrive(self, remote_ip: str, *, transport: str = "ws") -> str | None:
        """A new connection, before anything else is looked at (its token included):
        ``limits.max_connections_per_ip`` (:class:`Refused` 429), then
        ``limits.connection_rate`` (:class:`Refused` 503 with ``retry_after``).

        Returns the address whose count the connection now holds, None when none is counted
        (the cap is off); give it to :meth:`leave` when the connection ends, however it
        ends.  A refused connection holds nothing."""
        limits = self.service.settings.limits
        cap = limits.max_connections_per_ip
        if cap and not self.addresses.take(remote_ip, cap):
            self._refuse(
                "max_connections_per_ip",
                f"limits.max_connections_per_ip ({cap})",
                "HTTP 429",
                remote_ip,
                transport,
            )
            raise Refused(429, CloseCode.TRY_AGAIN_LATER, "too many connections from your address")
        rate = limits.connection_rate
        if rate > 0:
            wait = self.rate.take(rate, limits.connection_burst)
            if wait:
                if cap:
                    self.addresses.release(remote_ip)
                self._refuse(
                    "connection_rate",
                    f"limits.connection_rate ({rate:g}/s)",
                    "HTTP 503",
                    remote_ip,
                    transport,
                )
                raise Refused(
                    503,
                    CloseCode.TRY_AGAIN_LATER,
                    "too many new connections: try again later",
                    retry_after=max(1, math.ceil(wait)),
                )
        return remote_ip if cap else None

    def origin(self, origin: str | None, *, remote_ip: str, endpoint: str = "upgrade") -> None:
        """``security.allowed_origins``: raise :class:`Refused` (403) for a foreign origin.

        The caller passes only cross-origin requests (the native endpoint: Tornado decides
        same-origin; Socket.IO: the bridge compares the host); no ``Origin`` is allowed."""
        if not origin_allowed(origin, self.service.settings.security.allowed_origins):
            log.info("%s refused (403) remote=%s: origin %r", endpoint, remote_ip, origin)
            raise Refused(403, CloseCode.POLICY_VIOLATION, "origin not allowed")

    def identify(
        self,
        headers: Mapping[str, str],
        query: Mapping[str, Any],
        *,
        remote_ip: str,
        extra: str | None = None,
        late_allowed: bool = True,
        endpoint: str = "upgrade",
    ) -> Identity | None | Awaitable[Identity]:
        """Who the client is (``auth.*``); None when no token came and a late one may follow;
        an awaitable of it when a backend decides (``auth.mode: proxy``).

        Raises :class:`Refused` (401) for a missing, bad or expired token, or for none at all
        when ``late_allowed`` is False (a transport without late tokens, Socket.IO); the
        awaitable raises it too (401 or 403 as the backend said, 503 when it fails)."""
        auth = self.service.auth
        try:
            identity = auth.identify(headers, query, extra=extra)
        except AuthError as exc:
            log.info("%s refused (401) remote=%s: %s", endpoint, remote_ip, exc)
            raise Refused(401, CloseCode.POLICY_VIOLATION, str(exc)) from None
        if identity is not None and not isinstance(identity, Identity):
            assert inspect.isawaitable(identity)
            return self._identify_later(identity, remote_ip, endpoint)
        if identity is None and not late_allowed:
            raise Refused(401, CloseCode.POLICY_VIOLATION, "authentication required: no token")
        return identity

    @staticmethod
    async def _identify_later(
        pending: Awaitable[Identity], remote_ip: str, endpoint: str
    ) -> Identity:
        """The backend's answer (``auth.mode: proxy``), refusals turned into :class:`Refused`."""
        try:
            return await pending
        except AuthError as exc:
            log.info("%s refused (%d) remote=%s: %s", endpoint, exc.status, remote_ip, exc)
            raise Refused(exc.status, CloseCode.POLICY_VIOLATION, str(exc)) from None
        except (BackendError, BackendTimeout) as exc:
            log.warning(
                "%s refused (503) remote=%s: connect backend failed: %s",
                endpoint,
                remote_ip,
                exc.message,
            )
            raise Refused(
                503,
                CloseCode.TRY_AGAIN_LATER,
                "authentication backend unavailable: try again later",
                retry_after=1,
            ) from None

    def identify_late(self, message: str | bytes, *, remote_ip: str) -> Identity:
        """The first frame of a connection that came without a token (``auth.late_timeout``):
        its identity, or :class:`Refused` (close 1008)."""
        try:
            return self.service.auth.identify_late(message)
        except AuthError as exc:
            raise self.late_refused(str(exc), remote_ip=remote_ip) from None

    def late_refused(self, reason: str, *, remote_ip: str) -> Refused:
        """The refusal of a late token (bad, or none in time), logged: close 1008."""
        log.info("connection refused (1008) remote=%s: %s", remote_ip, reason)
        return Refused(401, CloseCode.POLICY_VIOLATION, reason[:120])

    # ------------------------------------------------------------ at accept
    def refusal(
        self, remote_ip: str, *, transport: str = "ws", connection: str | None = None
    ) -> Refused | None:
        """The accept-time checks: shutting down (1001), ``limits.max_connections`` (1013).

        connection: the :attr:`~miaws.core.model.Client.connection` the new client will be
        on when it may have clients already (a Socket.IO client's Engine.IO session): one
        already counted is not refused by the cap."""
        service = self.service
        if service.shutting_down:
            service.stats.refused[transport, "shutting_down"] += 1
            return Refused(503, CloseCode.GOING_AWAY, "server shutting down")
        if service.at_capacity(connection):
            self._refuse(
                "max_connections",
                f"limits.max_connections ({service.max_connections()})",
                "close 1013" if transport == "ws" else "connect_error",
                remote_ip,
                transport,
            )
            return Refused(503, CloseCode.TRY_AGAIN_LATER, "server full: try again later")
        return None

    def admit(
        self, client: Client, identity: Identity, headers: Mapping[str, str] | None = None
    ) -> None:
        """Give client its identity and the upgrade headers backends are sent (by lower-case
        name; ``headers`` must answer lower-case names), register it, send its ``welcome``,
        tell the plugins."""
        identity.apply(client)
        names = self.service.forward_headers
        if names and headers is not None:
            client.headers = {n: v for n in names if (v := headers.get(n)) is not None}
        self.service.connect(client)

    # ------------------------------------------------------------ while connected
    def over_queue_cap(self, queued: int, size: int) -> bool:
        """``limits.max_queued_bytes``: True when a message of size bytes would take what
        waits for a client (queued bytes) over the cap.  An empty queue takes any message,
        so one large message never trips it; 0 is no cap."""
        cap = self.service.settings.limits.max_queued_bytes
        return bool(cap and queued and queued + size > cap)

    def slow_consumer(self, client: Client, queued: int, *, about: bool = False) -> None:
        """The client stopped reading: log it, and the caller closes it with
        :data:`SLOW_CONSUMER` (1013).  ``about``: queued is an estimate."""
        log.warning(
            "slow consumer clientId=%s: %s%d bytes queued, limits.max_queued_bytes is %d; "
            "closing with 1013",
            client.client_id,
            "about " if about else "",
            queued,
            self.service.settings.limits.max_queued_bytes,
        )

    def handler_failed(self, client: Client | None) -> None:
        """A handler raised (call from an ``except`` block): log the traceback, close 1011."""
        log.exception(
            "handler failed for clientId=%s; closing with 1011",
            client.client_id if client else "?",
        )
        if client is not None:
            client.close(*INTERNAL_ERROR[:2])

    # ------------------------------------------------------------ at the end
    def end(self, client: Client, closed: Closed) -> None:
        """An admitted client is gone: the disconnect log line, the metrics, the hook."""
        self.service.disconnect(client, closed)

    def leave(self, held: str | None) -> None:
        """A transport connection that :meth:`arrive` let in has ended (admitted or not):
        give back what it held (call once, with what ``arrive`` returned)."""
        if held is not None:
            self.addresses.release(held)
