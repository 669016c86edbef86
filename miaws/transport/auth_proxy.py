"""``auth.mode: proxy``: a backend decides who connects.

Before the upgrade (both transports), the backend at ``auth.proxy_url`` gets a POST::

    {"headers": {"cookie": "...", "authorization": "..."},   # auth.proxy_headers present
     "query": {"token": "..."},                                # the upgrade's query, first values
     "token": "..."}                                   # the Socket.IO auth payload token

It answers 2xx ``{"user": NAME|null, "rooms": [ROOM, ...]|null, "info": ANY}`` (all
optional; ``rooms`` null or absent: any room) to accept, or 401/403 to refuse (the client
gets that status, with the JSON answer's ``reason`` if it gives one).  Any other status, an
unreadable answer, a timeout or an unreachable backend refuse with 503 (the client may try
again later): a backend fault is not the client's.

With ``auth.proxy_cache_seconds`` an answer (acceptance or refusal) is reused for the same
headers, query and token for that long.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from miaws.core.errors import AuthError, BackendError, MessageError, clip
from miaws.integration.backend import Answer, Backends

__all__ = ["ConnectProxy", "CACHE_MAX"]

CACHE_MAX = 10_000
"""Answers kept at most (the oldest go first)."""


class ConnectProxy:
    """Asks ``auth.proxy_url`` about each connection; see the module docstring."""

    def __init__(
        self,
        backends: Backends,
        url: str,
        headers: list[str],
        timeout: float,
        cache_seconds: float = 0.0,
    ) -> None:
        self.backends = backends
        self.url = url
        self.headers = [h.lower() for h in headers]
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, Any]] = {}  # key -> (expiry, answer or AuthError)

    def request(
        self, headers: Mapping[str, str], query: Mapping[str, Any], token: str | None
    ) -> dict[str, Any]:
        """What the backend is sent for these upgrade headers and query."""
        sent = {}
        for name in self.headers:
            value = headers.get(name)
            if value:
                sent[name] = value
        body: dict[str, Any] = {
            "headers": sent,
            "query": {k: v for k, v in ((k, _first(v)) for k, v in query.items()) if v is not None},
        }
        if token is not None:
            body["token"] = token
        return body

    async def identify(
        self, headers: Mapping[str, str], query: Mapping[str, Any], token: str | None
    ) -> tuple[str | None, frozenset[str] | None, Any]:
        """(user, rooms, info) the backend answered; :class:`AuthError` (status 401 or 403)
        when it refuses; :class:`BackendError` / ``BackendTimeout`` when it fails."""
        body = self.request(headers, query, token)
        key = orjson.dumps(body, option=orjson.OPT_SORT_KEYS) if self.cache_seconds else b""
        if key:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return _result(cached[1])
        answer = await self.backends.post(self.url, body, self.timeout)
        result = _read(answer)
        if key:
            if len(self._cache) >= CACHE_MAX:
                self._purge()
            self._cache[key] = (time.monotonic() + self.cache_seconds, result)
        return _result(result)

    def _purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
            del self._cache[key]
        while len(self._cache) >= CACHE_MAX:
            del self._cache[next(iter(self._cache))]


def _result(value: Any) -> tuple[str | None, frozenset[str] | None, Any]:
    if isinstance(value, AuthError):
        raise AuthError(str(value), value.status)
    result: tuple[str | None, frozenset[str] | None, Any] = value
    return result


def _read(answer: Answer) -> Any:
    """(user, rooms, info), or the AuthError of a refusal; BackendError when unreadable."""
    if answer.status in (401, 403):
        reason = None
        try:
            data = answer.json()
            reason = data.get("reason") if isinstance(data, dict) else None
        except MessageError:
            pass
        text = clip(reason, 120) if isinstance(reason, str) and reason else "refused by backend"
        return AuthError(f"authentication failed: {text}", answer.status)
    if not answer.ok:
        raise BackendError(f"Connect backend answered {answer.status}", {"status": answer.status})
    data = answer.json()
    if data is None:
        data = {}
    user, rooms = (data.get("user"), data.get("rooms")) if isinstance(data, dict) else (0, 0)
    if (
        not isinstance(data, dict)
        or not (user is None or isinstance(user, str))
        or not (
            rooms is None or (isinstance(rooms, list) and all(isinstance(r, str) for r in rooms))
        )
    ):
        raise BackendError(
            "Connect backend answer is not {user, rooms, info}", {"reason": "unreadable answer"}
        )
    return (user, None if rooms is None else frozenset(rooms), data.get("info"))


def _first(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
