"""Room history in Redis, shared by every node (``broker.type: redis`` with ``history.rooms``).

Per room (its key R, see :mod:`miaws.core.rooms`) three keys, all expiring ``ttl`` seconds
after the room's last message or join:

- ``{prefix}:hist:{R}:epoch`` - the epoch, a random string chosen when the history starts
  (after the keys expired, or Redis lost them: a new epoch, so old positions never resume);
- ``{prefix}:hist:{R}:seq`` - the room's last seq (``INCR``);
- ``{prefix}:hist:{R}`` - a stream of the last ``size`` messages; entry id ``{seq}-0``,
  fields ``m`` (the stamped JSON text) and ``t`` (Redis time in ms, for the ``ttl``).

A broadcast to such a room is not delivered by the sending node at once: the broker's ordered
publisher runs :data:`APPEND` (one Lua script, so atomic): it stamps the text with epoch and
seq, adds it to the stream and PUBLISHes it.  Every node, the sender's included, delivers it
when it comes back from pub/sub, so every node delivers a room's messages in seq order.

A join reads the position (and, with ``since``, the missed messages) with :data:`READ`.
Meanwhile the room's live messages for the joining client are held back; once this node's
subscriber has passed the position read, the reply, the missed messages and the held ones
newer than the position go out in that order, each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from miaws.core.history import HistoryRoom, Joined, Position, Rules
from miaws.core.model import Client, Encoded

__all__ = ["RedisHistory"]

CATCH_UP_WAIT = 1.0  # seconds a join waits for the subscriber to reach the position read
SEEN_MAX = 10_000  # rooms whose last received seq is remembered

# Both scripts start here: the room's epoch, or a new one (ARGV[1]) with its counter and
# stream emptied when the old epoch has expired.
EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
end
"""

APPEND = (
    EPOCH
    + """local seq = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = tostring(now[1]) .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
local text = string.sub(ARGV[2], 1, -2) .. ',"epoch":"' .. epoch .. '","seq":' .. seq .. '}'
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], seq .. '-0', 'm', text, 't', ms)
redis.call('SET', KEYS[1], epoch, 'PX', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('PUBLISH', KEYS[4], ARGV[5] .. epoch .. '\\n' .. seq .. '\\n' .. text)
return seq
"""
)

READ = (
    EPOCH
    + """redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local from = tonumber(ARGV[4])
local entries = {}
if ARGV[3] == epoch and from >= 0 and from < seq then
  entries = redis.call('XRANGE', KEYS[3], (from + 1) .. '-0', '+')
end
local now = redis.call('TIME')
return {epoch, seq, entries, now[1], now[2]}
"""
)


class RedisHistory:
    """The room history of a :class:`~miaws.broker.redis.RedisBroker`, shared by its nodes."""

    def __init__(
        self, rules: Sequence[HistoryRoom], redis: aioredis.Redis, prefix: str, channel: str
    ) -> None:
        self.rules = Rules(rules)
        self.prefix = f"{prefix}:hist:"
        self.channel = channel
        self._append = redis.register_script(APPEND)
        self._read = redis.register_script(READ)
        # room -> client -> live messages held back while that client joins
        self.held: dict[str, dict[Client, list[tuple[str, int, Encoded]]]] = {}
        self._seen: dict[str, tuple[str, int]] = {}  # room -> last (epoch, seq) received
        self._waiters: dict[str, list[tuple[str, int, asyncio.Future[None]]]] = {}

    def covers(self, room: str) -> bool:
        return self.rules.rule(room) is not None

    def _keys(self, room: str) -> list[str]:
        base = self.prefix + room
        return [base + ":epoch", base + ":seq", base]

    # ------------------------------------------------------------ sending
    async def queue_append(self, pipe: Any, room: str, data: bytes) -> None:
        """Queue on pipe the script that stamps, keeps and publishes one message."""
        rule = self.rules.rule(room)
        assert rule is not None
        header = b"\n" + room.encode() + b"\n"
        args: list[bytes | str | int] = [
            secrets.token_hex(6),
            data,
            rule.size,
            _ms(rule.ttl),
            header,
        ]
        await self._append(self._keys(room) + [self.channel], args, client=pipe)

    def deliver(
        self, room: str, epoch: str, seq: int, message: Encoded, targets: list[Client]
    ) -> None:
        """Deliver a stamped message that came back from pub/sub (holding it for joiners)."""
        if len(self._seen) >= SEEN_MAX and room not in self._seen:
            self._seen.clear()  # at worst a join then waits CATCH_UP_WAIT
        self._seen[room] = (epoch, seq)
        waiters = self._waiters.get(room)
        if waiters:
            for w_epoch, w_seq, future in waiters:
                if w_epoch == epoch and seq >= w_seq and not future.done():
                    future.set_result(None)
        held = self.held.get(room)
        for client in targets:
            buffer = held.get(client) if held else None
            if buffer is None:
                client.deliver(message)
            else:
                buffer.append((epoch, seq, message))

    # ------------------------------------------------------------ joining
    def join(self, client: Client, room: str, since: Position | None) -> Awaitable[Joined]:
        """Read room's position (and what client missed since ``since``) while holding back
        its live messages; the messages to send after the reply, in order, each once.

        The hold starts at once (the caller has just made client a member), not when the
        returned awaitable first runs."""
        buffer: list[tuple[str, int, Encoded]] = []
        self.held.setdefault(room, {})[client] = buffer
        return self._join(client, room, since, buffer)

    async def _join(
        self,
        client: Client,
        room: str,
        since: Position | None,
        buffer: list[tuple[str, int, Encoded]],
    ) -> Joined:
        rule = self.rules.rule(room)
        assert rule is not None
        holds = self.held[room]
        try:
            epoch_b, seq, entries, secs, micros = await self._read(
                self._keys(room),
                [
                    secrets.token_hex(6),
                    _ms(rule.ttl),
                    since.epoch if since else "",
                    since.seq if since else -1,
                ],
            )
            epoch = epoch_b.decode()
            await self._caught_up(room, epoch, seq)
        except (RedisError, OSError):
            return Joined(None, False if since else None, [_payload(m) for _, _, m in buffer])
        finally:
            del holds[client]
            if not holds:
                del self.held[room]
        missed: list[dict[str, Any]] | None = None
        if since is not None:
            now_ms = int(secs) * 1000 + int(micros) // 1000
            missed = _contiguous(entries, since, epoch, seq, now_ms - _ms(rule.ttl))
        newer = [_payload(m) for e, s, m in buffer if e != epoch or s > seq]
        recovered = None if since is None else missed is not None
        return Joined(Position(epoch, seq), recovered, (missed or []) + newer)

    async def _caught_up(self, room: str, epoch: str, seq: int) -> None:
        """Wait (briefly) until the subscriber has received the room's message seq."""
        seen = self._seen.get(room)
        if seq == 0 or (seen is not None and seen[0] == epoch and seen[1] >= seq):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(room, [])
        entry = (epoch, seq, future)
        waiters.append(entry)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(future, CATCH_UP_WAIT)
        finally:
            waiters.remove(entry)
            if not waiters:
                del self._waiters[room]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _payload(message: Encoded) -> dict[str, Any]:
    payload: dict[str, Any] = message.payload
    return payload


def _contiguous(
    entries: list[Any], since: Position, epoch: str, seq: int, oldest_ms: int
) -> list[dict[str, Any]] | None:
    """The messages after since when the stream still holds all of them, fresh; else None."""
    s_epoch, s_seq = since.epoch, since.seq
    if s_epoch != epoch or s_seq < 0 or s_seq > seq:
        return None
    if s_seq == seq:
        return []
    if len(entries) != seq - s_seq or not entries[0][0].startswith(f"{s_seq + 1}-".encode()):
        return None
    fields = dict(zip(entries[0][1][::2], entries[0][1][1::2], strict=True))
    if int(fields[b"t"]) < oldest_ms:
        return None  # the first missed message is older than the ttl
    out = []
    for _, raw in entries:
        fields = dict(zip(raw[::2], raw[1::2], strict=True))
        out.append(json.loads(fields[b"m"]))
    return out
