"""miaws.testing: the plugin authors' harness, through the real core, with no socket."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from miaws.testing import PluginHarness

ROOT = Path(__file__).resolve().parent.parent


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "docs" / "plugins.md").read_text(), re.S)


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


async def test_docs_worked_test_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test shown in docs/plugins.md passes against the page's own shout plugin."""
    (plugin,) = [b for b in _blocks("python") if "handle_shout" in b]
    (schema,) = _blocks("json")
    (worked,) = [b for b in _blocks("python") if "PluginHarness" in b]
    _write(tmp_path / "my_plugins", "shout.py", plugin)
    _write(tmp_path / "my_schemas", "shout.json", schema)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(worked, "docs/plugins.md", "exec"), namespace)
    await namespace["test_shout"]()


def test_connect_records_the_welcome() -> None:
    """A new client is registered and has its welcome, with its own clientId."""
    harness = PluginHarness()
    alice = harness.connect(user="alice")
    assert [m["type"] for m in alice.received] == ["welcome"]
    assert alice.received[0]["clientId"] == alice.client_id
    assert harness.service.connected_count() == 1


async def test_async_handler_and_rooms(tmp_path: Path) -> None:
    """An async handler's reply comes back from send; a disconnect leaves its rooms."""
    plugin = _write(
        tmp_path,
        "slow.py",
        """
        import asyncio
        from miaws import MessageType, hookimpl

        async def handle(ctx, message):
            await asyncio.sleep(0)
            return {"type": "slowed", "n": message["n"] + 1}

        @hookimpl
        def register_message_types():
            schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
            return [MessageType("slow", handle, schema=schema)]
        """,
    )
    harness = PluginHarness.for_plugin(plugin)
    alice = harness.connect()
    (reply,) = await alice.send_json({"type": "slow", "n": 1, "id": "a"})
    assert reply["type"] == "slowed" and reply["n"] == 2 and reply["id"] == "a"
    (error,) = await alice.send_json({"type": "slow", "n": "x"})
    assert error["code"] == "invalid-message"
    await alice.send_json({"type": "join-room", "room": "r"})
    assert harness.service.rooms_info() == {"r": 1}
    harness.disconnect(alice)
    assert harness.service.rooms_info() == {} and harness.service.connected_count() == 0
    with pytest.raises(RuntimeError, match="closed"):
        await alice.send_json({"type": "ping"})


async def test_raw_text_and_a_raising_handler(tmp_path: Path) -> None:
    """Raw frames go through the JSON checks; a handler that raises closes 1011 and raises."""
    plugin = _write(
        tmp_path,
        "boom.py",
        """
        from miaws import MessageType, hookimpl

        def handle(ctx, message):
            raise ValueError("boom")

        @hookimpl
        def register_message_types():
            return [MessageType("boom", handle, schema={"type": "object"})]
        """,
    )
    harness = PluginHarness.for_plugin(plugin)
    alice = harness.connect()
    (error,) = await alice.send_text("{not json")
    assert error["code"] == "invalid-json"
    with pytest.raises(ValueError, match="boom"):
        await alice.send_json({"type": "boom"})
    assert alice.closed == (1011, "internal error")
    assert harness.service.connected_count() == 0
