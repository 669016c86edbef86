"""A Python asyncio client for miaws that survives lost connections.

Built on the ``websockets`` library.  :class:`MiawsClient` connects, matches replies to
requests by ``id``, yields every other message (``async for msg in client``), and when the
connection drops it reconnects with exponential backoff and jitter and re-joins its rooms
with ``since`` set to the last position it saw, so the server replays what it missed.
Room messages are deduplicated by ``(room, epoch, seq)``; when the server can no longer fill
the gap, ``on_recovery_failed(room, reply)`` is called and tracking restarts from the
position the server reported.

Example::

    async with MiawsClient("ws://127.0.0.1:3001/ws") as client:
        await client.join("prices")
        async for message in client:
            print(message)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.uri import parse_uri

from miaws.core.errors import MiawsError, close_meaning, refusal_is_final, refused_upgrade_text

__all__ = ["MiawsClient", "ConnectionLost", "UpgradeRefused", "backoff_delay"]

log = logging.getLogger("miaws.client")

RecoveryFailed = Callable[[str, dict[str, Any]], Any]
"""``on_recovery_failed(room, reply)``: reply is the ``room-joined`` with ``recovered: false``
(and the room's current ``epoch`` and ``seq`` when it keeps history).  May be async."""


class ConnectionLost(MiawsError, ConnectionError):
    """The connection dropped before the request's reply arrived (it may or may not have
    been handled); or the client is closed."""


class UpgradeRefused(ConnectionLost):
    """The server answered the WebSocket upgrade with an HTTP status instead of 101: a
    limit (429), a draining node (503), or a refusal that retrying will not change (401,
    403, 404).  ``str()`` is one line with the status, its reason and miaws's own text."""

    def __init__(self, url: str, status: int, reason: str, body: bytes) -> None:
        self.url, self.status, self.reason = url, status, reason
        super().__init__(refused_upgrade_text(url, status, reason, body))


def backoff_delay(
    attempt: int, initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0, 1, 2, ...): exponential, capped at
    ``maximum``, with "equal jitter" (half the delay fixed, half random) so that many
    clients cut at once do not all come back at the same instant."""
    capped: float = min(maximum, initial * 2.0 ** min(attempt, 32))
    return capped / 2 + capped / 2 * rand()


class MiawsClient:
    """One logical connection to a miaws server; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        on_recovery_failed: RecoveryFailed | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        open_timeout: float = 10.0,
        give_up: Callable[[int], bool] = refusal_is_final,
    ) -> None:
        parse_uri(url)  # InvalidURI now rather than a reconnect loop that cannot succeed
        self.url = url
        self.on_recovery_failed = on_recovery_failed
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.give_up = give_up  # an upgrade refused with a status it says True of ends it
        self.last_refusal: UpgradeRefused | None = None  # the latest refused upgrade
        self.refused: UpgradeRefused | None = None  # the refusal that ended the client
        self.client_id: str | None = None
        self.connects = 0  # successful connections so far
        self.duplicates = 0  # room messages dropped as already seen
        self.positions: dict[str, tuple[str, int]] = {}  # room -> last (epoch, seq) seen
        self.last_close: tuple[int, str] | None = None  # (code, reason) the server last closed with
        self._rooms: dict[str, None] = {}  # joined rooms, in join order
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._internal_ids: set[str] = set()
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> MiawsClient:
        """Start the connection loop and wait (up to ``open_timeout``) for the first welcome.
        If none comes in time, the client is closed and TimeoutError raised; an upgrade
        refused with a status ``give_up`` says True of (by default 401, 403, 404, ...: not
        429 or 5xx) raises :class:`UpgradeRefused` at once.  After the first connection,
        losses are retried (until :meth:`close`, or such a refusal: then requests and
        :meth:`recv` raise it and iteration ends)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        try:
            await self._wait_connected(self.open_timeout)
        except (asyncio.TimeoutError, UpgradeRefused):
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop reconnecting, close the connection with 1000 (normal closure), end
        iteration."""
        self._closed = True
        ws = self._ws
        if ws is not None:
            # Before the task is cancelled: cancelling it inside ``async with connect()``
            # would close with 1011 (internal error), which servers count as a failure.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), self.open_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_pending()
        self._queue.put_nowait(None)

    async def __aenter__(self) -> MiawsClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connection(self) -> ClientConnection | None:
        """The current ``websockets`` connection, or None while reconnecting."""
        return self._ws

    @property
    def rooms(self) -> list[str]:
        """Rooms this client has joined (and re-joins after a reconnect)."""
        return list(self._rooms)

    # ------------------------------------------------------------------ sending
    async def send(self, message: dict[str, Any], timeout: float | None = None) -> None:
        """Send one message (waiting for a connection); ConnectionLost if it drops."""
        ws = await self._wait_connected(timeout or self.open_timeout)
        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed:
            raise ConnectionLost("connection lost while sending") from None

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send message with an ``id`` (one is added if missing) and return the reply with
        that id (which may be an ``error``).  TimeoutError or ConnectionLost otherwise."""
        future = await self.start_request(message, timeout)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._forget(future)

    async def start_request(
        self, message: dict[str, Any], timeout: float | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Send message with an ``id`` and return at once a future of its reply (it fails
        with ConnectionLost if the connection drops first)."""
        message = dict(message)
        if "id" not in message:
            message["id"] = f"py-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        try:
            await self.send(message, timeout)
        except BaseException:
            self._forget(future)
            raise
        return future

    def _forget(self, future: asyncio.Future[dict[str, Any]]) -> None:
        for key, value in list(self._pending.items()):
            if value is future:
                del self._pending[key]
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" noise when nobody waits

    async def join(self, room: str, timeout: float = 10.0) -> dict[str, Any]:
        """Join room (re-joined automatically, with recovery, after every reconnect).
        Returns the reply: ``room-joined``, or an ``error`` (then the room is not kept)."""
        self._rooms[room] = None
        reply = await self.request(self._join_message(room), timeout)
        if reply.get("type") == "error":
            self._rooms.pop(room, None)
        return reply

    async def leave(self, room: str, timeout: float = 10.0) -> dict[str, Any]:
        self._rooms.pop(room, None)
        self.positions.pop(room, None)
        return await self.request({"type": "leave-room", "room": room}, timeout)

    # ------------------------------------------------------------------ receiving
    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message that is not a reply; ConnectionLost once the client is closed."""
        message = await asyncio.wait_for(self._queue.get(), timeout)
        if message is None:
            self._queue.put_nowait(None)  # keep later readers ending too
            raise self.refused or ConnectionLost("client closed")
        return message

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.recv()
            except ConnectionLost:
                return

    # ------------------------------------------------------------------ internals
    def _join_message(self, room: str) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "join-room", "room": room}
        if room in self.positions:
            epoch, seq = self.positions[room]
            message["since"] = {"epoch": epoch, "seq": seq}
        return message

    async def _wait_connected(self, timeout: float) -> ClientConnection:
        if self.refused is not None:
            raise self.refused
        if self._closed:
            raise ConnectionLost("client closed")
        if self._task is None:
            raise ConnectionLost("not connected: call connect() first")
        if not self._connected.is_set():  # until connected, or the loop ends refused
            waiter = asyncio.ensure_future(self._connected.wait())
            try:
                await asyncio.wait(
                    {waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
            if self.refused is not None:
                raise self.refused
            if not self._connected.is_set():
                raise asyncio.TimeoutError
        assert self._ws is not None
        return self._ws

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                async with connect(self.url, open_timeout=self.open_timeout) as ws:
                    welcome = json.loads(await asyncio.wait_for(ws.recv(), self.open_timeout))
                    self.client_id = welcome.get("clientId")
                    self.connects += 1
                    self.last_close = None
                    attempt = 0
                    await self._session(ws)
            except ConnectionClosed as exc:
                log.debug("connection to %s lost: %r", self.url, exc)
                self.last_close = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
            except InvalidStatus as exc:
                r = exc.response
                self.last_refusal = UpgradeRefused(
                    self.url, r.status_code, r.reason_phrase, bytes(r.body or b"")
                )
                log.debug("%s", self.last_refusal)
                if self.give_up(r.status_code):
                    self.refused = self.last_refusal
                    self._fail_pending()
                    self._queue.put_nowait(None)  # iteration ends
                    return
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                log.debug("connection to %s lost: %r", self.url, exc)
            finally:
                self._ws = None
                self._connected.clear()
                self._fail_pending()
            if self._closed:
                break
            delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max)
            attempt += 1
            log.info("reconnecting to %s in %.2fs", self.url, delay)
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection) -> None:
        """Re-join rooms with recovery, then read until the connection ends."""
        for room in list(self._rooms):
            message = self._join_message(room)
            message["id"] = f"py-rejoin-{next(self._ids)}"
            self._internal_ids.add(message["id"])
            await ws.send(json.dumps(message))
        self._ws = ws
        self._connected.set()
        async for text in ws:
            try:
                message = json.loads(text)
            except ValueError:
                log.warning("ignoring a frame that is not JSON: %.80r", text)
                continue
            if isinstance(message, dict):
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "room-joined":
            self._joined(message)
        elif "seq" in message and "epoch" in message and isinstance(message.get("room"), str):
            if not self._advance(message["room"], message["epoch"], message["seq"]):
                self.duplicates += 1
                return
        message_id = message.get("id")
        if message_id is not None:
            future = self._pending.pop(message_id, None)
            if future is not None:
                if not future.done():
                    future.set_result(message)
                return
            if message_id in self._internal_ids:
                self._internal_ids.discard(message_id)
                if kind == "error":
                    log.warning("re-joining a room failed: %s", message.get("message"))
                return
        if kind != "welcome":
            self._queue.put_nowait(message)

    def _joined(self, reply: dict[str, Any]) -> None:
        room = reply.get("room")
        if not isinstance(room, str):
            return
        recovered = reply.get("recovered")
        current = (reply["epoch"], reply["seq"]) if "epoch" in reply else None
        if recovered is False:
            if current is None:
                self.positions.pop(room, None)
            else:
                self.positions[room] = current
            self._recovery_failed(room, reply)
        elif recovered is None and current is not None and room not in self.positions:
            self.positions[room] = current  # a first join: track from here
        # recovered True: the missed messages follow and advance the position themselves.

    def _advance(self, room: str, epoch: str, seq: int) -> bool:
        """Record a room message's position; False if it was seen already."""
        last = self.positions.get(room)
        if last is not None and last[0] == epoch:
            if seq <= last[1]:
                return False
            if seq > last[1] + 1:
                log.warning("room %s: messages %d-%d were not received", room, last[1] + 1, seq - 1)
        self.positions[room] = (epoch, seq)
        return True

    def _recovery_failed(self, room: str, reply: dict[str, Any]) -> None:
        log.warning("room %s: missed messages could not be recovered", room)
        if self.on_recovery_failed is None:
            return
        result = self.on_recovery_failed(room, reply)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)

    def _lost_text(self) -> str:
        if self.last_close is None:
            return "connection lost before the reply"
        code, reason = self.last_close
        return (
            f"the server closed the connection before the reply: code {code}, "
            f"{close_meaning(code)}{': ' + reason if reason else ''}"
        )

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(self._lost_text()))
                future.exception()  # a request nobody awaits any more is no error to log
        self._internal_ids.clear()
