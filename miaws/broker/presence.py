"""The presence tracker: turns local joins and leaves into presence, events and webhooks.

It watches this node's registry (:meth:`~miaws.core.registry.LocalRegistry.watch_members`)
and, for every room whose rule asks for presence or join/leave events (or every room, when a
webhook wants room or member events), runs the steps of the broker's
:class:`~miaws.core.presence.PresenceStore`: a join at once, a leave at once and its
confirmation ``rooms.leave_delay`` later.  Whatever a step reports (see
:mod:`miaws.core.presence`) it reports once, on this node: ``member-joined`` /
``member-left`` sent to the room's members on every node (rules with ``join_leave``; by
:meth:`~miaws.broker.base.Broker.publish_event`, so never stamped nor kept in the room's
history), and lifecycle events handed to ``emit`` (the webhook sender).

The steps of one room key run one after the other on this node (a chain of tasks), so a
leave never overtakes its join and a ``presence`` request sees this node's joins before it.
A failing store (Redis down) is logged once per outage and counted; the events of that step
are lost, the connections are not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from miaws.core.model import Client
from miaws.core.presence import (
    LeaveResult,
    Member,
    PresenceStore,
    RoomRule,
    RoomRules,
    left_member,
)
from miaws.core.registry import LocalRegistry
from miaws.core.rooms import split_key

__all__ = ["PresenceTracker", "ROOM_EVENTS"]

log = logging.getLogger("miaws")

ROOM_EVENTS = frozenset({"room-occupied", "room-vacated", "member-added", "member-removed"})
"""Webhook events that need every room tracked."""

T = TypeVar("T")
Publish = Callable[[dict[str, Any], str], object]
Emit = Callable[[dict[str, Any]], None]


def _event(event: str, key: str, member: Member | None = None) -> dict[str, Any]:
    namespace, room = split_key(key)
    out: dict[str, Any] = {"event": event, "room": room}
    if namespace != "/":
        out["namespace"] = namespace
    if member is not None:
        out["clientId"] = member.client_id
        out["user"] = member.user
    return out


class PresenceTracker:
    """Presence of this node's rooms, kept in a store; see the module docstring."""

    def __init__(
        self,
        registry: LocalRegistry,
        store: PresenceStore,
        rules: RoomRules,
        *,
        leave_delay: float,
        cap: int,
        publish: Publish,
        emit: Emit | None = None,
        webhook_events: frozenset[str] = frozenset(),
        timestamp: Callable[[], str] = lambda: "",
    ) -> None:
        self.registry = registry
        self.store = store
        self.publish = publish
        self.emit = emit
        self.timestamp = timestamp
        self.configure(rules, leave_delay, cap, webhook_events)
        self._local: dict[tuple[str, str], Member] = {}  # (key, client id) -> member
        self._chains: dict[str, asyncio.Future[Any]] = {}
        self._timers: dict[asyncio.TimerHandle, Callable[[], None]] = {}
        self._soon: list[Callable[[], Coroutine[Any, Any, Any]]] = []  # synchronous steps
        self.errors = 0  # store steps that failed
        self._eager = bool(getattr(store, "synchronous", False))  # steps never wait
        self._failing = False
        registry.watch_members(self)

    def configure(
        self, rules: RoomRules, leave_delay: float, cap: int, webhook_events: frozenset[str]
    ) -> None:
        """Set the rules (a reload keeps them: they need a restart), the leave delay (for
        leaves from now on), the reply cap and the webhook events."""
        self.rules = rules
        self.leave_delay = leave_delay
        self.cap = cap
        self.webhook_events = webhook_events
        self._all_rooms = bool(webhook_events & ROOM_EVENTS)

    def rule(self, key: str) -> RoomRule | None:
        return self.rules.rule(key)

    def tracks(self, key: str) -> bool:
        if self._all_rooms:
            return True
        rule = self.rules.rule(key)
        return rule is not None and (rule.presence or rule.join_leave)

    # ------------------------------------------------------------ registry events
    def member_joined(self, key: str, client: Client) -> None:
        if not self.tracks(key):
            return
        member = Member(client.client_id, client.user, int(time.time() * 1000))
        self._local[(key, client.client_id)] = member
        self._chain(key, lambda: self._join(key, member))

    def member_left(self, key: str, client: Client) -> None:
        member = self._local.pop((key, client.client_id), None)
        if member is not None:
            self._chain(key, lambda: self._leave(key, member))

    def local_members(self) -> list[tuple[str, Member]]:
        """(key, member) of this node's tracked members (for a store re-joining them)."""
        return [(key, m) for (key, _), m in self._local.items()]

    # ------------------------------------------------------------ the steps
    async def _join(self, key: str, member: Member) -> None:
        result = await self.store.join(key, member)
        if result.occupied:
            self._emit(_event("room-occupied", key))
        if result.joined:
            rule = self.rules.rule(key)
            if rule is not None and rule.join_leave:
                self._publish("member-joined", key, member)
            self._emit(_event("member-added", key, member))

    async def _leave(self, key: str, member: Member) -> None:
        self.marked(key, await self.store.leave(key, member), 0.0)

    def marked(self, key: str, result: LeaveResult, gone_for: float) -> None:
        """Confirm a leave's marks once the rest of the delay has passed (also for the
        leaves a store found for a dead node, gone for ``gone_for`` seconds already)."""
        if result.left_mark is None and result.vacated_mark is None:
            return
        loop = asyncio.get_running_loop()

        def confirm() -> None:
            self._chain(key, lambda: self._confirm(key, result))

        def fire() -> None:
            self._timers.pop(handle, None)
            confirm()

        handle = loop.call_later(max(0.0, self.leave_delay - gone_for), fire)
        self._timers[handle] = confirm

    async def _confirm(self, key: str, result: LeaveResult) -> None:
        if result.left_mark is not None and await self.store.confirm_left(key, result.left_mark):
            member = left_member(result.left_mark)
            rule = self.rules.rule(key)
            if rule is not None and rule.join_leave:
                self._publish("member-left", key, member)
            self._emit(_event("member-removed", key, member))
        if result.vacated_mark is not None and await self.store.confirm_vacated(
            key, result.vacated_mark
        ):
            self._emit(_event("room-vacated", key))

    # ------------------------------------------------------------ reading
    async def members(self, key: str) -> tuple[list[Member], bool]:
        """Every member of the room key on every node, after this node's pending steps;
        ``(members, partial)``: partial when the store failed and only this node's members
        are listed."""
        try:
            return await self._read(key, lambda: self.store.members(key)), False
        except Exception as exc:
            self._failed(exc)
            return [m for (k, _), m in self._local.items() if k == key], True

    # ------------------------------------------------------------ machinery
    def _publish(self, kind: str, key: str, member: Member) -> None:
        payload = {
            "type": kind,
            "room": split_key(key)[1],
            "clientId": member.client_id,
            "user": member.user,
            "timestamp": self.timestamp(),
        }
        self.publish(payload, key)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.emit is not None and event["event"] in self.webhook_events:
            self.emit(event)

    def _chain(self, key: str, step: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run step after the room's earlier steps; a failure is counted and logged.

        A synchronous store's steps never wait: they are queued and run in one go once
        the current message is done (so the joiner's ``room-joined`` comes before its own
        ``member-joined``), with no task each: what a join costs on one node."""
        if self._eager:
            self._soon.append(step)
            if len(self._soon) == 1:
                asyncio.get_running_loop().call_soon(self._flush)
            return
        self._task(key, step, quiet=True)

    def _flush(self) -> None:
        """Run the queued steps of a synchronous store, in order."""
        soon, self._soon = self._soon, []
        for step in soon:
            coro = step()
            try:
                coro.send(None)
            except StopIteration:
                continue
            except Exception as exc:
                self._failed(exc)
                continue
            coro.close()
            raise RuntimeError(f"presence store {self.store!r} is synchronous but a step waited")

    async def _read(self, key: str, read: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """A read after every step of this node for key (quiet=False: errors raise)."""
        if self._eager:
            self._flush()
            return await read()
        return await self._task(key, read, quiet=False)

    def _task(
        self, key: str, step: Callable[[], Coroutine[Any, Any, T]], quiet: bool
    ) -> asyncio.Future[T]:
        before = self._chains.get(key)

        async def run() -> T:
            if before is not None:
                await asyncio.wait([before])
            try:
                return await step()
            except Exception as exc:
                if not quiet:
                    raise
                self._failed(exc)
                raise

        task: asyncio.Future[T] = asyncio.ensure_future(run())
        self._chains[key] = task

        def done(t: asyncio.Future[T]) -> None:
            if self._chains.get(key) is t:
                del self._chains[key]
            if not t.cancelled():
                t.exception()  # retrieved: logged by _failed already

        task.add_done_callback(done)
        return task

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "presence step failed (%s: %s); its events are lost", type(exc).__name__, exc
            )
            asyncio.get_running_loop().call_later(10.0, self._reset_failing)

    def _reset_failing(self) -> None:
        self._failing = False

    async def start(self) -> None:
        await self.store.start(self.marked, self.local_members)

    async def close(self) -> None:
        """The node stops: confirm pending leaves now (its members are gone for good) and
        wait (up to 2 s) for every room's steps."""
        for handle, confirm in list(self._timers.items()):
            handle.cancel()
            confirm()
        self._timers.clear()
        self._flush()
        pending: list[Awaitable[Any]] = list(self._chains.values())
        if pending:
            await asyncio.wait(pending, timeout=2.0)  # type: ignore[type-var]
        await self.store.close()
