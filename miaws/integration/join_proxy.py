"""``rooms.join_proxy_url``: a backend allows or refuses each join.

Before a client joins a room it is not in, the backend gets a POST of the client's identity
(:meth:`miaws.core.model.Client.identity`) and the room::

    {"room": "order:42", "namespace": "/", "clientId": "...", "user": "alice",
     "info": {...}, "transport": "ws", "rooms": ["lobby"]}

A 2xx answer allows the join; 403 refuses it (error ``forbidden``, with the answer's
``reason`` when it gives one as JSON); anything else, a timeout or an unreachable backend is
error ``backend-error`` / ``backend-timeout``, and the client is not joined.
"""

from __future__ import annotations

from typing import Any

from miaws.core.errors import BackendError, Forbidden, MessageError, clip
from miaws.core.model import Client
from miaws.integration.backend import Answer, Backends

__all__ = ["JoinProxy"]


class JoinProxy:
    """A :data:`~miaws.core.context.JoinGate` asking a backend over HTTP."""

    __slots__ = ("backends", "url", "timeout")

    def __init__(self, backends: Backends, url: str, timeout: float) -> None:
        self.backends = backends
        self.url = url
        self.timeout = timeout

    async def __call__(self, client: Client, room: str) -> None:
        body = {"room": room, "namespace": client.namespace, **client.identity()}
        answer = await self.backends.post(self.url, body, self.timeout)
        if answer.ok:
            return
        if answer.status == 403:
            raise Forbidden(
                _reason(answer.body) or f"Not allowed to join room {room}", {"room": room}
            )
        raise BackendError(
            f"Join backend answered {answer.status}", {"status": answer.status, "room": room}
        )


def _reason(body: bytes) -> str | None:
    """The ``reason`` of a JSON refusal, if it gives one."""
    try:
        data: Any = Answer(403, body).json()
    except MessageError:
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return clip(reason) if isinstance(reason, str) and reason else None
