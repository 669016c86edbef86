"""``Idempotency-Key`` for ``POST /api/publish``: a repeat delivers nothing new.

The first request with a key claims it in the broker (:meth:`Broker.store` with
``if_absent``: Redis ``SET NX PX`` across nodes, a dict in one process) for
``api.idempotency_window`` seconds, is delivered, and its answer replaces the claim.  A
repeat within the window gets that answer again (header ``Idempotent-Replayed: true``);
one that comes while the first is still being delivered gets 409 (``Retry-After: 1``); one
with the same key but another body gets 422.  When the broker cannot be reached the request
is refused with 503 and nothing is delivered: delivering without the check could deliver
twice.  If the answer cannot be kept after the delivery (the broker went away in between),
the claim stays: repeats get 409 until the window ends, never a second delivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from miaws.broker import Broker
from miaws.core.errors import BrokerUnavailable, MiawsError

__all__ = ["IDEMPOTENCY_HEADER", "IdempotencyKeys", "Refusal", "valid_key"]

log = logging.getLogger("miaws")

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY = 255


class Refusal(MiawsError):
    """The request is answered with ``status`` and ``reason`` instead of being delivered."""

    def __init__(self, status: int, reason: str, retry_after: int = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def valid_key(key: str) -> bool:
    """1 to 255 visible ASCII characters."""
    return 0 < len(key) <= MAX_KEY and all(33 <= ord(c) <= 126 for c in key)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyKeys:
    """The keys of one publish API, kept in the broker for ``window`` seconds."""

    def __init__(self, broker: Broker, window: float) -> None:
        self.broker = broker
        self.window = window

    async def claim(self, key: str, body: bytes) -> dict[str, Any] | None:
        """None: key is new and now claimed (deliver, then :meth:`answered`); else the first
        request's answer.  :class:`Refusal` for a bad key, a request in progress, another
        body, or an unreachable broker."""
        if not valid_key(key):
            raise Refusal(400, f"{IDEMPOTENCY_HEADER} must be 1-{MAX_KEY} visible ASCII characters")
        try:
            found = await self.broker.store(f"idem:{key}", b"", self.window, if_absent=True)
        except BrokerUnavailable as exc:
            log.warning("publish refused (503): idempotency key not checked: %s", exc)
            raise Refusal(503, f"idempotency keys unavailable: {exc}", retry_after=1) from None
        if found is None:
            return None
        if not found:
            raise Refusal(409, f"a request with this {IDEMPOTENCY_HEADER} is in progress", 1)
        record = json.loads(found)
        if record["body"] != _digest(body):
            raise Refusal(422, f"this {IDEMPOTENCY_HEADER} was used with another body")
        answer: dict[str, Any] = record["answer"]
        return answer

    async def answered(self, key: str, body: bytes, answer: dict[str, Any]) -> None:
        """Keep the answer for repeats (the claim stays if the broker is gone meanwhile)."""
        record = json.dumps({"body": _digest(body), "answer": answer}).encode()
        try:
            await self.broker.store(f"idem:{key}", record, self.window)
        except BrokerUnavailable as exc:
            log.warning(
                "publish delivered but its answer not kept for %s %r: %s; repeats get 409 "
                "until the window ends",
                IDEMPOTENCY_HEADER,
                key,
                exc,
            )
