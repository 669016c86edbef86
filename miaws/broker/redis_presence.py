"""Presence shared by every node through Redis (the Redis broker's :class:`PresenceStore`).

The same four steps as :class:`miaws.core.presence.MemoryPresence`, each one Lua script, so
that whichever node runs a step sees and changes the room's state at once: only one node can
find a room empty, an identity new, or a mark still standing, and that node alone reports the
event.  Every key of one room carries the hash tag ``{<prefix>:room:<key>}`` (one Redis Cluster
slot; a script touches one room only):

- ``…:c:<node>`` hash: client id -> member (``identity \\n client \\n =user \\n since``) of
  that node's members;
- ``…:nodes`` set: nodes with members there; ``…:u`` hash: identity -> connections, all
  nodes; ``…:n``: connections, all nodes;
- ``…:gone`` hash: identity -> pending leave mark; ``…:vacating``: pending vacate mark.

Node keys (one slot each, never in a script with a room's keys): ``<prefix>:presence:nodes``
(every node that holds presence), ``<prefix>:presence:rooms:<node>`` (the rooms it has members
in), ``<prefix>:presence:pending:<node>`` (hash: mark token -> ``room key \\n ms``, the leaves
whose marks that node has yet to confirm) and ``<prefix>:presence:alive:<node>``, written every
half heartbeat with a time to live of :data:`ALIVE_HEARTBEATS`.  Every node checks a quarter
heartbeat apart whether the others' keys still live; the first to find one gone *sweeps* that
node's rooms: its members leave, as if they had left :data:`ALIVE_HEARTBEATS` heartbeats ago
(their node has been silent that long), so a killed node's members drop out, and its emptied
rooms are vacated, within three heartbeats (plus what of ``rooms.leave_delay`` is left).  The
sweeper also adopts the dead node's pending leaves (those of members that left before it died):
their marks still standing are confirmed by the sweeper once the rest of the delay has passed,
so a room a dead node's last member had left is still vacated, once.  A node that finds its own
key gone (Redis lost it, or others swept it during an outage) joins its members again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from miaws.broker.bus import BusErrors
from miaws.core.presence import (
    JoinResult,
    LeaveResult,
    LocalMembers,
    Member,
    Swept,
    decode_member,
    encode_member,
    identity,
    new_token,
)
from miaws.core.tasks import cancel_and_wait

__all__ = ["RedisPresence", "ALIVE_HEARTBEATS"]

log = logging.getLogger("miaws.broker")

ALIVE_HEARTBEATS = 2.5
"""A node whose alive key was not refreshed for this many heartbeats is gone."""
MARK_TTL_MS = 600_000  # a pending mark nobody confirmed (its node died) is forgotten then
BrokerErrors = BusErrors  # RedisClusterException too: a cluster with no node answering

# KEYS: c, nodes, u, n, gone, vacating   ARGV: node, client id, identity, member
_JOIN = """
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[4]) == 0 then return {0, 0} end
redis.call('SADD', KEYS[2], ARGV[1])
local joined = 0
if redis.call('HINCRBY', KEYS[3], ARGV[3], 1) == 1 then
  if redis.call('HDEL', KEYS[5], ARGV[3]) == 0 then joined = 1 end
end
local occupied = 0
if redis.call('INCR', KEYS[4]) == 1 then
  if redis.call('DEL', KEYS[6]) == 0 then occupied = 1 end
end
return {joined, occupied}
"""

# The shared tail of a leave and a sweep: one member (ARGV-like values) goes.
_GO = """
local function go(ident, mark, vacate, left)
  if redis.call('HINCRBY', KEYS[3], ident, -1) <= 0 then
    redis.call('HDEL', KEYS[3], ident)
    redis.call('HSET', KEYS[5], ident, mark)
    redis.call('PEXPIRE', KEYS[5], MARK_TTL)
    table.insert(left, mark)
  end
  if redis.call('DECR', KEYS[4]) <= 0 then
    redis.call('DEL', KEYS[4])
    redis.call('SET', KEYS[6], vacate, 'PX', MARK_TTL)
    return vacate
  end
  return false
end
""".replace("MARK_TTL", str(MARK_TTL_MS))

# KEYS: as _JOIN   ARGV: node, client id, identity, token
# -> {left marks, vacate mark or false, 1 if this node has no member left there}
_LEAVE = (
    _GO
    + """
local value = redis.call('HGET', KEYS[1], ARGV[2])
if not value then return {{}, false, 0} end
redis.call('HDEL', KEYS[1], ARGV[2])
local left = {}
local vacated = go(ARGV[3], ARGV[4] .. '\\n' .. value, ARGV[4], left)
local node_empty = 0
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1]); node_empty = 1
end
return {left, vacated, node_empty}
"""
)

# KEYS: as _JOIN for the dead node   ARGV: dead node, token
_SWEEP = (
    _GO
    + """
local members = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
local left = {}
local vacated = false
for i = 2, #members, 2 do
  local value = members[i]
  local ident = string.sub(value, 1, string.find(value, '\\n', 1, true) - 1)
  vacated = go(ident, ARGV[2] .. '\\n' .. value, ARGV[2], left) or vacated
end
return {left, vacated, 1}
"""
)

# KEYS: gone, vacating   ARGV: token -> {left marks of that leave still standing, vacate mark
# or false}: a dead node's pending leave, for its sweeper to confirm.
_STANDING = """
local left = {}
local marks = redis.call('HVALS', KEYS[1])
for i = 1, #marks do
  if string.sub(marks[i], 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then
    table.insert(left, marks[i])
  end
end
local vacated = false
if redis.call('GET', KEYS[2]) == ARGV[1] then vacated = ARGV[1] end
return {left, vacated, 0}
"""

# KEYS: gone   ARGV: identity, mark
_CONFIRM_LEFT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1]); return 1
end
return 0
"""

# KEYS: vacating   ARGV: mark
_CONFIRM_VACATED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]); return 1 end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisPresence:
    """Presence of every node sharing one Redis; see the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        node_id: str,
        heartbeat: float,
    ) -> None:
        self._redis = redis
        self.prefix = prefix
        self.node_id = node_id
        self.heartbeat = heartbeat
        self.nodes_key = f"{prefix}:presence:nodes"
        self.rooms_key = f"{prefix}:presence:rooms:"
        self.alive_key = f"{prefix}:presence:alive:"
        self.pending_key = f"{prefix}:presence:pending:"
        self._unconfirmed: dict[str, int] = {}  # token -> marks of this node's leave to confirm
        self._local_members: LocalMembers = list  # this node's members, for a re-join
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._sweep = redis.register_script(_SWEEP)
        self._standing = redis.register_script(_STANDING)
        self._confirm_left = redis.register_script(_CONFIRM_LEFT)
        self._confirm_vacated = redis.register_script(_CONFIRM_VACATED)
        self._task: asyncio.Task[None] | None = None
        self._swept: Swept | None = None
        self._failing = False
        self._refreshed = False  # the alive key was written once
        self.sweeps = 0  # dead nodes this node swept (for tests and logs)

    def _keys(self, key: str, node: str) -> list[str]:
        tag = f"{{{self.prefix}:room:{key}}}"
        return [f"{tag}:c:{node}", f"{tag}:nodes", f"{tag}:u", f"{tag}:n", f"{tag}:gone",
                f"{tag}:vacating"]  # fmt: skip

    # ------------------------------------------------------------ the four steps
    async def join(self, key: str, member: Member) -> JoinResult:
        who = identity(member.client_id, member.user)
        keys = self._keys(key, self.node_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(self.rooms_key + self.node_id, key)
        await self._join(keys, [self.node_id, member.client_id, who, encode_member(member)], pipe)
        _, (joined, occupied) = await pipe.execute()
        return JoinResult(bool(joined), bool(occupied))

    async def leave(self, key: str, member: Member) -> LeaveResult:
        who = identity(member.client_id, member.user)
        keys = self._keys(key, self.node_id)
        token = new_token()
        pending = self.pending_key + self.node_id
        # Noted before the marks are set (same round trip), so a sweeper finds them however
        # soon this node dies; dropped again if the leave set none.
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(pending, token, f"{key}\n{int(time.time() * 1000)}")
        await self._leave(keys, [self.node_id, member.client_id, who, token], pipe)
        _, (left, vacated, node_empty) = await pipe.execute()
        marks = min(len(left), 1) + bool(vacated)
        if marks:
            self._unconfirmed[token] = marks
        if node_empty or not marks:
            pipe = self._redis.pipeline(transaction=False)
            if node_empty:
                pipe.srem(self.rooms_key + self.node_id, key)
            if not marks:
                pipe.hdel(pending, token)
            await pipe.execute()
        return LeaveResult(_text(left[0]) if left else None, _text(vacated) if vacated else None)

    async def confirm_left(self, key: str, mark: str) -> bool:
        gone = self._keys(key, self.node_id)[4]
        pipe = self._redis.pipeline(transaction=False)
        await self._confirm_left([gone], [mark.split("\n", 2)[1], mark], pipe)
        self._settle(mark, pipe)
        return bool((await pipe.execute())[0])

    async def confirm_vacated(self, key: str, mark: str) -> bool:
        vacating = self._keys(key, self.node_id)[5]
        pipe = self._redis.pipeline(transaction=False)
        await self._confirm_vacated([vacating], [mark], pipe)
        self._settle(mark, pipe)
        return bool((await pipe.execute())[0])

    def _settle(self, mark: str, pipe: Any) -> None:
        """Drop the leave from this node's pending ones (in Redis, with the confirm script)
        once its last mark is being confirmed; a swept node's leave is not this node's."""
        token = mark.split("\n", 1)[0]
        count = self._unconfirmed.get(token)
        if count is not None:
            if count > 1:
                self._unconfirmed[token] = count - 1
            else:
                del self._unconfirmed[token]
                pipe.hdel(self.pending_key + self.node_id, token)

    async def members(self, key: str) -> list[Member]:
        """Members of every node whose alive key still stands."""
        nodes_key = self._keys(key, "")[1]
        nodes = sorted(_text(n) for n in await self._redis.smembers(nodes_key))
        if not nodes:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self.alive_key + node)
            pipe.hvals(self._keys(key, node)[0])
        found = await pipe.execute()
        members: list[Member] = []
        for i, node in enumerate(nodes):
            if found[2 * i] or node == self.node_id:
                members += [decode_member(_text(v)) for v in found[2 * i + 1]]
        return members

    # ------------------------------------------------------------ liveness and sweeping
    async def start(self, swept: Swept, local: LocalMembers) -> None:
        self._swept = swept
        self._local_members = local
        with contextlib.suppress(*BrokerErrors):
            await self._refresh()  # alive before the first join, or others would sweep it
        self._task = asyncio.create_task(self._watch(), name="miaws-redis-presence")

    async def close(self) -> None:
        """Stop watching; this node's members leave with its connections (clean stop)."""
        await cancel_and_wait([self._task])
        self._task = None
        with contextlib.suppress(*BrokerErrors):
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(self.alive_key + self.node_id)
            pipe.delete(self.pending_key + self.node_id)  # confirmed by the tracker's close
            pipe.srem(self.nodes_key, self.node_id)
            await pipe.execute()

    async def _watch(self) -> None:
        """Keep this node's alive key fresh; sweep the nodes whose key is gone."""
        period = self.heartbeat / 4
        beats = 0
        while True:
            try:
                if beats % 2 == 0:
                    await self._refresh()
                await self.sweep_dead()
                if self._failing:
                    self._failing = False
                    log.warning("redis presence reachable again")
            except BrokerErrors as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("redis presence unavailable (%s); retrying", exc)
            except Exception:  # a bug here must not end the watch
                log.exception("redis presence watch failed")
            beats += 1
            await asyncio.sleep(period)

    async def _refresh(self) -> None:
        ttl_ms = int(self.heartbeat * ALIVE_HEARTBEATS * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self.alive_key + self.node_id, int(time.time() * 1000), px=ttl_ms, get=True)
        pipe.sadd(self.nodes_key, self.node_id)
        previous, _ = await pipe.execute()
        if previous is None and self._refreshed:
            # Its key had gone: others may have swept this node's members.
            log.warning("this node's presence had expired in redis; joining its members again")
            for key, member in self._local_members():
                await self.join(key, member)
        self._refreshed = True

    async def sweep_dead(self) -> int:
        """Sweep every node whose alive key is gone; how many were swept."""
        nodes = [_text(n) for n in await self._redis.smembers(self.nodes_key)]
        others = [n for n in nodes if n != self.node_id]
        if not others:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for node in others:
            pipe.exists(self.alive_key + node)
        alive = await pipe.execute()
        dead = [n for n, up in zip(others, alive, strict=True) if not up]
        for node in dead:
            await self._sweep_node(node)
        return len(dead)

    async def _sweep_node(self, node: str) -> None:
        rooms = sorted(_text(k) for k in await self._redis.smembers(self.rooms_key + node))
        gone_for = self.heartbeat * ALIVE_HEARTBEATS
        for key in rooms:
            left, vacated, _ = await self._sweep(self._keys(key, node), [node, new_token()])
            result = LeaveResult(
                _text(left[0]) if left else None, _text(vacated) if vacated else None
            )
            if self._swept is not None:
                for mark in left[1:]:  # one identity per mark; the first rides with vacated
                    self._swept(key, LeaveResult(_text(mark), None), gone_for)
                if result != LeaveResult():
                    self._swept(key, result, gone_for)
        adopted = await self._adopt_pending(node, gone_for)
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self.rooms_key + node)
        pipe.delete(self.pending_key + node)
        pipe.srem(self.nodes_key, node)
        removed: Any = await pipe.execute()
        self.sweeps += 1
        log.warning(
            "node %s stopped refreshing its presence; its members left %d rooms%s%s",
            node,
            len(rooms),
            f", {adopted} pending leaves adopted" if adopted else "",
            "" if removed[2] else " (swept by another node too)",
        )

    async def _adopt_pending(self, node: str, gone_for: float) -> int:
        """Hand the dead node's pending leaves whose marks still stand to the tracker, to be
        confirmed once what is left of the delay has passed (the confirm scripts check the
        mark, so one confirmed or cancelled by a re-join meanwhile is not reported twice, and
        of several sweepers only one reports it); how many were adopted."""
        pending = await self._redis.hgetall(self.pending_key + node)
        now_ms = time.time() * 1000
        adopted = 0
        for raw_token, raw_value in sorted(pending.items()):
            token = _text(raw_token)
            key, _, at = _text(raw_value).rpartition("\n")
            left, vacated, _ = await self._standing(self._keys(key, node)[4:], [token])
            if not left and not vacated:
                continue
            adopted += 1
            if self._swept is None:
                continue
            since = max(gone_for, (now_ms - int(at)) / 1000 if at.isdigit() else 0.0)
            for mark in left[1:]:
                self._swept(key, LeaveResult(_text(mark), None), since)
            self._swept(
                key,
                LeaveResult(_text(left[0]) if left else None, _text(vacated) if vacated else None),
                since,
            )
        return adopted
