"""MIAWS_TRACE_PLUGINS=1: every hook call is traced, the registration hooks included."""

from __future__ import annotations

import pytest

from miaws.config import build_settings
from miaws.core.plugins import build_registry


def test_trace_shows_every_hook_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """register_message_types goes through pluggy, so the trace shows it with its plugins."""
    monkeypatch.setenv("MIAWS_TRACE_PLUGINS", "1")
    registry = build_registry(build_settings({}, environ={}).plugin_sources())
    traced = [
        line for line in capsys.readouterr().err.splitlines() if "register_message_types" in line
    ]
    assert sorted(registry.types) == [
        "broadcast",
        "echo",
        "join-room",
        "leave-room",
        "ping",
        "presence",
    ]
    assert len(traced) == 5, traced  # one call per built-in plugin, each named
    for name in ("ping", "echo", "broadcast", "rooms", "presence"):
        assert any(f"'{name}'" in line for line in traced), (name, traced)


def test_no_trace_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the switch nothing is written."""
    monkeypatch.delenv("MIAWS_TRACE_PLUGINS", raising=False)
    build_registry(build_settings({}, environ={}).plugin_sources())
    assert "hook " not in capsys.readouterr().err
