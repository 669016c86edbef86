"""ClusterBus: the :class:`~miaws.broker.bus.Bus` on a Redis Cluster (``broker.type:
redis-cluster``).

Commands go over redis-py's asyncio :class:`~redis.asyncio.cluster.RedisCluster`, which keeps
the slot map, sends each command (EVALSHA included, by its first key) to the primary of its
slot and follows ``MOVED``; a batch is one cluster pipeline of ``SPUBLISH`` and ``EVAL``
commands (one round trip per primary; the order of one slot's commands is kept).  ``EVAL``
rather than ``EVALSHA`` in a batch: a replica promoted by a failover may not have the script
cached, and a ``NOSCRIPT`` in the middle of a batch would reorder its slot.

Pub/sub is sharded (``SSUBSCRIBE`` / ``SPUBLISH``, Redis 7+): each channel lives on the shard
that owns its slot, so the bus holds one :class:`~miaws.broker.sharded.ShardConnection` per
primary that owns a wanted channel, and subscribes each channel there, one slot per command
(Redis refuses ``SSUBSCRIBE`` across slots with ``CROSSSLOT``), at most
:data:`~miaws.broker.pubsub.CHANNELS_PER_COMMAND` channels a command.

Topology changes: a ``-MOVED`` answer to ``SSUBSCRIBE``, an ``sunsubscribe`` push the bus did
not ask for (Redis sends one for each channel of a slot whose primary became a replica or
whose slot moved), a connection that closes, or a :meth:`restart` (the broker's probe did
not come back) lose those channels: the listener is told (:meth:`BusListener.bus_down`, once
per loss), the bus reads the slot map again, subscribes them on their owner now, retrying
with backoff (0.05 s doubling up to ``retry_max``) until Redis confirmed every one, then
calls :meth:`BusListener.bus_up` (``again=True``) so the broker backfills what it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Collection, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import RedisCluster

from miaws.broker.bus import Bus, BusErrors, BusListener, Call, Confirmations, Publish
from miaws.broker.sharded import ShardConnection
from miaws.core.tasks import cancel_and_wait

__all__ = ["ClusterBus"]

log = logging.getLogger("miaws.broker")

RETRY_FIRST = 0.05  # seconds before the first repair after a topology change
PROBE_NAMES = 10_000  # suffixes tried to find the probe channels
PROBE_SPREAD = 16  # probe channels, one in each 1/16 of the slot space
SLOTS = 16384


def node_url(url: str, host: str, port: int) -> str:
    """url (scheme and credentials of the cluster) for one of its nodes."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(
        (parts.scheme, f"{auth}@{host}:{port}" if auth else f"{host}:{port}", "", "", "")
    )


class ClusterBus(Bus):
    """A Redis Cluster: a cluster command client and one sharded pub/sub connection per
    primary that owns a wanted channel."""

    publish_command = "SPUBLISH"

    def __init__(self, url: str, *, timeout: float = 2.0, retry_max: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_max = max(retry_max, RETRY_FIRST)
        self._redis = RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._wanted: set[str] = set()
        self._confirmations = Confirmations()
        self._where: dict[str, str] = {}  # channel -> "host:port" it was subscribed on
        self._conns: dict[str, ShardConnection] = {}
        self._stale: asyncio.Event | None = None
        self._refresh = False  # read the slot map again before the next alignment
        self._told_down = False  # bus_down called for this loss (or the first failed attempt)
        self._unlogged: dict[tuple[str, str], int] = {}  # (node, why) -> channels lost
        self._listener: BusListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Event | None = None
        self._up = False
        self._again = False
        self.repairs = 0  # slot map read again after a topology change

    @property
    def redis(self) -> RedisCluster:
        return self._redis

    # ------------------------------------------------------------ commands
    async def send(self, batch: Sequence[Publish | Call]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for item in batch:
            if isinstance(item, Publish):
                pipe.execute_command("SPUBLISH", item.channel, item.data)
            else:
                keys = list(item.keys)
                pipe.execute_command("EVAL", item.script.script, len(keys), *keys, *item.args)
        await pipe.execute()

    # ------------------------------------------------------------ subscriptions
    def subscribe(self, channels: Collection[str]) -> Awaitable[None]:
        for channel in channels:
            if channel not in self._wanted:
                self._wanted.add(channel)
                self._mark_stale()
        return self._confirmations.wait(channels)

    def unsubscribe(self, channels: Collection[str]) -> None:
        by_conn: dict[str, list[str]] = defaultdict(list)
        for channel in channels:
            if channel not in self._wanted:
                continue
            self._wanted.discard(channel)
            self._confirmations.drop(channel)
            where = self._where.pop(channel, None)
            if where is not None and where in self._conns:
                by_conn[where].append(channel)
        for where, names in by_conn.items():
            for slot_names in self._by_slot(names).values():
                with contextlib.suppress(ConnectionError):
                    self._conns[where].sunsubscribe(slot_names)

    def probe_channels(self, name: str) -> list[str]:
        """:data:`PROBE_SPREAD` channels (name with a suffix inside its hash tag), whose slots
        lie in as many even parts of the slot space, so that every primary of a cluster of up
        to that many shards with even slot ranges (``redis-cli --cluster create``) owns one
        and every shard connection is probed.  Chosen without the slot map (the broker asks
        before the bus has started), so a failover or a resharding leaves them valid."""
        stem = name[:-1] if name.endswith("}") else "{" + name
        found: dict[int, str] = {}
        for k in range(PROBE_NAMES):
            channel = f"{stem}:s{k}}}"
            found.setdefault(self._redis.keyslot(channel) * PROBE_SPREAD // SLOTS, channel)
            if len(found) == PROBE_SPREAD:
                break
        return [found[part] for part in sorted(found)]

    @property
    def subscribed(self) -> bool:
        return self._up

    def restart(self, reason: str) -> None:
        for conn in list(self._conns.values()):
            conn.fail(ConnectionError(reason))

    # ------------------------------------------------------------ keeping it right
    def _mark_stale(self, refresh: bool = False) -> None:
        self._refresh = self._refresh or refresh
        if self._stale is not None:
            self._stale.set()

    def _by_slot(self, channels: Iterable[str]) -> dict[int, list[str]]:
        slots: dict[int, list[str]] = defaultdict(list)
        for channel in channels:
            slots[self._redis.keyslot(channel)].append(channel)
        return slots

    def _owner(self, channel: str) -> str:
        node = self._redis.get_node_from_key(channel)
        if node is None:
            raise ConnectionError(f"no primary holds the slot of {channel!r}")
        return f"{node.host}:{node.port}"

    async def _run(self, listener: BusListener) -> None:
        """Whenever something changed, bring the subscriptions in line with the wanted set
        on the slot map; on a loss read the map again, retrying with backoff."""
        assert self._stale is not None and self._first_attempt is not None
        delay = RETRY_FIRST
        initialized = False
        while True:
            await self._stale.wait()
            self._stale.clear()
            self._log_losses()
            try:
                if not initialized or self._refresh:
                    self._refresh = False
                    if initialized:
                        self.repairs += 1
                    await self._redis.nodes_manager.initialize()
                    initialized = True
                await self._align()
            except (*BusErrors, asyncio.TimeoutError) as exc:
                self._down(exc)
                self._refresh = True
            if self._confirmations.confirmed >= self._wanted and not self._stale.is_set():
                if not self._up:
                    self._up, self._told_down = True, False
                    listener.bus_up(self._again)
                    self._again = True
                self._first_attempt.set()
                delay = RETRY_FIRST
                continue
            self._first_attempt.set()
            self._refresh = True  # refused or lost meanwhile: read the slot map again
            self._stale.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _align(self) -> None:
        """Subscribe every wanted channel that is not confirmed on its slot's owner now."""
        moves: dict[str, list[str]] = defaultdict(list)
        for channel in self._wanted:
            owner = self._owner(channel)
            where = self._where.get(channel)
            if where == owner and channel in self._confirmations.confirmed and owner in self._conns:
                continue
            if where is not None and where != owner and where in self._conns:
                with contextlib.suppress(ConnectionError):
                    self._conns[where].sunsubscribe([channel])
            self._confirmations.confirmed.discard(channel)
            self._where[channel] = owner
            moves[owner].append(channel)
        for owner, names in moves.items():
            conn = await self._connection(owner)
            for slot_names in self._by_slot(sorted(names)).values():
                conn.ssubscribe(slot_names)
            await conn.sync(self.timeout)  # every SSUBSCRIBE before it is answered

    async def _connection(self, owner: str) -> ShardConnection:
        conn = self._conns.get(owner)
        if conn is not None and not conn.closed.done():
            return conn
        host, _, port = owner.rpartition(":")
        assert self._listener is not None
        sub = await ShardConnection.open(
            node_url(self.url, host, int(port)), self._listener.bus_message, self.timeout
        )
        assert isinstance(sub, ShardConnection)
        sub.on_confirm = self._confirm
        sub.on_lost = lambda channel: self._lose(owner, [channel.decode()], "sunsubscribe")
        sub.on_refused = lambda text: self._refused(owner, text)
        sub.closed.add_done_callback(lambda _: self._closed(owner, sub))
        self._conns[owner] = sub
        return sub

    def _confirm(self, channel_b: bytes) -> None:
        channel = channel_b.decode()
        if channel in self._wanted:
            self._confirmations.confirm(channel)

    def _down(self, error: BaseException) -> None:
        """Once per loss (and once for a failed first attempt): tell the listener."""
        self._up = False
        if not self._told_down and self._listener is not None:
            self._told_down = True
            self._listener.bus_down(error)

    def _lose(self, owner: str, channels: list[str], why: str) -> None:
        lost = {c for c in channels if c in self._wanted}
        if not lost:
            return
        key = (owner, why)
        self._unlogged[key] = self._unlogged.get(key, 0) + len(lost)
        self._confirmations.confirmed -= lost
        for channel in lost:
            if self._where.get(channel) == owner:
                del self._where[channel]
        self._down(ConnectionError(f"{len(lost)} channel(s) lost on {owner} ({why})"))
        self._mark_stale(refresh=True)

    def _refused(self, owner: str, text: str) -> None:
        log.info("sharded pub/sub: %s refused a subscription: %s", owner, text)
        self._mark_stale(refresh=True)  # MOVED: the slot map is stale

    def _closed(self, owner: str, conn: ShardConnection) -> None:
        if self._conns.get(owner) is conn:
            del self._conns[owner]
        self._lose(owner, [c for c, w in self._where.items() if w == owner], "closed")

    def _log_losses(self) -> None:
        for (owner, why), count in self._unlogged.items():
            log.warning(
                "sharded pub/sub: %d channel(s) lost on %s (%s); reading the slot map again",
                count,
                owner,
                why,
            )
        self._unlogged.clear()

    # ------------------------------------------------------------ lifecycle
    async def start(self, listener: BusListener, wait: float) -> None:
        self._listener = listener
        self._stale = asyncio.Event()
        self._stale.set()
        self._first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._run(listener), name="miaws-cluster-subscriber")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), wait)

    async def close(self) -> None:
        self._wanted = set()  # what closes now is not lost
        await cancel_and_wait([self._task])
        self._task = None
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
        self._up = False
        self._confirmations.release_all()
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"ClusterBus({self.url!r})"
