"""One line for a WebSocket upgrade the server answered with an HTTP status instead of 101,
shared by the tornado-based ``health``/``check`` and the websockets-based ``listen``/``send``
(so it imports neither)."""

from __future__ import annotations

__all__ = ["refused_text", "worth_retrying"]


def refused_text(url: str, status: int, reason: str, body: bytes | bytearray | None) -> str:
    """``URL refused the upgrade: HTTP 401 Unauthorized (authentication required: no token)``:
    the body is added when it is one short line of text (miaws's own refusals), not HTML."""
    text = f"{url} refused the upgrade: HTTP {status} {reason}".rstrip()
    try:
        detail = bytes(body or b"").decode().strip()
    except UnicodeDecodeError:
        detail = ""
    if detail and "\n" not in detail and len(detail) <= 200 and not detail.startswith("<"):
        text += f" ({detail})"
    return text


def worth_retrying(status: int) -> bool:
    """429 (a connection limit) and 5xx (e.g. 503 while draining) may pass on a later try;
    any other refusal (401, 403, 404, ...) will not change by retrying."""
    return status == 429 or status >= 500
