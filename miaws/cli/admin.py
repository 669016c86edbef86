"""``miaws clients`` and ``miaws rooms``: a running server's registry as a table.

They read ``/api/clients`` and ``/api/rooms`` over HTTP (standard library only), sending
``Authorization: Bearer <key>`` when a key is given (``--api-key`` or ``MIAWS_API_KEY``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from miaws.core.errors import MiawsError

__all__ = [
    "AdminError",
    "base_url",
    "fetch",
    "table",
    "clients_table",
    "node_line",
    "rooms_table",
]


class AdminError(MiawsError):
    """The server could not be asked; the text is one line for the operator."""


def base_url(url: str) -> str:
    """``http://host:port`` from a server URL; ``ws://``/``wss://`` URLs (as for ``miaws
    health``) are accepted too, their path is dropped."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise AdminError(f"{url!r} is not an http:// or ws:// server URL")
    return f"{scheme}://{parts.netloc}"


def fetch(url: str, path: str, api_key: str | None, timeout: float = 5.0) -> Any:
    """GET base_url(url) + path as JSON; AdminError on any failure."""
    request = urllib.request.Request(base_url(url) + path)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        hint = {401: " (give --api-key or set MIAWS_API_KEY)", 403: " (wrong API key)"}
        raise AdminError(f"{request.full_url}: HTTP {exc.code}{hint.get(exc.code, '')}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"{request.full_url}: cannot connect ({reason})") from None
    except ValueError:
        raise AdminError(f"{request.full_url}: the answer is not JSON") from None


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, with a header line."""
    text = [[str(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in text
    )


def clients_table(clients: list[dict[str, Any]]) -> str:
    headers = ("CLIENT ID", "TRANSPORT", "REMOTE", "CONNECTED AT", "ROOMS", "IN", "OUT", "USER")
    rows = [
        (
            c.get("clientId", ""),
            c.get("transport", ""),
            c.get("remoteAddress", ""),
            c.get("connectedAt", ""),
            ",".join(c.get("rooms", [])) or "-",
            c.get("messagesIn", ""),
            c.get("messagesOut", ""),
            c.get("user") or "-",
        )
        for c in clients
    ]
    return f"{table(headers, rows)}\n{len(clients)} client(s)"


def node_line(health: dict[str, Any]) -> str | None:
    """Which node answered, out of how many (``/health``'s cluster view), or None on one
    process.  Behind one address (a load balancer, or ``--workers`` on one port) each
    request reaches one node, so the table lists that node's clients only."""
    cluster = health.get("cluster")
    if not isinstance(cluster, dict) or "nodes" not in cluster:
        return None
    per_node = cluster.get("perNode", {})
    counts = ", ".join(f"{node} {c.get('connections', 0)}" for node, c in per_node.items())
    return (
        f"node {cluster.get('node')}, one of {cluster['nodes']} node(s) with "
        f"{cluster.get('connections', 0)} connection(s) in all ({counts})"
    )


def rooms_table(rooms: dict[str, int]) -> str:
    rows = sorted(rooms.items())
    return f"{table(('ROOM', 'MEMBERS'), rows)}\n{len(rooms)} room(s)"
