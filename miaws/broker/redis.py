"""RedisBroker: several miaws nodes sharing broadcasts through Redis pub/sub.

Each node keeps its own clients and rooms in its local registry, as with the memory broker.
The broker's logic is here; the connection(s) to Redis are a :class:`~miaws.broker.bus.Bus`
(:class:`~miaws.broker.redis_bus.ServerBus` on one server), and every key and channel comes
from :class:`~miaws.broker.redis_keys.RedisKeys`.

Routing by interest (:mod:`miaws.broker.redis_interest`): rooms hash into
``broker.partitions`` partitions, each with its own channel, and a node subscribes to the
channel of a partition while it has local members in a room of it.  So a node reads the
traffic of its own rooms (and of the rooms sharing their partitions, which it drops and
counts as *skipped*), not of every room.  Every node also subscribes to ``{prefix:all}``
(broadcasts to every client or to a namespace) and to its own channel (its probe).

Sending: :meth:`RedisBroker.publish` delivers to this node's recipients at once, then hands
the text it has already encoded to a background publisher, which sends it in order, many a
round trip, as ``node id \\n n \\n target \\n text`` on the room's partition channel (target
the room key) or on ``{prefix:all}`` (target ``<namespace>#``, or empty for every client).
``n`` counts this node's messages on that channel: a receiver that sees it jump knows how
many it missed, and counts them as dropped.  Every other node turns each message into one
:class:`RemoteEncoded` and delivers it to its own recipients; the sender's node skips its own
messages, which it delivered already.  So a message is serialised once per node.

Rooms with history (``history.rooms``) go another way, described in
:mod:`miaws.broker.redis_history`: the publisher stamps, keeps and publishes them in one Lua
script, as ``\\n room \\n epoch \\n seq \\n text`` (no node id), and every node, the sender's
included, delivers them as they come back, so every node delivers them in seq order.  The
server's own events in such a room (``member-joined``, :meth:`RedisBroker.publish_event`) go
the same way, in order with them, but with an empty epoch: not stamped, not kept.

Nothing lost silently: every ``broker.probe_interval`` seconds the node publishes a probe to
its own channel and expects it back within the same time; if it is not, the subscription is
taken for lost (``/health`` degraded, ``miaws_broker_probe_failures_total``) and made again.
So a dead or cut subscription is found within two probe intervals, and one that Redis closed
(``CLIENT KILL``, the output buffer limit) at once.  Once subscribed again, every history room
with local members is backfilled from its stream (:meth:`RedisHistory.backfill`): a client
that stayed connected gets every message once and in order, or a ``gap`` message.

Every ``broker.heartbeat`` seconds a node writes its counts to ``{prefix:nodes}:ID`` with a
time to live of three heartbeats (and its id to the set ``{prefix:nodes}``); the cluster
view reads them back, so a crashed node drops out on its own (after :data:`TTL_HEARTBEATS`).

Faults: when Redis cannot be reached the node logs it once, keeps serving its own clients
(:meth:`status` is ``degraded``), drops cross-node messages instead of queueing them, and
reconnects with exponential backoff (0.1 s doubling up to the heartbeat), resubscribing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import TimeoutError as RedisTimeoutError

from miaws.broker.base import Broker, BrokerCounters, ClusterView, NodeCounts, no_history
from miaws.broker.bus import Bus, BusErrors, Call, Publish
from miaws.broker.pubsub import Subscription
from miaws.broker.redis_history import RedisHistory
from miaws.broker.redis_interest import Interest
from miaws.broker.redis_keys import RedisKeys
from miaws.broker.redis_presence import RedisPresence
from miaws.broker.redis_store import Store
from miaws.broker.remote import RemoteEncoded
from miaws.config import Settings
from miaws.core.errors import BrokerUnavailable, ConfigError
from miaws.core.history import HistoryRoom, Joined, Position
from miaws.core.model import Client, Encoded
from miaws.core.registry import LocalRegistry
from miaws.core.tasks import cancel_and_wait

__all__ = ["RedisBroker", "RemoteEncoded", "TTL_HEARTBEATS", "make_bus", "wire_message"]

log = logging.getLogger("miaws.broker")

OUTBOX_MAX = 10_000  # messages waiting for the publisher; beyond it they are dropped
BATCH_MAX = 256  # PUBLISH commands per pipeline round trip
SOCKET_TIMEOUT = 2.0  # seconds a Redis command (or a connection attempt) may take
READY_WAIT = 2.0  # seconds start() waits for the first subscription
SUBSCRIBE_WAIT = 2.0  # seconds a join waits for its partition's subscription
SENDERS_MAX = 1_000  # senders whose message counter is remembered per channel
BrokerErrors = BusErrors

TTL_HEARTBEATS = 3
"""A node whose counts were not refreshed for this many heartbeats is gone."""


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _target(key: str | None, namespace: str | None) -> bytes:
    """The target field of a cross-node message (see the module docstring)."""
    if key is not None:
        return key.encode()
    return b"" if namespace is None else namespace.encode() + b"#"


def wire_message(
    node: str,
    key: str | None,
    namespace: str | None,
    data: bytes,
    prefix: str = "miaws",
    n: int = 1,
    keys: RedisKeys | None = None,
) -> tuple[str, bytes]:
    """The channel and bytes of node's n-th cross-node message on its channel (for benches
    and tests)."""
    keys = keys or RedisKeys(prefix)
    channel = keys.broadcast if key is None else keys.room_channel(key)
    return channel, b"\n".join((node.encode(), b"%d" % n, _target(key, namespace), data))


def _event_message(key: str, data: bytes) -> bytes:
    """A history room's event as its broadcasts come from the script, with no epoch and
    seq 0: ``\\n room \\n \\n 0 \\n text``."""
    return b"\n" + key.encode() + b"\n\n0\n" + data


def make_bus(settings: Settings) -> Bus:
    """The bus ``broker.type`` asks for."""
    b = settings.broker
    if b.type == "redis-cluster":
        from miaws.broker.cluster_bus import ClusterBus

        return ClusterBus(b.url, timeout=SOCKET_TIMEOUT, retry_max=b.heartbeat)
    from miaws.broker.redis_bus import ServerBus

    return ServerBus(b.url, timeout=SOCKET_TIMEOUT, retry_max=b.heartbeat)


class RedisBroker(Broker):
    """This node's clients, and through Redis every other node's."""

    def __init__(
        self,
        registry: LocalRegistry,
        bus: Bus,
        *,
        url: str = "",
        channel_prefix: str = "miaws",
        partitions: int = 1024,
        heartbeat: float = 5.0,
        probe_interval: float = 2.0,
        unsubscribe_delay: float = 5.0,
        node_id: str | None = None,
        history_rules: Sequence[HistoryRoom] = (),
    ) -> None:
        super().__init__(registry)
        self.url = url
        self.bus = bus
        self.keys = RedisKeys(channel_prefix, partitions)
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.heartbeat = heartbeat
        self.probe_interval = probe_interval
        self.node_channel = self.keys.node_channel(self.node_id)
        self.dropped = 0  # cross-node messages lost (outage, full outbox, or missed) since start
        self.received = 0  # cross-node messages read from Redis since start
        self.skipped = 0  # of those, messages for rooms with no local member (partition shared)
        self.reconnects = 0  # subscriptions made again after one was lost
        self.probe_failures = 0  # probes not back in time
        self._node_bytes = self.node_id.encode()
        self._probe_channels = bus.probe_channels(self.node_channel)
        self._probe_bytes = {c.encode() for c in self._probe_channels}
        self._probe_token = b""
        self._probe_missing: set[bytes] = set()
        self._probe_back: asyncio.Event | None = None
        self._probe_ok = True
        self.presence = RedisPresence(bus.redis, channel_prefix, self.node_id, heartbeat)
        self.shared = (
            RedisHistory(history_rules, bus, self.keys, registry.members) if history_rules else None
        )
        self._store = Store(bus, self.node_id)
        self.interest = Interest(self.keys, bus, unsubscribe_delay, self._released)
        registry.watch(self)
        # (channel, bytes): a PUBLISH as is; (room, JSON): a message to stamp and keep first
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(OUTBOX_MAX)
        self._out_n: dict[str, int] = {}  # channel -> this node's messages sent on it
        self._in_n: dict[bytes, dict[bytes, int]] = {}  # channel -> sender -> last n
        self._tasks: list[asyncio.Task[None]] = []
        self._resuming: asyncio.Task[None] | None = None  # the last _resumed()
        self._subscribed = False
        self._up = False
        self._outage_since: float | None = None
        self._connected_logged = False
        self._dropped_at_outage = 0
        self._full_logged_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, registry: LocalRegistry) -> RedisBroker:
        b = settings.broker
        try:
            bus = make_bus(settings)
        except ValueError as exc:  # redis-py's URL parser: a bad port, database, option
            raise ConfigError(
                f"{settings.source}: broker.url has value {redact(b.url)!r}; {exc}"
            ) from None
        return cls(
            registry,
            bus,
            url=b.url,
            channel_prefix=b.channel_prefix,
            partitions=b.partitions,
            heartbeat=b.heartbeat,
            probe_interval=b.probe_interval,
            unsubscribe_delay=b.unsubscribe_delay,
            history_rules=settings.history_rules(),
        )

    # ------------------------------------------------------------ sending
    def publish(
        self, payload: dict[str, Any], key: str | None = None, namespace: str | None = None
    ) -> int:
        """Deliver to this node's recipients now and queue one publish for the other nodes.

        Returns the number of recipients on this node.  A message to a room with history is
        delivered (here too) only once Redis has stamped it; while Redis is unreachable it
        goes, unstamped and not kept, to this node's members only.
        """
        message = Encoded(payload)
        item: tuple[str, bytes]
        if key is not None and self.shared is not None and self.shared.covers(key):
            if not self._up:
                self.dropped += 1
                return self._registry.send_to_room(key, message)
            delivered = self._registry.room_size(key)
            item = ("", key.encode() + b"\n" + message.data)
        else:
            delivered = self._deliver(key, namespace, message)
            if not self._up:
                self.dropped += 1
                return delivered
            channel = self.keys.broadcast if key is None else self.keys.room_channel(key)
            n = self._out_n.get(channel, 0) + 1
            self._out_n[channel] = n
            item = (
                channel,
                b"\n".join((self._node_bytes, b"%d" % n, _target(key, namespace), message.data)),
            )
        self._queue(item)
        return delivered

    def publish_event(self, payload: dict[str, Any], key: str) -> int:
        """A room event that is no broadcast: in a room with history it goes the way of the
        room's broadcasts (published in order with them, delivered by every node, the
        sender's included, as it comes back, held for joiners) but with an empty epoch: no
        script, no seq, not in the stream.  Elsewhere it is any room message."""
        shared = self.shared
        if shared is None or not shared.covers(key):
            return self.publish(payload, key)
        message = Encoded(payload)
        if not self._up:
            self.dropped += 1
            return self._registry.send_to_room(key, message)
        self._queue((self.keys.room_channel(key), _event_message(key, message.data)))
        return self._registry.room_size(key)

    def _queue(self, item: tuple[str, bytes]) -> None:
        """Hand one item to the publisher; dropped (and counted) when the outbox is full."""
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._full_logged_at > 10:
                self._full_logged_at = now
                log.warning(
                    "redis broker too slow: %d messages waiting; dropping cross-node messages",
                    OUTBOX_MAX,
                )

    def _deliver(self, key: str | None, namespace: str | None, message: Encoded) -> int:
        registry = self._registry
        if key is not None:
            return registry.send_to_room(key, message)
        if namespace is not None:
            return registry.send_to_namespace(namespace, message)
        return registry.send_to_all(message)

    async def _publisher(self) -> None:
        """Publish queued messages in order, many per round trip."""
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < BATCH_MAX and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                commands: list[Publish | Call] = []
                for channel, data in batch:
                    if channel:
                        commands.append(Publish(channel, data))
                    else:
                        assert self.shared is not None
                        room, _, text = data.partition(b"\n")
                        commands.append(self.shared.append(room.decode(), text))
                await self.bus.send(commands)
            except BrokerErrors as exc:
                self.dropped += len(batch)
                self._set_down(exc)
                if not isinstance(exc, (RedisTimeoutError, TimeoutError)):
                    self._deliver_unstamped(batch)  # not done: as if Redis had been down
            finally:
                for _ in batch:
                    self._outbox.task_done()

    def _deliver_unstamped(self, batch: list[tuple[str, bytes]]) -> None:
        """The history-room messages of a batch Redis refused, to this node's members only,
        unstamped (a batch that timed out may have been done: then they come back stamped);
        its events for history rooms likewise."""
        for channel, data in batch:
            if not channel:
                room, _, text = data.partition(b"\n")
                self._registry.send_to_room(room.decode(), RemoteEncoded(text))
            elif data[:1] == b"\n":  # a history room's event (_event_message)
                _, room, _, _, text = data.split(b"\n", 4)
                self._registry.send_to_room(room.decode(), RemoteEncoded(text))

    # ------------------------------------------------------------ receiving (BusListener)
    def bus_message(self, channel: bytes, data: bytes) -> None:
        if channel in self._probe_bytes:
            self._probe_arrived(channel, data)
            return
        self.received += 1
        node, _, rest = data.partition(b"\n")
        try:
            if not node:  # stamped by Redis: everyone delivers
                if self.shared is None:
                    return
                key_b, epoch, seq, text = rest.split(b"\n", 3)
                key = key_b.decode()
                members = self._registry.members(key)
                if not members:
                    self.skipped += 1
                    return
                self.shared.deliver(key, epoch.decode(), int(seq), RemoteEncoded(text), members)
                return  # (an empty epoch: the room's event, not stamped; deliver knows)
            if node == self._node_bytes:
                return  # ours: delivered locally when it was sent
            n_b, target_b, text = rest.split(b"\n", 2)
            self._count_missed(channel, node, int(n_b))
            target = target_b.decode()
            if not target:
                self._registry.send_to_all(RemoteEncoded(text))
            elif target[-1] == "#":
                self._registry.send_to_namespace(target[:-1], RemoteEncoded(text))
            elif not self._registry.send_to_room(target, RemoteEncoded(text)):
                self.skipped += 1
        except Exception:  # one bad message (or client) must not stop the subscriber
            log.exception("could not deliver a message from node %r", node)

    def _count_missed(self, channel: bytes, node: bytes, n: int) -> None:
        senders = self._in_n.get(channel)
        if senders is None:
            senders = self._in_n[channel] = {}
        last = senders.get(node)
        if last is None and len(senders) >= SENDERS_MAX:
            senders.clear()
        senders[node] = n
        if last is not None and n > last + 1:
            self.dropped += n - last - 1

    def _released(self, channel: str) -> None:
        """Interest let channel go: its counters start afresh if it is subscribed again."""
        self._in_n.pop(channel.encode(), None)

    def bus_up(self, again: bool) -> None:
        self._subscribed = True
        if again:
            self.reconnects += 1
        self._probe_ok = True
        if again and self.shared is not None:  # held from now on, read from the streams
            for key in self._registry.rooms():
                if self.shared.covers(key):
                    self.shared.backfill(key)
        self._resuming = asyncio.create_task(self._resumed())
        self._tasks.append(self._resuming)

    async def _resumed(self) -> None:
        """After (re)subscribing: write the counts."""
        try:
            await self._write_counts()
        except BrokerErrors as exc:
            self._set_down(exc)
        else:
            self._set_up()
        task = asyncio.current_task()
        if task in self._tasks:
            self._tasks.remove(task)

    def bus_down(self, error: BaseException) -> None:
        """This node's subscription is lost; publishing goes on while commands work (the
        history rooms' messages then reach this node's members by the backfill)."""
        self._subscribed = False
        self._outage(error)

    # ------------------------------------------------------------ the probe
    async def _prober(self) -> None:
        """Every probe interval, a probe on each probe channel, expected back in as long."""
        count = 0
        while True:
            await asyncio.sleep(self.probe_interval)
            if not self.bus.subscribed:
                continue  # the bus is reconnecting; it says when it is back
            count += 1
            self._probe_token = b"%d" % count
            self._probe_missing = set(self._probe_bytes)
            self._probe_back = back = asyncio.Event()
            try:
                await asyncio.wait_for(
                    self.bus.send([Publish(c, self._probe_token) for c in self._probe_channels]),
                    self.probe_interval,
                )
                await asyncio.wait_for(back.wait(), self.probe_interval)
            except (*BrokerErrors, asyncio.TimeoutError) as exc:
                self.probe_failures += 1
                self._probe_ok = False
                log.warning(
                    "redis broker probe %d not back within %g s (%s); subscribing again",
                    count,
                    self.probe_interval,
                    str(exc) or type(exc).__name__,
                )
                self.bus.restart("the probe did not come back")
            else:
                self._probe_ok = True

    def _probe_arrived(self, channel: bytes, data: bytes) -> None:
        if data == self._probe_token and channel in self._probe_missing:
            self._probe_missing.discard(channel)
            if not self._probe_missing and self._probe_back is not None:
                self._probe_back.set()

    # ------------------------------------------------------------ rooms and history
    def room_occupied(self, key: str) -> None:
        self.interest.room_occupied(key)

    def room_vacated(self, key: str) -> None:
        self.interest.room_vacated(key)
        if self.shared is not None:
            self.shared.forget(key)

    def join(
        self, client: Client, key: str, since: Position | None = None
    ) -> Joined | Awaitable[Joined]:
        """Make client a member; answer once the room's partition is subscribed to (so that
        what is published after the answer reaches it), from the history if it has one."""
        self._registry.group_add(key, client)
        ready = self.interest.ready(key) if self._subscribed else None
        shared = self.shared
        if shared is not None and shared.covers(key):
            return shared.join(client, key, since, ready)
        if ready is None:
            return no_history(since)
        return _after(ready, no_history(since))

    def read_with(self, run: Callable[..., Any]) -> None:
        # Every pub/sub connection of this process (one node a process).
        Subscription.read_with = run

    def history_covers(self, key: str) -> bool:
        return self.shared is not None and self.shared.covers(key)

    async def store(
        self, key: str, value: bytes, ttl: float, *, if_absent: bool = False
    ) -> bytes | None:
        return await self._store.store(self.keys.store(key), value, ttl, if_absent)

    # ------------------------------------------------------------ counts and health
    async def _write_counts(self) -> None:
        counts = {"connections": self._registry.count(), "rooms": self._registry.rooms()}
        ttl_ms = int(self.heartbeat * TTL_HEARTBEATS * 1000)
        pipe = self.bus.redis.pipeline(transaction=False)  # one slot: {prefix:nodes}
        pipe.set(self.keys.node_counts(self.node_id), json.dumps(counts), px=ttl_ms)
        pipe.sadd(self.keys.nodes, self.node_id)
        await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if not self._subscribed:
                continue  # the bus is reconnecting; the counts are written when it is back
            try:
                await self._write_counts()
            except BrokerErrors as exc:
                self._set_down(exc)
            else:
                self._set_up()

    def _set_up(self) -> None:
        """A command worked: publishing goes on (and the outage ends if subscribed too)."""
        self._up = True
        self._recovered()

    def _set_down(self, exc: BaseException) -> None:
        """A command failed: cross-node messages are dropped until one works again."""
        self._up = False
        self._outage(exc)

    def _recovered(self) -> None:
        if not (self._up and self._subscribed):
            return
        if not self._connected_logged:
            self._connected_logged = True
            if self._outage_since is None:
                log.info(
                    "redis broker connected at %s; this is node %s", redact(self.url), self.node_id
                )
                return
        if self._outage_since is None:
            return
        log.warning(
            "redis broker reachable again after %.1f s; cross-node broadcasts resumed "
            "(%d cross-node messages were dropped meanwhile)",
            time.monotonic() - self._outage_since,
            self.dropped - self._dropped_at_outage,
        )
        self._outage_since = None

    def _outage(self, exc: BaseException) -> None:
        if self._outage_since is not None:
            return  # logged once per outage
        self._outage_since = time.monotonic()
        self._dropped_at_outage = self.dropped
        log.warning(
            "redis broker unreachable at %s (%s); serving this node's clients only, retrying",
            redact(self.url),
            str(exc) or type(exc).__name__,
        )

    def status(self) -> str:
        """``ok`` while commands work, the subscription is up and the last probe came back."""
        return "ok" if self._up and self._subscribed and self._probe_ok else "degraded"

    def counters(self) -> BrokerCounters:
        shared = self.shared
        return BrokerCounters(
            self.received,
            self.dropped + (shared.lost if shared else 0),
            self.reconnects,
            self.probe_failures,
            skipped=self.skipped,
            gaps=shared.gaps if shared else 0,
            partitions=self.interest.partitions(),
        )

    async def cluster(self) -> ClusterView:
        """Counts of every live node (this one's are live, the others' a heartbeat old)."""
        if not self._up:
            raise BrokerUnavailable(self.node_id, f"redis unreachable at {redact(self.url)}")
        try:
            ids = sorted(_text(i) for i in await self.bus.redis.smembers(self.keys.nodes))
            values = (
                await self.bus.redis.mget([self.keys.node_counts(i) for i in ids]) if ids else []
            )
        except BrokerErrors as exc:
            self._set_down(exc)
            raise BrokerUnavailable(self.node_id, f"redis error: {exc}") from None
        nodes: dict[str, NodeCounts] = {}
        gone = []
        for node_id, raw in zip(ids, values, strict=True):
            if raw is None:
                gone.append(node_id)
                continue
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                counts = json.loads(raw)
                nodes[node_id] = NodeCounts(
                    int(counts["connections"]), {str(k): int(v) for k, v in counts["rooms"].items()}
                )
        nodes[self.node_id] = NodeCounts(self._registry.count(), self._registry.rooms())
        if gone:
            with contextlib.suppress(*BrokerErrors):
                await self.bus.redis.srem(self.keys.nodes, *gone)
        return ClusterView(self.node_id, nodes)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Subscribe (to this node's channel, the broadcast channel and the partitions of its
        rooms) and start the background tasks; wait (briefly) for the first attempt."""
        self.bus.subscribe([self.keys.broadcast, *self._probe_channels])
        await self.bus.start(self, READY_WAIT)
        self._tasks += [
            asyncio.create_task(self._publisher(), name="miaws-redis-publisher"),
            asyncio.create_task(self._heartbeat(), name="miaws-redis-heartbeat"),
            asyncio.create_task(self._prober(), name="miaws-redis-probe"),
        ]
        resuming = self._resuming
        if resuming is not None and not resuming.done():  # the counts are being written
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(resuming), READY_WAIT)

    async def close(self) -> None:
        """Publish what is queued (up to 1 s), leave the cluster view, close the connections."""
        if self._up:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 1.0)
        self.interest.close()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._up:
            with contextlib.suppress(*BrokerErrors):
                pipe = self.bus.redis.pipeline(transaction=False)
                pipe.delete(self.keys.node_counts(self.node_id))
                pipe.srem(self.keys.nodes, self.node_id)
                await pipe.execute()
        self._up = self._subscribed = False
        await self.bus.close()


async def _after(ready: Awaitable[None], joined: Joined) -> Joined:
    """joined, once ready is done (or after :data:`SUBSCRIBE_WAIT`)."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(ready), SUBSCRIBE_WAIT)
    return joined
