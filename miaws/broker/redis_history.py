"""Room history in Redis, shared by every node (``broker.type: redis`` with ``history.rooms``).

Per room (its key R, see :mod:`miaws.core.rooms`) three keys, all expiring ``ttl`` seconds
after the room's last message or join, all in the slot of R's partition channel
(:class:`~miaws.broker.redis_keys.RedisKeys`, ``{prefix:pN}``), so each script touches one
slot and publishes there:

- ``{prefix:pN}:h:R:epoch`` - the epoch, a random string chosen when the history starts
  (after the keys expired, or Redis lost them: a new epoch, so old positions never resume);
- ``{prefix:pN}:h:R:seq`` - the room's last seq (``INCR``);
- ``{prefix:pN}:h:R`` - a stream of the last ``size`` messages; entry id ``{seq}-0``,
  fields ``m`` (the stamped JSON text) and ``t`` (Redis time in ms, for the ``ttl``).

A broadcast to such a room is not delivered by the sending node at once: the broker's ordered
publisher runs :data:`APPEND` (one Lua script, so atomic): it stamps the text with epoch and
seq, adds it to the stream and PUBLISHes it.  Every node, the sender's included, delivers it
when it comes back from pub/sub, so every node delivers a room's messages in seq order.

The server's own events in such a room (``member-joined``, ``member-left``) are published on
the same channel by the same ordered publisher, as ``\\n room \\n \\n 0 \\n text``: an empty
epoch, no script.  They keep their place among the room's messages on every node (and are held
for joiners like them), but take no seq and are not kept.

A join reads the position (and, with ``since``, the missed messages) with :data:`READ`.
Meanwhile the room's live messages for the joining client are held back; once this node's
subscriber has passed the position read, the reply, the missed messages and the held ones
newer than the position go out in that order, each once.

This node remembers the last (epoch, seq) it delivered of each room with local members.  A
message at or below it is a duplicate and is not delivered again.  After the subscription
was lost and made again, :meth:`RedisHistory.backfill` reads each such room's stream from
there and delivers what the node missed, in order, before the live messages that came
meanwhile; where the stream no longer holds all of it (trimmed, expired, or a new epoch
because Redis lost the keys) the room's members get a ``gap`` message first:
``{"type": "gap", "room": R, "epoch": E, "seq": S}``: messages before (E, S) were lost, and
the messages after S follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from miaws.broker.bus import Bus, BusErrors, Call
from miaws.broker.redis_keys import RedisKeys
from miaws.broker.remote import RemoteEncoded
from miaws.core.clock import iso_timestamp
from miaws.core.history import HistoryRoom, Joined, Position, Rules
from miaws.core.model import Client, Encoded
from miaws.core.rooms import split_key

__all__ = ["RedisHistory"]

CATCH_UP_WAIT = 1.0  # seconds a join waits for the subscriber to reach the position read
READY_WAIT = 2.0  # seconds a join waits for its partition's subscription before reading

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
redis.call(ARGV[6], KEYS[4], ARGV[5] .. epoch .. '\\n' .. seq .. '\\n' .. text)
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
        self,
        rules: Sequence[HistoryRoom],
        bus: Bus,
        keys: RedisKeys,
        members: Callable[[str], list[Client]],
    ) -> None:
        self.rules = Rules(rules)
        self.members = members  # a room's local members now
        self.bus = bus
        self.keys = keys
        self._append = bus.script(APPEND)
        self._read = bus.script(READ)
        # room -> client -> live messages held back while that client joins
        self.held: dict[str, dict[Client, list[tuple[str, int, Encoded]]]] = {}
        self._seen: dict[str, tuple[str, int]] = {}  # room -> last (epoch, seq) delivered
        self._waiters: dict[str, list[tuple[str, int, asyncio.Future[None]]]] = {}
        # room -> live messages that came while its backfill reads the stream
        self._backfilling: dict[str, list[tuple[str, int, Encoded]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.gaps = 0  # gap messages sent (one per room and loss)
        self.lost = 0  # messages known lost to this node's members (a gap's extent)
        self.duplicates = 0  # messages received twice (backfill and live overlapping)

    def covers(self, room: str) -> bool:
        return self.rules.rule(room) is not None

    # ------------------------------------------------------------ sending
    def append(self, room: str, data: bytes) -> Call:
        """The script call that stamps, keeps and publishes one message."""
        rule = self.rules.rule(room)
        assert rule is not None
        header = b"\n" + room.encode() + b"\n"
        args: list[bytes | str | int] = [
            secrets.token_hex(6),
            data,
            rule.size,
            _ms(rule.ttl),
            header,
            self.bus.publish_command,
        ]
        return Call(self._append, self.keys.history(room) + [self.keys.room_channel(room)], args)

    def deliver(
        self, room: str, epoch: str, seq: int, message: Encoded, targets: list[Client]
    ) -> None:
        """Deliver a stamped message that came back from pub/sub (holding it for joiners).

        A duplicate of one delivered already is dropped; one that does not follow the last
        delivered (this node missed some, or the epoch changed) starts a backfill first.
        An empty epoch is the room's event (``member-joined``: not stamped, not in the
        stream): it keeps its place among the messages, held like them, and that is all."""
        if not epoch:
            pending = self._backfilling.get(room)
            if pending is not None:
                pending.append((epoch, seq, message))
            else:
                self._hand_out(room, epoch, seq, message, targets)
            return
        seen = self._seen.get(room)
        if seen is not None:
            if seen[0] == epoch and seq <= seen[1]:
                self.duplicates += 1
                return
            if (seen[0] != epoch or seq != seen[1] + 1) and room not in self._backfilling:
                self.backfill(room)
        pending = self._backfilling.get(room)
        if pending is not None:
            pending.append((epoch, seq, message))
            return
        self._deliver(room, epoch, seq, message, targets)

    def _deliver(
        self, room: str, epoch: str, seq: int, message: Encoded, targets: list[Client]
    ) -> None:
        self._seen[room] = (epoch, seq)
        waiters = self._waiters.get(room)
        if waiters:
            for w_epoch, w_seq, future in waiters:
                if w_epoch == epoch and seq >= w_seq and not future.done():
                    future.set_result(None)
        self._hand_out(room, epoch, seq, message, targets)

    def _hand_out(
        self, room: str, epoch: str, seq: int, message: Encoded, targets: list[Client]
    ) -> None:
        """Send message to targets, or to the buffer of a target that is joining."""
        held = self.held.get(room)
        for client in targets:
            buffer = held.get(client) if held else None
            if buffer is None:
                client.deliver(message)
            else:
                buffer.append((epoch, seq, message))

    def forget(self, room: str) -> None:
        """room has no local member any more: its last position is no longer needed."""
        self._seen.pop(room, None)

    # ------------------------------------------------------------ after a lost subscription
    def backfill(self, room: str) -> None:
        """Deliver what this node missed of room since the last message it delivered, then
        what comes live meanwhile (held from now on); a ``gap`` first where the stream
        cannot cover it."""
        seen = self._seen.get(room)
        if seen is None or room in self._backfilling:
            return  # nothing delivered yet (a join is reading the position), or under way
        self._backfilling[room] = []
        task = asyncio.create_task(self._backfill(room, seen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _backfill(self, room: str, seen: tuple[str, int]) -> None:
        try:
            rule = self.rules.rule(room)
            assert rule is not None
            keys = self.keys.history(room)
            args: list[bytes | str | int] = [secrets.token_hex(6), _ms(rule.ttl)]
            reply = await self.bus.run(self._read, keys, [*args, seen[0], seen[1]])
            epoch, start = reply[0].decode(), seen[1]
            if epoch != seen[0]:  # Redis lost the history: the new epoch from its start
                reply = await self.bus.run(self._read, keys, [*args, epoch, 0])
                start = 0
            self._catch_up(room, seen, epoch, start, int(reply[1]), reply[2])
        except BusErrors:
            pass  # the subscription goes down too, and the next one backfills again
        finally:
            pending = self._backfilling.pop(room)
            for p_epoch, p_seq, message in pending:
                if room in self._backfilling:  # a jump among them started another
                    self._backfilling[room].append((p_epoch, p_seq, message))
                else:
                    self.deliver(room, p_epoch, p_seq, message, self.members(room))

    def _catch_up(
        self,
        room: str,
        seen: tuple[str, int],
        epoch: str,
        start: int,
        seq: int,
        entries: list[Any],
    ) -> None:
        messages = [(int(eid.split(b"-")[0]), _field(raw, b"m")) for eid, raw in entries]
        first = messages[0][0] if messages else seq + 1
        if epoch != seen[0] or first != start + 1:
            lost_to = first - 1
            self.gaps += 1
            self.lost += max(0, lost_to - start)  # known lost (an older epoch: unknown)
            _, name = split_key(room)
            gap = Encoded(
                {
                    "type": "gap",
                    "room": name,
                    "epoch": epoch,
                    "seq": lost_to,
                    "timestamp": iso_timestamp(time.time()),
                }
            )
            for client in self.members(room):
                if client not in self.held.get(room, {}):
                    client.deliver(gap)
            self._seen[room] = (epoch, lost_to)
            start = lost_to
        for m_seq, text in messages:
            if m_seq > start:
                self._deliver(room, epoch, m_seq, RemoteEncoded(text), self.members(room))
                start = m_seq

    # ------------------------------------------------------------ joining
    def join(
        self,
        client: Client,
        room: str,
        since: Position | None,
        ready: Awaitable[None] | None = None,
    ) -> Awaitable[Joined]:
        """Read room's position (and what client missed since ``since``) while holding back
        its live messages; the messages to send after the reply, in order, each once.

        ready, if given, is the subscription to the room's channel, awaited (briefly) first.
        The hold starts at once (the caller has just made client a member), not when the
        returned awaitable first runs."""
        buffer: list[tuple[str, int, Encoded]] = []
        self.held.setdefault(room, {})[client] = buffer
        return self._join(client, room, since, buffer, ready)

    async def _join(
        self,
        client: Client,
        room: str,
        since: Position | None,
        buffer: list[tuple[str, int, Encoded]],
        ready: Awaitable[None] | None,
    ) -> Joined:
        rule = self.rules.rule(room)
        assert rule is not None
        holds = self.held[room]
        try:
            if ready is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ready), READY_WAIT)
            epoch_b, seq, entries, secs, micros = await self.bus.run(
                self._read,
                self.keys.history(room),
                [
                    secrets.token_hex(6),
                    _ms(rule.ttl),
                    since.epoch if since else "",
                    since.seq if since else -1,
                ],
            )
            epoch = epoch_b.decode()
            await self._caught_up(room, epoch, seq)
            if room not in self._seen:
                self._seen[room] = (epoch, seq)  # the position this node's members are at
        except BusErrors:
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


def _field(raw: list[bytes], name: bytes) -> bytes:
    """One field of a stream entry's flat [name, value, ...] list."""
    return raw[raw.index(name) + 1]


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
