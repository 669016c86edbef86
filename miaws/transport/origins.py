"""The origin allow-list (``security.allowed_origins``), shared by both endpoints.

Browsers send ``Origin`` with every WebSocket upgrade but apply no same-origin policy to
WebSockets, so a page on any site can open one to miaws with the user's cookies.  The list
says which pages may.  An entry is an exact origin (``https://app.example.com``, port
included when not the default), a subdomain pattern (``https://*.example.com``) or ``*``.
Matching ignores case and a trailing ``/``.  An empty list allows every origin.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["origin_allowed"]


def _norm(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """True if a request with this ``Origin`` header may connect.

    No header (a non-browser client) is always allowed: the header protects browsers'
    users, and any other client can send whatever it likes.  The native endpoint calls this
    only for cross-origin requests (Tornado passes same-origin ones itself); the Socket.IO
    adapter calls it for every connection.
    """
    if not allowed or origin is None:
        return True
    origin = _norm(origin)
    for entry in allowed:
        pattern = _norm(entry)
        if pattern == "*" or pattern == origin:
            return True
        scheme, sep, rest = pattern.partition("://*.")
        if sep and origin.startswith(scheme + "://") and origin.endswith("." + rest):
            return True
    return False
