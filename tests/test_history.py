"""Room history on its own: seq, epoch, size, ttl, and what ``since`` can and cannot give."""

from __future__ import annotations

import pytest

from miaws.config import ConfigError, build_settings
from miaws.core.history import HistoryRoom, MemoryHistory, Position


class Clock:
    """Monotonic seconds that the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(size: int = 3, ttl: float = 10.0) -> tuple[MemoryHistory, Clock]:
    clock = Clock()
    return MemoryHistory([HistoryRoom("feed.*", size, ttl), HistoryRoom("*", 1, 1)], clock), clock


def test_seq_counts_per_room_and_stamps_a_copy() -> None:
    """Each covered room counts its own messages from 1; the kept copy carries epoch and
    seq, and the caller's dict is left alone (it may go to another room next)."""
    h, _ = make()
    original = {"n": 0}
    a = [h.append("feed.a", original)] + [h.append("feed.a", {"n": i}) for i in (1, 2)]
    b = h.append("feed.b", original)
    assert original == {"n": 0}
    assert b["seq"] == 1
    assert [p["seq"] for p in a] == [1, 2, 3]
    assert a[0]["epoch"] == a[2]["epoch"] != b["epoch"]
    assert h.position("feed.a") == Position(a[0]["epoch"], 3)


def test_first_matching_rule_applies() -> None:
    """feed.x gets the feed.* rule (size 3); other rooms the catch-all (size 1)."""
    h, _ = make()
    assert h.rule("feed.x") == HistoryRoom("feed.*", 3, 10.0)
    assert h.rule("other") == HistoryRoom("*", 1, 1.0)
    assert not MemoryHistory([HistoryRoom("feed.*")]).covers("other")


def test_since_gives_what_follows_or_none() -> None:
    """since() returns the kept messages after seq, [] when up to date, None for a gap."""
    h, _ = make(size=3)
    for i in range(5):
        h.append("feed.a", {"n": i})
    epoch = h.position("feed.a").epoch
    assert [p["seq"] for p in h.since("feed.a", epoch, 2) or []] == [3, 4, 5]
    assert h.since("feed.a", epoch, 4) == [{"n": 4, "epoch": epoch, "seq": 5}]
    assert h.since("feed.a", epoch, 5) == []
    assert h.since("feed.a", epoch, 1) is None  # message 2 is gone (size 3)
    assert h.since("feed.a", epoch, 6) is None  # from the future
    assert h.since("feed.a", "other-epoch", 5) is None


def test_ttl_expires_messages() -> None:
    """Messages older than ttl cannot be recovered, even within size."""
    h, clock = make(size=100, ttl=10)
    h.append("feed.a", {"n": 1})
    clock.t += 6
    h.append("feed.a", {"n": 2})
    epoch = h.position("feed.a").epoch
    clock.t += 5  # message 1 is 11 s old, message 2 is 5 s old
    assert h.since("feed.a", epoch, 0) is None
    assert [p["n"] for p in h.since("feed.a", epoch, 1) or []] == [2]


def test_room_untouched_past_ttl_starts_a_new_epoch() -> None:
    """A room idle longer than its ttl loses its counter: a new epoch from seq 1."""
    h, clock = make(ttl=10)
    h.append("feed.a", {})
    old = h.position("feed.a").epoch
    clock.t += 11
    h.append("feed.b", {})  # any activity forgets idle rooms
    assert h.rooms() == 1
    assert h.append("feed.a", {})["epoch"] != old
    assert h.position("feed.a").seq == 1
    assert h.since("feed.a", old, 1) is None


@pytest.mark.parametrize(
    "rooms, fragment",
    [
        ([{"match": "x", "size": 0}], "history.rooms[0]"),
        ([{"match": "x", "ttl": 0}], "history.rooms[0]"),
        ([{"match": "", "size": 3}], "history.rooms[0]"),
        ([{"match": "x", "size": "big"}], "history.rooms[0].size has value 'big'"),
        ([{"match": "x", "sise": 3}], "history.rooms[0].sise is not a known setting"),
        ([{"size": 3}], "history.rooms[0] has value {'size': 3}; expected the fields match"),
        ("feed.*", "history.rooms has value"),
    ],
)
def test_bad_history_config_names_the_key(rooms: object, fragment: str) -> None:
    """A wrong history.rooms entry stops start-up with a one-line error naming it."""
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        build_settings({"history": {"rooms": rooms}}, source="test", environ={})


def test_history_config_is_read() -> None:
    """history.rooms builds HistoryRoom rules, with defaults for size and ttl."""
    s = build_settings(
        {"history": {"rooms": [{"match": "a*"}, {"match": "b", "size": 5, "ttl": 2}]}}
    )
    assert s.history.rooms == [HistoryRoom("a*", 100, 300.0), HistoryRoom("b", 5, 2.0)]
    assert build_settings({}).history.rooms == []


def test_rules_match_the_room_name_of_a_namespaced_key() -> None:
    """Rules name rooms as clients do: feed.x of /chat (key /chat#feed.x) is covered, and
    its history is not that of feed.x in /."""
    h = MemoryHistory([HistoryRoom("feed.*", 5, 10.0)])
    assert h.covers("/chat#feed.x") and h.covers("feed.x") and not h.covers("/chat#other")
    h.append("feed.x", {"n": 1})
    assert h.position("/chat#feed.x").seq == 0 and h.position("feed.x").seq == 1
