"""The receiving side of the Redis broker: one pub/sub connection, read as pushes arrive.

redis-py's asyncio ``PubSub.get_message(timeout=...)`` costs tens of microseconds of CPU per
message (a task wake-up, a timeout, a dict per message); :class:`Subscription` is a plain
:class:`asyncio.Protocol` whose ``data_received`` feeds the bytes to a ``hiredis.Reader`` and
hands every complete ``message`` push to a callback at once, in the same step, with no task,
no timeout and no dict.  One read of the socket (up to what the event loop reads at a time)
is one step, so a busy channel cannot hold the loop for longer than that.

Commands go out on the same connection: AUTH and SELECT from the URL, then SUBSCRIBE and
UNSUBSCRIBE (at most :data:`CHANNELS_PER_COMMAND` channels each) and PING.  Replies to them
are not awaited one by one: a subscription is known to be in place when a message comes back
on it (the broker's probe, :mod:`miaws.broker.redis`), and :attr:`Subscription.closed` is
done when the connection ends, whatever the reason (Redis killed it, its output buffer limit
was passed, the network went).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
from redis.connection import parse_url

__all__ = ["CHANNELS_PER_COMMAND", "Subscription"]

CHANNELS_PER_COMMAND = 512


def _command(*args: bytes | str) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        b = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Subscription(asyncio.Protocol):
    """One pub/sub connection; ``on_message(channel, data)`` for every message pushed."""

    read_with: Callable[..., Any] | None = None
    """How one read's messages are handled, ``read_with(handle, data)``
    (:meth:`miaws.broker.base.Broker.read_with`, the transport's corking); None: directly."""

    def __init__(
        self,
        on_message: Callable[[bytes, bytes], None],
        on_confirm: Callable[[bytes], None] | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_confirm = on_confirm  # called with each channel whose SUBSCRIBE Redis confirmed
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._pending_replies = 0  # AUTH / SELECT replies still to come before we are ready
        self.pongs = 0
        self._pong_waiters: list[asyncio.Future[None]] = []

    @classmethod
    async def open(
        cls,
        url: str,
        on_message: Callable[[bytes, bytes], None],
        timeout: float,
        on_confirm: Callable[[bytes], None] | None = None,
    ) -> Subscription:
        """Connect to the Redis at url, authenticate and select its database."""
        params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        protocol = cls(on_message, on_confirm)
        cls_name = getattr(params.get("connection_class"), "__name__", "")
        if "path" in params:
            connect = loop.create_unix_connection(lambda: protocol, params["path"])
        else:
            context = None
            if cls_name == "SSLConnection":
                context = ssl.create_default_context()
                if params.get("ssl_cert_reqs") in ("none", "optional"):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            connect = loop.create_connection(
                lambda: protocol,
                params.get("host", "localhost"),
                params.get("port", 6379),
                ssl=context,
            )
        await asyncio.wait_for(connect, timeout)
        setup = []
        if params.get("password") is not None:
            user = params.get("username")
            setup.append(
                _command("AUTH", user, params["password"])
                if user
                else _command("AUTH", params["password"])
            )
        if params.get("db"):
            setup.append(_command("SELECT", str(params["db"])))
        protocol._pending_replies = len(setup)
        if setup:
            protocol._write(b"".join(setup))
            await asyncio.wait_for(asyncio.shield(protocol._ready), timeout)
        else:
            protocol._ready.set_result(None)
        return protocol

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        run = Subscription.read_with
        if run is None:
            self._handle(data)
        else:
            run(self._handle, data)

    def _handle(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        on_message = self.on_message
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(exc)
                return
            if reply is False:
                return
            if type(reply) is list and (reply[0] == b"message" or reply[0] == b"smessage"):
                on_message(reply[1], reply[2])  # smessage: sharded pub/sub (Redis Cluster)
            elif not self.handle_reply(reply):
                return

    def handle_reply(self, reply: Any) -> bool:
        """Any reply but a message: a PONG, a confirmation, an error, +OK; False if the
        connection was failed (stop reading).  A subclass may override it."""
        if isinstance(reply, list):
            kind = reply[0]
            if kind == b"pong":
                self.pongs += 1
                if self._pong_waiters:
                    waiter = self._pong_waiters.pop(0)
                    if not waiter.done():
                        waiter.set_result(None)
            elif (kind == b"subscribe" or kind == b"ssubscribe") and self.on_confirm:
                self.on_confirm(reply[1])
            # unsubscribe confirmations: nothing to do
        elif isinstance(reply, hiredis.ReplyError):
            self.fail(ConnectionError(f"redis refused: {reply}"))
            return False
        elif self._pending_replies:  # +OK to AUTH or SELECT
            self._pending_replies -= 1
            if not self._pending_replies and not self._ready.done():
                self._ready.set_result(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        error = exc or ConnectionError("redis closed the pub/sub connection")
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: open() may not be waiting any more
        if not self.closed.done():
            self.closed.set_result(error)

    # ------------------------------------------------------------ commands
    def _write(self, data: bytes) -> None:
        if self._transport is None:
            raise ConnectionError("the pub/sub connection is closed")
        self._transport.write(data)

    def fail(self, exc: BaseException) -> None:
        """End the connection; :attr:`closed` gets exc."""
        if not self.closed.done():
            self.closed.set_result(exc)
        if self._transport is not None:
            self._transport.abort()

    def subscribe(self, channels: Iterable[str], command: str = "SUBSCRIBE") -> None:
        """SUBSCRIBE (or command: SSUBSCRIBE) in batches; confirmations go to on_confirm."""
        self._batched(command, channels)

    def unsubscribe(self, channels: Iterable[str], command: str = "UNSUBSCRIBE") -> None:
        self._batched(command, channels)

    def _batched(self, command: str, channels: Iterable[str]) -> None:
        names = list(channels)
        out = [
            _command(command, *names[i : i + CHANNELS_PER_COMMAND])
            for i in range(0, len(names), CHANNELS_PER_COMMAND)
        ]
        if out:
            self._write(b"".join(out))

    def ping(self) -> None:
        self._write(_command("PING"))
        self._pong_waiters.append(asyncio.get_running_loop().create_future())

    async def sync(self, timeout: float) -> None:
        """Wait until Redis has done every command sent so far (a PING's answer is back)."""
        self.ping()
        waiter = self._pong_waiters[-1]
        futures: set[asyncio.Future[Any]] = {waiter, self.closed}
        # FIRST_COMPLETED: asyncio.wait's default (all) would always wait out the timeout,
        # since ``closed`` stays pending while the connection lives.
        done, _ = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            raise ConnectionError(
                "the pub/sub connection closed" if done else "redis did not answer a PING"
            )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
