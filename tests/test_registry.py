"""The local registry on its own: clients per namespace, rooms by key, local delivery, and
the first-member / last-member events a broker or presence can listen to."""

from __future__ import annotations

from miaws.core.model import Client, Encoded
from miaws.core.registry import LocalRegistry


class Recorder(Client):
    __slots__ = ("got",)

    def __init__(self, client_id: str, namespace: str = "/") -> None:
        super().__init__(client_id, "test", namespace=namespace)
        self.got: list[Encoded] = []

    def deliver(self, message: Encoded) -> None:
        self.got.append(message)


class Events:
    """A RoomListener that writes down what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def room_occupied(self, key: str) -> None:
        self.seen.append(("occupied", key))

    def room_vacated(self, key: str) -> None:
        self.seen.append(("vacated", key))


def test_delivery_targets_and_one_encoding() -> None:
    """A namespace's clients, a room key's members, or everyone; each gets the same object."""
    registry = LocalRegistry()
    root, chat1, chat2 = Recorder("r"), Recorder("c1", "/chat"), Recorder("c2", "/chat")
    for client in (root, chat1, chat2):
        registry.add(client)
    registry.group_add("/chat#lobby", chat1)
    message = Encoded({"type": "x"})
    assert registry.send_to_namespace("/chat", message) == 2
    assert registry.send_to_namespace("/game", message) == 0
    assert registry.send_to_room("/chat#lobby", message) == 1
    assert registry.send_to_room("lobby", message) == 0
    assert registry.send_to_all(message) == 3
    assert [len(c.got) for c in (root, chat1, chat2)] == [1, 3, 2]
    assert {id(m) for c in (root, chat1, chat2) for m in c.got} == {id(message)}
    registry.remove(chat1)
    registry.remove(chat2)
    assert registry.send_to_namespace("/chat", message) == 0 and registry.rooms() == {}
    assert registry.count() == 1 and registry.get("r") is root and registry.get("c1") is None


def test_listener_hears_first_member_and_last_member_only() -> None:
    """room_occupied when a key gets its first local member, room_vacated when it loses its
    last one (by leaving or by disconnecting); nothing for the members in between."""
    registry, events = LocalRegistry(), Events()
    registry.watch(events)
    a, b = Recorder("a"), Recorder("b")
    registry.add(a)
    registry.add(b)
    registry.group_add("r", a)
    registry.group_add("r", a)  # again: no change
    registry.group_add("r", b)
    registry.group_add("/chat#r", b)
    assert events.seen == [("occupied", "r"), ("occupied", "/chat#r")]
    registry.group_discard("r", a)
    assert events.seen[2:] == []
    registry.remove(b)  # its rooms empty out with it
    assert sorted(events.seen[2:]) == [("vacated", "/chat#r"), ("vacated", "r")]
    assert not registry.group_discard("r", b) and len(events.seen) == 4
