"""``miaws listen`` and ``miaws send``: the Python client from the command line.

``listen`` joins rooms and prints every message as one JSON line as it comes, reconnecting
and recovering like any :class:`~miaws.client.MiawsClient`; ``send`` sends one message and
prints its reply.  Exit codes: 0 done, 1 no connection, an ``error`` reply, or fewer than
``--count`` messages before ``--timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import InvalidStatus

from miaws.cli.refusal import refused_text, worth_retrying
from miaws.client import ConnectionLost, MiawsClient
from miaws.core.model import encode_json

__all__ = ["listen", "send_one"]


def _err(text: str) -> None:
    print(f"miaws: {text}", file=sys.stderr, flush=True)


class _Refusals(logging.Filter):
    """Sees the upgrades the server refuses with an HTTP status.  MiawsClient retries every
    failed attempt and reports it only in a debug record that carries the exception, so
    this filter on its logger reads that (and passes on what would have shown anyway)."""

    def __init__(self, url: str, give_up: Callable[[int], bool]) -> None:
        super().__init__()
        self.url = url
        self.give_up = give_up
        self.last: str | None = None  # the latest refusal, as one line
        self.final = asyncio.Event()  # set on a refusal give_up(status) says not to retry
        self._logger = logging.getLogger("miaws.client")
        self._level = self._logger.level
        self._shown = self._logger.getEffectiveLevel()

    def __enter__(self) -> _Refusals:
        self._logger.addFilter(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeFilter(self)
        self._logger.setLevel(self._level)

    def filter(self, record: logging.LogRecord) -> bool:
        for arg in record.args if isinstance(record.args, tuple) else ():
            if isinstance(arg, InvalidStatus):
                r = arg.response
                self.last = refused_text(self.url, r.status_code, r.reason_phrase, r.body)
                if self.give_up(r.status_code):
                    self.final.set()
        return record.levelno >= self._shown

    async def until_final(self) -> str:
        await self.final.wait()
        assert self.last is not None
        return self.last


async def _first(aw: Any, refusals: _Refusals) -> tuple[bool, Any]:
    """(True, aw's result) or (False, the refusal line) when a final refusal comes first;
    aw's exceptions propagate."""
    main = asyncio.ensure_future(aw)
    refused = asyncio.ensure_future(refusals.until_final())
    try:
        await asyncio.wait({main, refused}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refused.cancel()
    if main.done():
        return True, main.result()
    main.cancel()
    await asyncio.gather(main, return_exceptions=True)
    return False, refused.result()


async def _connect(url: str, timeout: float, refusals: _Refusals, **kw: Any) -> MiawsClient | None:
    client = MiawsClient(url, open_timeout=timeout, **kw)
    try:
        connected, value = await _first(client.connect(), refusals)
    except (asyncio.TimeoutError, ConnectionLost):
        await client.close()
        last = f": the last attempt: {refusals.last}" if refusals.last else ""
        _err(f"cannot connect to {url} within {timeout:g}s{last}")
        return None
    if not connected:
        await client.close()
        _err(value)
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

    with _Refusals(url, lambda status: not worth_retrying(status)) as refusals:
        return await _listen(url, rooms, count, timeout, deadline, lost, refusals)


async def _listen(
    url: str,
    rooms: list[str],
    count: int | None,
    timeout: float | None,
    deadline: float | None,
    lost: Callable[[str, dict[str, Any]], None],
    refusals: _Refusals,
) -> int:
    client = await _connect(url, min(timeout or 10.0, 10.0), refusals, on_recovery_failed=lost)
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
                got, message = await _first(client.recv(left), refusals)
            except asyncio.TimeoutError:
                break
            if not got:  # a reconnect refused for good (a revoked token, say)
                _err(message)
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
    with _Refusals(url, lambda status: True) as refusals:  # one shot: say any refusal
        client = await _connect(url, timeout, refusals)
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
