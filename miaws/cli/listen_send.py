"""``miaws listen`` and ``miaws send``: the Python client from the command line.

``listen`` joins rooms and prints every message as one JSON line as it comes, reconnecting
and recovering like any :class:`~miaws.client.MiawsClient`; ``send`` sends one message and
prints its reply.  Exit codes: 0 done, 1 no connection, an ``error`` reply, or fewer than
``--count`` messages before ``--timeout``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from miaws.client import ConnectionLost, MiawsClient, UpgradeRefused
from miaws.core.model import encode_json

__all__ = ["listen", "send_one"]


def _err(text: str) -> None:
    print(f"miaws: {text}", file=sys.stderr, flush=True)


async def _connect(url: str, timeout: float, **kw: Any) -> MiawsClient | None:
    """A connected client, or None after one line saying why not (an upgrade refused
    for good is said at once; a 429 or 5xx one as the last attempt of the timeout)."""
    client = MiawsClient(url, open_timeout=timeout, **kw)
    try:
        await client.connect()
    except UpgradeRefused as exc:
        _err(str(exc))
        return None
    except (asyncio.TimeoutError, ConnectionLost):
        await client.close()
        last = f": the last attempt: {client.last_refusal}" if client.last_refusal else ""
        _err(f"cannot connect to {url} within {timeout:g}s{last}")
        return None
    return client


async def _join_all(client: MiawsClient, rooms: list[str], timeout: float) -> bool:
    for room in rooms:
        reply = await client.join(room, timeout)
        if reply.get("type") == "error":
            _err(f"cannot join {room}: {reply.get('message')}")
            return False
    return True


async def listen(url: str, rooms: list[str], count: int | None, timeout: float | None) -> int:
    """Print messages until count of them arrived or timeout seconds passed."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def lost(room: str, reply: dict[str, Any]) -> None:
        _err(f"room {room}: missed messages could not be recovered ({encode_json(reply)})")

    client = await _connect(url, min(timeout or 10.0, 10.0), on_recovery_failed=lost)
    if client is None:
        return 1
    try:
        try:
            if not await _join_all(client, rooms, 10.0):
                return 1
        except ConnectionLost as exc:
            _err(str(exc))
            return 1
        seen = 0
        while count is None or seen < count:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = await client.recv(left)
            except asyncio.TimeoutError:
                break
            except UpgradeRefused as exc:  # a reconnect refused for good (a revoked token)
                _err(str(exc))
                return 1
            print(encode_json(message), flush=True)
            seen += 1
        if count is not None and seen < count:
            _err(f"got {seen} of {count} messages before the timeout ({timeout} s)")
            return 1
        return 0
    finally:
        await client.close()


async def send_one(
    url: str, text: str, rooms: list[str], timeout: float, no_reply: bool = False
) -> int:
    """Send one JSON message (after joining rooms) and print the reply to it.

    With no_reply (for types such as ``broadcast`` that answer only on error), a ``ping``
    round trip follows, and only an error reply that came before the pong is printed."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        _err(f"the message is not valid JSON ({exc})")
        return 2
    if not isinstance(message, dict):
        _err("the message must be a JSON object")
        return 2
    client = await _connect(url, timeout, give_up=lambda status: True)  # one shot: say any
    if client is None:
        return 1
    try:
        try:
            if not await _join_all(client, rooms, timeout):
                return 1
            if no_reply:
                sent = await client.start_request(message, timeout)
                await client.request({"type": "ping"}, timeout)
                if not sent.done():
                    return 0
                reply = sent.result()
            else:
                reply = await client.request(message, timeout)
        except asyncio.TimeoutError:
            _err(f"no reply within {timeout:g}s (some types, like broadcast, send none)")
            return 1
        except ConnectionLost as exc:
            _err(str(exc))
            return 1
        print(encode_json(reply), flush=True)
        return 1 if reply.get("type") == "error" else 0
    finally:
        await client.close()
