"""The sans-I/O core and the hub, with no socket: deterministic clock and ids."""

from __future__ import annotations

from typing import Any

import pytest

from miaws.config import build_settings
from miaws.core.clock import Clock, iso_timestamp
from miaws.core.dispatch import Dispatcher
from miaws.core.model import Client, Encoded, Outgoing
from miaws.core.plugins import build_registry
from miaws.core.rooms import MemoryHub, valid_room


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
def core() -> tuple[Dispatcher, MemoryHub]:
    hub = MemoryHub()
    return Dispatcher(
        build_registry(build_settings({}, environ={}).plugin_sources()), hub, FIXED
    ), hub


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


def test_ping_reply_is_deterministic(core: tuple[Dispatcher, MemoryHub]) -> None:
    """ping -> pong with the injected clock's time and the id copied."""
    dispatcher, _ = core
    out = dispatcher.handle(RecordingClient("c"), '{"type":"ping","id":42}')
    assert assert_reply(out) == {"type": "pong", "timestamp": "2023-11-14T22:13:20.500Z", "id": 42}


def test_broadcast_is_an_outgoing_not_a_send(core: tuple[Dispatcher, MemoryHub]) -> None:
    """The core returns the broadcast as Outgoing; nothing is sent by the core itself."""
    dispatcher, hub = core
    a = RecordingClient("a")
    hub.add(a)
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
def test_error_codes(core: tuple[Dispatcher, MemoryHub], text: str, code: str) -> None:
    """Each bad input gives its documented error code."""
    dispatcher, _ = core
    assert_error(dispatcher.handle(RecordingClient("c"), text), code)


def test_hub_rooms_and_cleanup() -> None:
    """The hub tracks membership both ways and forgets empty rooms and removed clients."""
    hub = MemoryHub()
    a, b = RecordingClient("a"), RecordingClient("b")
    hub.add(a)
    hub.add(b)
    assert hub.group_add("r", a) and not hub.group_add("r", a)
    hub.group_add("r", b)
    hub.group_add("s", b)
    assert hub.rooms() == {"r": 2, "s": 1} and b.rooms == {"r", "s"}
    assert hub.group_send("r", {"type": "x"}) == 2 and a.got == b.got == ['{"type":"x"}']
    hub.remove(b)
    assert hub.rooms() == {"r": 1} and hub.count() == 1
    assert not hub.group_discard("r", b) and hub.group_discard("r", a)
    assert hub.rooms() == {}


def test_broadcast_serialised_once() -> None:
    """Every recipient of one broadcast gets the very same encoded object."""
    seen: list[Encoded] = []

    class Keep(RecordingClient):
        def deliver(self, message: Encoded) -> None:
            seen.append(message)

    hub = MemoryHub()
    for i in range(5):
        hub.add(Keep(str(i)))
    hub.group_send(None, {"type": "broadcast", "message": "m"})
    assert len(seen) == 5 and len({id(m) for m in seen}) == 1


@pytest.mark.parametrize("name", ["a", "A-z_0.9:x", "x" * 64])
def test_valid_room_names(name: str) -> None:
    """1 to 64 characters of [A-Za-z0-9_.:-] are valid room names."""
    assert valid_room(name)


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "ü", "a\n", 5, None])
def test_invalid_room_names(name: Any) -> None:
    """Anything else is not."""
    assert not valid_room(name)
