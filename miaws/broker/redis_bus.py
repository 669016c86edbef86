"""ServerBus: the :class:`~miaws.broker.bus.Bus` on one Redis server (``broker.type: redis``).

Commands go over a redis-py asyncio ``Redis`` (no hidden retries: the broker's loops retry);
a batch is one pipeline of PUBLISH and EVALSHA commands, which keeps their order.  Pub/sub
is one :class:`~miaws.broker.pubsub.Subscription` (PUBLISH / SUBSCRIBE), made again with
backoff whenever it ends, and then subscribed to every wanted channel, 512 a command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Collection, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from miaws.broker.bus import Bus, BusErrors, BusListener, Call, Confirmations, Publish
from miaws.broker.pubsub import Subscription
from miaws.core.tasks import cancel_and_wait

__all__ = ["ServerBus"]

RETRY_FIRST = 0.1  # seconds before the first reconnection attempt


class ServerBus(Bus):
    """One Redis server: a command client and one pub/sub connection."""

    def __init__(self, url: str, *, timeout: float = 2.0, retry_max: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_max = max(retry_max, RETRY_FIRST)
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._wanted: set[str] = set()
        self._confirmations = Confirmations()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._flush_scheduled = False
        self._sub: Subscription | None = None
        self._subscribed = False
        self._listener: BusListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Event | None = None

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    # ------------------------------------------------------------ commands
    async def send(self, batch: Sequence[Publish | Call]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for item in batch:
            if isinstance(item, Publish):
                pipe.publish(item.channel, item.data)
            else:
                await item.script(list(item.keys), list(item.args), client=pipe)
        await pipe.execute()

    # ------------------------------------------------------------ subscriptions
    def subscribe(self, channels: Collection[str]) -> Awaitable[None]:
        for channel in channels:
            if channel not in self._wanted:
                self._wanted.add(channel)
                self._to_unsubscribe.discard(channel)
                self._to_subscribe.add(channel)
        self._schedule_flush()
        return self._confirmations.wait(channels)

    def unsubscribe(self, channels: Collection[str]) -> None:
        for channel in channels:
            if channel in self._wanted:
                self._wanted.discard(channel)
                self._confirmations.drop(channel)
                self._to_subscribe.discard(channel)
                self._to_unsubscribe.add(channel)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and (self._to_subscribe or self._to_unsubscribe):
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send the subscription changes of this loop step, batched (the connection, if
        down, subscribes to the whole wanted set when it is back)."""
        self._flush_scheduled = False
        subscribe, self._to_subscribe = self._to_subscribe, set()
        unsubscribe, self._to_unsubscribe = self._to_unsubscribe, set()
        sub = self._sub
        if sub is None or not self._subscribed:
            return
        try:
            if unsubscribe:
                sub.unsubscribe(sorted(unsubscribe))
            if subscribe:
                sub.subscribe(sorted(subscribe))
        except ConnectionError:
            pass  # the reconnect loop sees it closed and subscribes to everything again

    def _confirm(self, channel_b: bytes) -> None:
        channel = channel_b.decode()
        if channel in self._wanted:
            self._confirmations.confirm(channel)

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    def restart(self, reason: str) -> None:
        sub = self._sub
        if sub is not None:
            sub.fail(ConnectionError(reason))

    # ------------------------------------------------------------ lifecycle
    async def start(self, listener: BusListener, wait: float) -> None:
        self._listener = listener
        self._first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._run(listener), name="miaws-redis-subscriber")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), wait)

    async def _run(self, listener: BusListener) -> None:
        """Stay subscribed: on any loss, tell the listener and reconnect with backoff."""
        assert self._first_attempt is not None
        delay = RETRY_FIRST
        again = False  # connected before
        told_down = False  # bus_down called for this loss (or the first failed attempt)
        while True:
            sub: Subscription | None = None
            try:
                sub = await Subscription.open(
                    self.url, listener.bus_message, self.timeout, self._confirm
                )
                self._sub = sub
                self._confirmations.confirmed.clear()
                self._to_subscribe.clear()
                self._to_unsubscribe.clear()
                sub.subscribe(sorted(self._wanted))
                await sub.sync(self.timeout)  # every SUBSCRIBE before it is confirmed
                self._subscribed = True
                listener.bus_up(again)
                again, told_down = True, False
                self._first_attempt.set()
                delay = RETRY_FIRST
                error = await sub.closed
                raise ConnectionError(str(error or "connection closed"))
            except (*BusErrors, asyncio.TimeoutError) as exc:
                self._subscribed = False
                if not told_down:
                    told_down = True
                    listener.bus_down(exc)
            finally:
                self._sub = None
                if sub is not None:
                    sub.close()
            self._first_attempt.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def close(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        self._subscribed = False
        self._confirmations.release_all()
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"ServerBus({self.url!r})"
