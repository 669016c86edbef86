"""RedisBroker: several miaws nodes sharing broadcasts through Redis pub/sub.

Each node keeps its own clients and rooms in its local registry, as with the memory broker.
:meth:`RedisBroker.publish` delivers to this node's recipients at once, then hands the text it
has already encoded to a background publisher, which sends it on one channel,
``{prefix}:messages``, as ``node id \\n target \\n text``.  The target is a room key, or
``<namespace>#`` for every client of a namespace (room keys never end with ``#``), or empty
for every client.  A pipeline of PUBLISH commands keeps the order of the sends.  Every other
node turns each message into one :class:`RemoteEncoded` and delivers it to its own recipients;
the sender's node skips its own messages, which it delivered already.  So a message is
serialised once per node, whatever the number of recipients.

Every ``broker.heartbeat`` seconds a node writes its counts to ``{prefix}:node:{id}`` with a
time to live of three heartbeats (and its id to the set ``{prefix}:nodes``); the cluster
view reads them back, so a crashed node drops out on its own (after :data:`TTL_HEARTBEATS`).

Rooms with history (``history.rooms``) go another way, described in
:mod:`miaws.broker.redis_history`: the publisher stamps, keeps and publishes them in one Lua script,
as ``\n room \n epoch \n seq \n text`` (no node id), and every node, the sender's included,
delivers them as they come back, so every node delivers them in seq order.

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
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from miaws.broker.base import Broker, ClusterView, NodeCounts, no_history
from miaws.broker.redis_history import RedisHistory
from miaws.broker.redis_presence import RedisPresence
from miaws.config import Settings
from miaws.core.errors import BrokerUnavailable, ConfigError
from miaws.core.history import HistoryRoom, Joined, Position
from miaws.core.model import Client, Encoded
from miaws.core.registry import LocalRegistry

__all__ = ["RedisBroker", "RemoteEncoded", "TTL_HEARTBEATS"]

log = logging.getLogger("miaws.broker")

OUTBOX_MAX = 10_000  # messages waiting for the publisher; beyond it they are dropped
BATCH_MAX = 256  # PUBLISH commands per pipeline round trip
RETRY_FIRST = 0.1  # seconds before the first reconnection attempt
SOCKET_TIMEOUT = 2.0  # seconds a Redis command (or a connection attempt) may take
READY_WAIT = 2.0  # seconds start() waits for the first subscription
BrokerErrors = (RedisError, OSError)

TTL_HEARTBEATS = 3
"""A node whose counts were not refreshed for this many heartbeats is gone."""


class RemoteEncoded(Encoded):
    """A message another node serialised: its text as received, parsed only if asked."""

    __slots__ = ()

    def __init__(self, data: bytes) -> None:  # not Encoded's: the UTF-8 JSON exists already
        self.data = data
        self._text = None
        self.wire = None

    def __getattr__(self, name: str) -> Any:
        # Only reached while the ``payload`` slot is unset.
        if name == "payload":
            self.payload = json.loads(self.data)
            return self.payload
        raise AttributeError(name)


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


class RedisBroker(Broker):
    """This node's clients, and through Redis every other node's."""

    def __init__(
        self,
        registry: LocalRegistry,
        url: str,
        *,
        channel_prefix: str = "miaws",
        heartbeat: float = 5.0,
        node_id: str | None = None,
        history_rules: Sequence[HistoryRoom] = (),
    ) -> None:
        super().__init__(registry)
        self.url = url
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.heartbeat = heartbeat
        self.channel = f"{channel_prefix}:messages"
        self.nodes_key = f"{channel_prefix}:nodes"
        self.key_prefix = f"{channel_prefix}:node:"
        self.dropped = 0  # cross-node messages lost (outage or full outbox) since start
        self._node_bytes = self.node_id.encode()
        # Fail fast and let our own loops retry: redis-py's default retry would hide an outage.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=max(1, round(heartbeat)),
        )
        self.presence = RedisPresence(self._redis, channel_prefix, self.node_id, heartbeat)
        self.shared = (
            RedisHistory(history_rules, self._redis, channel_prefix, self.channel)
            if history_rules
            else None
        )
        # bytes: a PUBLISH as is; (room, JSON): a message to stamp and keep first
        self._outbox: asyncio.Queue[bytes | tuple[str, bytes]] = asyncio.Queue(OUTBOX_MAX)
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = False
        self._up = False
        self._outage_since: float | None = None
        self._dropped_at_outage = 0
        self._full_logged_at = 0.0
        self._first_attempt = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings, registry: LocalRegistry) -> RedisBroker:
        b = settings.broker
        try:
            return cls(
                registry,
                b.url,
                channel_prefix=b.channel_prefix,
                heartbeat=b.heartbeat,
                history_rules=settings.history_rules(),
            )
        except ValueError as exc:  # redis-py's URL parser: a bad port, database, option
            raise ConfigError(
                f"{settings.source}: broker.url has value {redact(b.url)!r}; {exc}"
            ) from None

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
        data: bytes | tuple[str, bytes]
        if key is not None and self.shared is not None and self.shared.covers(key):
            if not self._up:
                self.dropped += 1
                return self._registry.send_to_room(key, message)
            delivered = self._registry.room_size(key)
            data = (key, message.data)
        else:
            delivered = self._deliver(key, namespace, message)
            if not self._up:
                self.dropped += 1
                return delivered
            data = b"\n".join((self._node_bytes, _target(key, namespace), message.data))
        try:
            self._outbox.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._full_logged_at > 10:
                self._full_logged_at = now
                log.warning(
                    "redis broker too slow: %d messages waiting; dropping cross-node messages",
                    OUTBOX_MAX,
                )
        return delivered

    async def _publisher(self) -> None:
        """Publish queued messages in order, many per round trip."""
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < BATCH_MAX and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                pipe = self._redis.pipeline(transaction=False)
                for data in batch:
                    if isinstance(data, bytes):
                        pipe.publish(self.channel, data)
                    else:
                        assert self.shared is not None
                        await self.shared.queue_append(pipe, *data)
                await pipe.execute()
            except BrokerErrors as exc:
                self.dropped += len(batch)
                self._set_down(exc)
            finally:
                for _ in batch:
                    self._outbox.task_done()

    # ------------------------------------------------------------ receiving
    async def _subscriber(self) -> None:
        """Stay subscribed: on any failure, mark the node degraded and retry with backoff."""
        delay = RETRY_FIRST
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed = True
                await self._write_counts()
                self._set_up()
                self._first_attempt.set()
                delay = RETRY_FIRST
                received = 0
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg["type"] == "message":
                        self._receive(msg["data"])
                        received += 1
                        if received % 64 == 0:
                            await asyncio.sleep(0)  # a busy channel must not starve clients
            except BrokerErrors as exc:
                self._subscribed = False
                self._set_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py lacks a hint
            self._first_attempt.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self.heartbeat, RETRY_FIRST))

    def _deliver(self, key: str | None, namespace: str | None, message: Encoded) -> int:
        registry = self._registry
        if key is not None:
            return registry.send_to_room(key, message)
        if namespace is not None:
            return registry.send_to_namespace(namespace, message)
        return registry.send_to_all(message)

    def _receive(self, data: bytes) -> None:
        node, _, rest = data.partition(b"\n")
        if node == self._node_bytes:
            return  # ours: delivered locally when it was sent
        try:
            if not node and self.shared is not None:  # stamped by Redis: everyone delivers
                key_b, epoch, seq, text = rest.split(b"\n", 3)
                key = key_b.decode()
                self.shared.deliver(
                    key, epoch.decode(), int(seq), RemoteEncoded(text), self._registry.members(key)
                )
                return
            target_b, _, text = rest.partition(b"\n")
            target = target_b.decode()
            message = RemoteEncoded(text)
            if not target:
                self._registry.send_to_all(message)
            elif target.endswith("#"):
                self._registry.send_to_namespace(target[:-1], message)
            else:
                self._registry.send_to_room(target, message)
        except Exception:  # one bad message (or client) must not stop the subscriber
            log.exception("could not deliver a message from node %r", node)

    # ------------------------------------------------------------ rooms and history
    def join(
        self, client: Client, key: str, since: Position | None = None
    ) -> Joined | Awaitable[Joined]:
        self._registry.group_add(key, client)
        shared = self.shared
        if shared is None or not shared.covers(key):
            return no_history(since)
        return shared.join(client, key, since)

    def history_covers(self, key: str) -> bool:
        return self.shared is not None and self.shared.covers(key)

    # ------------------------------------------------------------ counts and health
    async def _write_counts(self) -> None:
        counts = {"connections": self._registry.count(), "rooms": self._registry.rooms()}
        ttl_ms = int(self.heartbeat * TTL_HEARTBEATS * 1000)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self.key_prefix + self.node_id, json.dumps(counts), px=ttl_ms)
        pipe.sadd(self.nodes_key, self.node_id)
        await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if not self._subscribed:
                continue  # the subscriber is reconnecting; it writes the counts when it is back
            try:
                await self._write_counts()
            except BrokerErrors as exc:
                self._set_down(exc)
            else:
                self._set_up()

    def _set_up(self) -> None:
        if self._up or not self._subscribed:
            return
        self._up = True
        if self._outage_since is None:
            log.info(
                "redis broker connected at %s; this is node %s", redact(self.url), self.node_id
            )
            return
        log.warning(
            "redis broker reachable again after %.1f s; cross-node broadcasts resumed "
            "(%d cross-node messages were dropped meanwhile)",
            time.monotonic() - self._outage_since,
            self.dropped - self._dropped_at_outage,
        )
        self._outage_since = None

    def _set_down(self, exc: BaseException) -> None:
        self._up = False
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
        return "ok" if self._up else "degraded"

    async def cluster(self) -> ClusterView:
        """Counts of every live node (this one's are live, the others' a heartbeat old)."""
        if not self._up:
            raise BrokerUnavailable(self.node_id, f"redis unreachable at {redact(self.url)}")
        try:
            ids = sorted(_text(i) for i in await self._redis.smembers(self.nodes_key))
            values = await self._redis.mget([self.key_prefix + i for i in ids]) if ids else []
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
                await self._redis.srem(self.nodes_key, *gone)
        return ClusterView(self.node_id, nodes)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the background tasks; wait (briefly) for the first subscription attempt."""
        self._tasks = [
            asyncio.create_task(self._subscriber(), name="miaws-redis-subscriber"),
            asyncio.create_task(self._publisher(), name="miaws-redis-publisher"),
            asyncio.create_task(self._heartbeat(), name="miaws-redis-heartbeat"),
        ]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), READY_WAIT)

    async def close(self) -> None:
        """Publish what is queued (up to 1 s), leave the cluster view, close the connections."""
        if self._up:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._up:
            with contextlib.suppress(*BrokerErrors):
                pipe = self._redis.pipeline(transaction=True)
                pipe.delete(self.key_prefix + self.node_id)
                pipe.srem(self.nodes_key, self.node_id)
                await pipe.execute()
        self._up = self._subscribed = False
        await self._redis.aclose()
