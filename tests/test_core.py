"""The sans-I/O core, the local registry and the memory broker, with no socket: deterministic
clock and ids."""

from __future__ import annotations

from typing import Any

import pytest

from miaws.broker.memory import MemoryBroker
from miaws.config import build_settings
from miaws.core.clock import Clock, iso_timestamp
from miaws.core.dispatch import Dispatcher
from miaws.core.model import Client, Encoded, Outgoing
from miaws.core.plugins import build_registry
from miaws.core.registry import LocalRegistry
from miaws.core.rooms import valid_room


class RecordingClient(Client):
    """A client that keeps what it is sent."""

    __slots__ = ("got",)

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id, "test")
        self.got: list[str] = []

    def deliver(self, message: Encoded) -> None:
        self.got.append(message.text)


FIXED = Clock(lambda: 1_700_000_000.5)


@pytest.fixture
def core() -> tuple[Dispatcher, LocalRegistry]:
    broker = MemoryBroker(LocalRegistry())
    return Dispatcher(
        build_registry(build_settings({}, environ={}).plugin_sources()), broker, FIXED
    ), broker.registry


def assert_reply(out: Any, **fields: Any) -> dict[str, Any]:
    assert isinstance(out, list) and len(out) == 1 and not out[0].broadcast
    payload: dict[str, Any] = out[0].payload
    for key, value in fields.items():
        assert payload.get(key) == value, payload
    return payload


def assert_error(out: Any, code: str) -> dict[str, Any]:
    return assert_reply(out, type="error", code=code)


def test_iso_timestamp_like_javascript() -> None:
    """Timestamps read like JavaScript's toISOString()."""
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert iso_timestamp(1_700_000_000.5) == "2023-11-14T22:13:20.500Z"
    assert iso_timestamp(1_700_000_000.999) == "2023-11-14T22:13:20.999Z"


def test_client_id_shape() -> None:
    """clientId is the ms epoch, a dash and 8 characters of [a-z0-9]."""
    cid = FIXED.new_client_id()
    head, tail = cid.split("-")
    assert head == "1700000000500" and len(tail) == 8 and tail.isalnum() and tail.lower() == tail


def test_ping_reply_is_deterministic(core: tuple[Dispatcher, LocalRegistry]) -> None:
    """ping -> pong with the injected clock's time and the id copied."""
    dispatcher, _ = core
    out = dispatcher.handle(RecordingClient("c"), '{"type":"ping","id":42}')
    assert assert_reply(out) == {"type": "pong", "timestamp": "2023-11-14T22:13:20.500Z", "id": 42}


def test_broadcast_is_an_outgoing_not_a_send(core: tuple[Dispatcher, LocalRegistry]) -> None:
    """The core returns the broadcast as Outgoing; nothing is sent by the core itself."""
    dispatcher, registry = core
    a = RecordingClient("a")
    registry.add(a)
    out = dispatcher.handle(a, '{"type":"broadcast","message":1}')
    assert out == [
        Outgoing(
            {"type": "broadcast", "message": 1, "from": "a", "timestamp": FIXED.timestamp()},
            True,
            None,
        )
    ]
    assert a.got == []


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "invalid-json"),
        ("{", "invalid-json"),
        ("[]", "invalid-message"),
        ('{"type":1}', "invalid-message"),
        ('{"type":"ping","id":1.0}', "invalid-message"),
        ('{"type":"ping","id":false}', "invalid-message"),
        ('{"type":"nope"}', "unknown-type"),
        ('{"type":"leave-room","room":"r"}', "not-in-room"),
        ('{"type":"broadcast","message":1,"room":"r"}', "not-in-room"),
    ],
)
def test_error_codes(core: tuple[Dispatcher, LocalRegistry], text: str, code: str) -> None:
    """Each bad input gives its documented error code."""
    dispatcher, _ = core
    assert_error(dispatcher.handle(RecordingClient("c"), text), code)


def test_registry_rooms_and_cleanup() -> None:
    """The registry tracks membership both ways and forgets empty rooms and removed clients."""
    registry = LocalRegistry()
    a, b = RecordingClient("a"), RecordingClient("b")
    registry.add(a)
    registry.add(b)
    assert registry.group_add("r", a) and not registry.group_add("r", a)
    registry.group_add("r", b)
    registry.group_add("s", b)
    assert registry.rooms() == {"r": 2, "s": 1} and b.rooms == {"r", "s"}
    assert registry.send_to_room("r", Encoded({"type": "x"})) == 2
    assert a.got == b.got == ['{"type":"x"}']
    registry.remove(b)
    assert registry.rooms() == {"r": 1} and registry.count() == 1
    assert not registry.group_discard("r", b) and registry.group_discard("r", a)
    assert registry.rooms() == {}


def test_broadcast_serialised_once() -> None:
    """Every recipient of one broadcast gets the very same encoded object."""
    seen: list[Encoded] = []

    class Keep(RecordingClient):
        def deliver(self, message: Encoded) -> None:
            seen.append(message)

    broker = MemoryBroker(LocalRegistry())
    for i in range(5):
        broker.registry.add(Keep(str(i)))
    broker.publish({"type": "broadcast", "message": "m"}, namespace="/")
    assert len(seen) == 5 and len({id(m) for m in seen}) == 1


@pytest.mark.parametrize("name", ["a", "A-z_0.9:x", "x" * 64])
def test_valid_room_names(name: str) -> None:
    """1 to 64 characters of [A-Za-z0-9_.:-] are valid room names."""
    assert valid_room(name)


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "ü", "a\n", 5, None])
def test_invalid_room_names(name: Any) -> None:
    """Anything else is not."""
    assert not valid_room(name)


def test_context_join_answers_from_the_memory_history_at_once() -> None:
    """With the memory broker ctx.join returns the Joined itself (no awaitable): the join,
    the position and the recovered messages come in one step, keyed by namespace."""
    from miaws import Joined, Position
    from miaws.core.context import Context
    from miaws.core.history import HistoryRoom, MemoryHistory

    broker = MemoryBroker(LocalRegistry(), MemoryHistory([HistoryRoom("feed", 10, 60)]))
    chat = RecordingClient("c")
    chat.namespace = "/chat"
    broker.registry.add(chat)
    ctx = Context(chat, broker, FIXED, None)
    first = ctx.join("feed")
    assert isinstance(first, Joined) and first.recovered is None and first.messages == []
    assert first.position is not None and first.position.seq == 0
    assert ctx.is_member("feed") and broker.registry.is_member("/chat#feed", chat)
    assert broker.publish({"type": "b", "n": 1}, "/chat#feed") == 1
    assert broker.publish({"type": "b", "n": 2}, "feed") == 0  # the room of "/" is another
    again = ctx.join("feed", since=Position(first.position.epoch, 0))
    assert isinstance(again, Joined) and again.recovered is True
    assert [m["n"] for m in again.messages] == [1] and again.position == Position(
        first.position.epoch, 1
    )
    plain = ctx.join("plain", since=Position("e", 3))
    assert plain == Joined(None, False, [])
    ctx.leave("feed")
    assert not ctx.is_member("feed") and broker.registry.rooms() == {"/chat#plain": 1}
