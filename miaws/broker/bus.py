"""The seam between the Redis broker's logic and its connection(s) to Redis: :class:`Bus`.

:class:`~miaws.broker.redis.RedisBroker` decides *what* goes where (routing by interest,
history, the probe, backfill, counters); a bus only carries commands and pub/sub messages.
One implementation per deployment shape, chosen by ``broker.type``:

- :class:`miaws.broker.redis_bus.ServerBus` (``redis``): one server; PUBLISH / SUBSCRIBE, one
  pub/sub connection read by :mod:`miaws.broker.pubsub`;
- a cluster bus (``redis-cluster``): SPUBLISH / SSUBSCRIBE, one pub/sub connection per shard.

The contract, which every bus keeps:

- **Keys.** Every key and channel the broker names comes from
  :class:`miaws.broker.redis_keys.RedisKeys` and carries a hash tag; a command or a script
  touches the keys (and publishes on the channel) of one hash slot only, so a cluster bus
  can route any of them by its first key.  A room's channel, stream, seq and epoch share
  its partition's tag (``{prefix:p17}``).
- **Commands.** :attr:`Bus.redis` is a redis-py asyncio client (``Redis`` or ``RedisCluster``)
  for the broker's single-slot commands (SET, MGET, XRANGE, ...); it fails fast (no hidden
  retries): errors are :data:`BusErrors`.  :meth:`Bus.script` registers a Lua script;
  :meth:`Bus.run` runs one.  A script that publishes calls ``redis.call(ARGV[n], ...)``
  with :attr:`Bus.publish_command` (``PUBLISH``; ``SPUBLISH`` on a cluster) passed in, and
  names its channel as its last key.
- **Sending.** :meth:`Bus.send` sends a batch of :class:`Publish` and :class:`Call`, in order
  for any one channel / slot, in as few round trips as it can; it raises one of
  :data:`BusErrors` if any of it may not have been done (the broker counts the whole batch
  as dropped).  Messages published by one node on one channel reach every subscriber in
  the order sent.
- **Subscribing.** :meth:`Bus.subscribe` / :meth:`Bus.unsubscribe` change the set of wanted
  channels at once (a channel wanted twice is wanted once: the broker counts interest); the
  commands go out batched at the end of the event loop step, at most
  :data:`~miaws.broker.pubsub.CHANNELS_PER_COMMAND` channels a command.  ``subscribe``
  returns an awaitable done when Redis confirmed every one of those channels (at once if
  they all were); it never raises and may stay pending while the bus is down (wait on it
  with a timeout).  While down, the wanted set is kept; after a reconnect the bus
  subscribes to all of it again (batched) before calling :meth:`BusListener.bus_up`.
- **Receiving.** For each message pushed on a wanted channel the bus calls
  :meth:`BusListener.bus_message` (channel, data), synchronously, in the order read, in
  the event loop's thread, with no task per message.  Messages on a channel no longer
  wanted may still come for a moment after ``unsubscribe``.
- **Up and down.** :meth:`BusListener.bus_down` when a pub/sub connection is lost (Redis
  closed it, killed it, the output buffer limit, the network, :meth:`Bus.restart`), once
  per loss; then the bus reconnects with backoff (0.1 s doubling up to ``retry_max``) and
  calls :meth:`BusListener.bus_up` once the wanted set is subscribed again (``again`` is
  False the very first time).  Messages published meanwhile are lost to this node: the
  broker backfills what it can.
- **Probing.** The bus does not probe; the broker publishes to each of
  :meth:`Bus.probe_channels` (which the broker subscribes to) and calls
  :meth:`Bus.restart` when a probe does not come back.  A cluster bus returns one channel
  per shard so that every pub/sub connection is probed.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from redis.exceptions import RedisClusterException, RedisError

__all__ = ["Confirmations", "Bus", "BusErrors", "BusListener", "Call", "Publish"]

BusErrors = (RedisError, RedisClusterException, OSError)
"""What a bus command raises when Redis could not be reached or refused (RedisClusterException:
redis-py's cluster client when no node answers or a slot has no primary)."""


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (SPUBLISH on a cluster) data on channel."""

    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Call:
    """Run a script (from :meth:`Bus.script`) with keys (one slot) and args."""

    script: Any
    keys: Sequence[str]
    args: Sequence[bytes | str | int]


class BusListener(Protocol):
    """The broker side of a bus: told of every message and of the subscription's state."""

    def bus_message(self, channel: bytes, data: bytes) -> None:
        """A message pushed on a wanted channel (synchronously, in order)."""
        ...

    def bus_up(self, again: bool) -> None:
        """Every wanted channel is subscribed; again: after a loss (False the first time)."""
        ...

    def bus_down(self, error: BaseException) -> None:
        """A pub/sub connection was lost; messages published from now on until
        :meth:`bus_up` do not reach this node."""
        ...


class Confirmations:
    """Which wanted channels Redis has confirmed, and who waits for which (both buses'
    bookkeeping behind :meth:`Bus.subscribe`'s awaitable)."""

    def __init__(self) -> None:
        self.confirmed: set[str] = set()
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def wait(self, channels: Iterable[str]) -> Awaitable[None]:
        """Done when every one of channels is confirmed (at once if they all are)."""
        loop = asyncio.get_running_loop()
        waits = []
        for channel in channels:
            if channel not in self.confirmed:
                future = self._waiting.get(channel)
                if future is None:
                    future = self._waiting[channel] = loop.create_future()
                waits.append(future)
        if not waits:
            done = loop.create_future()
            done.set_result(None)
            return done
        return cast(Awaitable[None], asyncio.gather(*waits))

    def confirm(self, channel: str) -> None:
        self.confirmed.add(channel)
        self._release(channel)

    def drop(self, channel: str) -> None:
        """Not wanted any more: not confirmed, and nobody needs to wait for it."""
        self.confirmed.discard(channel)
        self._release(channel)

    def release_all(self) -> None:
        """The bus is closing: every waiter is done."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)
        self._waiting.clear()

    def _release(self, channel: str) -> None:
        future = self._waiting.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)


class Bus(ABC):
    """Commands and pub/sub on Redis for one node (see the module docstring's contract)."""

    publish_command: str = "PUBLISH"
    """What a Lua script calls to publish: ``PUBLISH``, or ``SPUBLISH`` on a cluster."""

    # ------------------------------------------------------------ commands
    @property
    @abstractmethod
    def redis(self) -> Any:
        """The redis-py asyncio client for single-slot commands (``Redis``/``RedisCluster``)."""

    def script(self, source: str) -> Any:
        """A Lua script registered on :attr:`redis`, for :class:`Call` and :meth:`run`."""
        return self.redis.register_script(source)

    async def run(self, script: Any, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        """Run one script (keys of one slot) and return its reply."""
        return await script(list(keys), list(args))

    @abstractmethod
    async def send(self, batch: Sequence[Publish | Call]) -> None:
        """Publish and run scripts, in order per channel/slot, in few round trips."""

    # ------------------------------------------------------------ subscriptions
    @abstractmethod
    def subscribe(self, channels: Collection[str]) -> Awaitable[None]:
        """Want these channels; done when Redis confirmed them all (may stay pending while
        down; never raises)."""

    @abstractmethod
    def unsubscribe(self, channels: Collection[str]) -> None:
        """Stop wanting these channels."""

    def probe_channels(self, name: str) -> list[str]:
        """The channels to probe so that every pub/sub connection is covered; name is this
        node's channel (:meth:`RedisKeys.node_channel`)."""
        return [name]

    @property
    @abstractmethod
    def subscribed(self) -> bool:
        """True while every pub/sub connection is up and the wanted set subscribed."""

    @abstractmethod
    def restart(self, reason: str) -> None:
        """Drop the pub/sub connection(s) and subscribe again (a probe failed)."""

    # ------------------------------------------------------------ lifecycle
    @abstractmethod
    async def start(self, listener: BusListener, wait: float) -> None:
        """Connect and subscribe in the background; return after the first attempt, or
        after wait seconds."""

    @abstractmethod
    async def close(self) -> None:
        """Stop reconnecting and close every connection."""
