"""Plugins: loading, enabling, entry points, start-up errors, and one test per hook."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Connect
from helpers import eventually

from miaws.cli.check import Peer, expect_error, expect_type
from miaws.config import ConfigError, build_settings
from miaws.service import Service

ROOT = Path(__file__).resolve().parent.parent
ALL = ["ping", "echo", "broadcast", "rooms", "presence"]


def code_blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", markdown, re.S)


def write_plugin(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return directory


def settings_with(tmp_path: Path, extra: list[str], **sections: Any) -> Any:
    data = {"plugins": {"enabled": ALL + extra, "paths": [str(tmp_path / "p")]}, **sections}
    return build_settings(data, source="test", environ={})


async def test_docs_example_plugin_over_a_real_socket(tmp_path: Path, server_process: Any) -> None:
    """The shout example of docs/plugins.md, built from the page's own code, works as shown."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    (python,) = [b for b in code_blocks(doc, "python") if "handle_shout" in b]
    (schema,) = code_blocks(doc, "json")
    (config,) = code_blocks(doc, "yaml")
    write_plugin(tmp_path / "my_plugins", "shout", python)
    (tmp_path / "my_schemas").mkdir()
    (tmp_path / "my_schemas" / "shout.json").write_text(schema)
    server = server_process(config + "server:\n  host: 127.0.0.1\n")
    peer = await Peer.connect(server.url)
    try:
        reply = await peer.request({"type": "shout", "text": "hi", "times": 2, "id": 1})
        expect_type(reply, "shouted", text="HI HI", id=1)
        bad = await peer.request({"type": "shout", "times": 9})
        expect_error(bad, "invalid-message")
        assert bad["details"]["path"] == "/text"
        await peer.request({"type": "join-room", "room": "lobby"})
        await peer.send({"type": "shout", "text": "yo"})
        got = [await peer.recv(), await peer.recv()]
        assert sorted(m.get("from", "") for m in got) == ["", peer.welcome["clientId"]]
    finally:
        peer.close()


@pytest.mark.config({"plugins": {"enabled": ["ping", "rooms"]}})
async def test_disabled_plugin_type_is_unknown(ws_connect: Connect) -> None:
    """A built-in type whose plugin is not enabled answers unknown-type; enabled ones work."""
    peer = await ws_connect()
    expect_error(await peer.request({"type": "echo", "message": 1}), "unknown-type")
    expect_type(await peer.request({"type": "ping"}), "pong")


def test_enabled_plugin_that_does_not_exist(tmp_path: Path) -> None:
    """An enabled name with no plugin stops start-up, naming it and the available ones."""
    with pytest.raises(ConfigError, match=r"plugins.enabled has value 'nope'.*echo"):
        Service.from_settings(build_settings({"plugins": {"enabled": ["nope"]}}, environ={}))


def test_two_plugins_claiming_one_type(tmp_path: Path) -> None:
    """Two plugins registering one type stop start-up with both names."""
    write_plugin(
        tmp_path / "p",
        "pong2",
        """
        from miaws import MessageType, hookimpl
        @hookimpl
        def register_message_types():
            return [MessageType("ping", lambda ctx, m: {"type": "pong"})]
        """,
    )
    with pytest.raises(ConfigError, match=r"'ping'.*two plugins.*'ping'.*'pong2'|'pong2'.*'ping'"):
        Service.from_settings(settings_with(tmp_path, ["pong2"]))


def test_misspelt_hook_is_an_error(tmp_path: Path) -> None:
    """A hookimpl whose name matches no hook stops start-up (check_pending)."""
    write_plugin(
        tmp_path / "p",
        "typo",
        """
        from miaws import hookimpl
        @hookimpl
        def client_conected(client):
            pass
        """,
    )
    with pytest.raises(ConfigError, match=r"typo.*client_conected"):
        Service.from_settings(settings_with(tmp_path, ["typo"]))


def test_missing_schema_stops_startup(tmp_path: Path) -> None:
    """A type with no schema file stops start-up naming the file."""
    write_plugin(
        tmp_path / "p",
        "noschema",
        """
        from miaws import MessageType, hookimpl
        @hookimpl
        def register_message_types():
            return [MessageType("nothing", lambda ctx, m: None)]
        """,
    )
    with pytest.raises(ConfigError, match=r"no schema file nothing.json"):
        Service.from_settings(settings_with(tmp_path, ["noschema"]))


def test_invalid_schema_stops_startup(tmp_path: Path) -> None:
    """A schema file that is not valid JSON Schema stops start-up naming the file."""
    schemas = tmp_path / "s"
    schemas.mkdir()
    (schemas / "echo.json").write_text(json.dumps({"type": "objekt"}))
    with pytest.raises(ConfigError, match=r"echo.json: not a valid JSON Schema"):
        Service.from_settings(build_settings({"schemas": {"path": str(schemas)}}, environ={}))
    (schemas / "echo.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"echo.json: not a readable JSON file"):
        Service.from_settings(build_settings({"schemas": {"path": str(schemas)}}, environ={}))


def test_plugin_not_enabled_is_never_imported(tmp_path: Path) -> None:
    """A plugin file that is not enabled is not imported (its import error does not matter)."""
    write_plugin(tmp_path / "p", "broken", "raise SystemExit('imported!')\n")
    service = Service.from_settings(settings_with(tmp_path, []))
    assert "broken" not in [p["name"] for p in service.registry.plugins_info()]


def test_entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package's entry point in group 'miaws' is a plugin named by the entry point."""
    site = tmp_path / "site"
    write_plugin(
        site,
        "miaws_ep_demo",
        """
        from miaws import MessageType, hookimpl
        @hookimpl
        def register_message_types():
            return [MessageType("demo", lambda ctx, m: {"type": "demoed"},
                                schema={"type": "object"})]
        """,
    )
    dist = site / "miaws_ep_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: miaws-ep-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[miaws]\ndemo = miaws_ep_demo\n")
    monkeypatch.syspath_prepend(str(site))
    blocked = Service.from_settings(build_settings({}, environ={}))
    assert "demo" not in blocked.registry.types
    enabled = build_settings({"plugins": {"enabled": ALL + ["demo"]}}, environ={})
    service = Service.from_settings(enabled)
    assert service.registry.types["demo"].plugin == "demo"


# ---------------------------------------------------------------- one test per hook

HOOK_RECORDER = """
from miaws import Forbidden, hookimpl

EVENTS = []

@hookimpl
def startup(service):
    EVENTS.append(("startup", service.connected_count()))

@hookimpl
def client_connected(client):
    EVENTS.append(("connected", client.client_id))

@hookimpl
def client_disconnected(client, code, reason):
    EVENTS.append(("disconnected", client.client_id, code, sorted(client.rooms)))

@hookimpl
def room_joined(client, room):
    EVENTS.append(("joined", client.client_id, room))

@hookimpl
def room_left(client, room):
    EVENTS.append(("left", client.client_id, room))

@hookimpl
def authorize_message(client, message):
    if message.get("room") == "vip":
        return False
    if message.get("room") == "secret":
        raise Forbidden("secret rooms are closed")
    return None
"""


@pytest.fixture
def config_data(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The recorder plugin below is enabled unless a test gives its own config."""
    marker = request.node.get_closest_marker("config")
    if marker:
        return dict(marker.args[0])
    write_plugin(tmp_path / "p", "recorder", HOOK_RECORDER)
    return {"plugins": {"enabled": ALL + ["recorder"], "paths": [str(tmp_path / "p")]}}


def recorder_events() -> list[Any]:
    import sys

    events: list[Any] = sys.modules["miaws_plugin_recorder"].EVENTS
    return events


def test_hook_register_message_types(service: Service) -> None:
    """register_message_types of every enabled plugin fills the registry."""
    assert set(service.registry.types) == {
        "ping",
        "echo",
        "broadcast",
        "join-room",
        "leave-room",
        "presence",
    }


def test_hook_startup(service: Service) -> None:
    """startup is called once with the service, before any connection."""
    assert recorder_events()[0] == ("startup", 0)


async def test_hook_client_connected(ws_connect: Connect) -> None:
    """client_connected gets the new client."""
    peer = await ws_connect()
    assert ("connected", peer.welcome["clientId"]) in recorder_events()


async def test_hook_client_disconnected(ws_connect: Connect, service: Service) -> None:
    """client_disconnected gets the client, its close code, and the rooms it was in."""
    peer = await ws_connect()
    await peer.request({"type": "join-room", "room": "r"})
    peer.conn.close(1000)
    await eventually(lambda: service.connected_count() == 0)
    assert ("disconnected", peer.welcome["clientId"], 1000, ["r"]) in recorder_events()


async def test_hook_room_joined(ws_connect: Connect) -> None:
    """room_joined: once per room a client becomes a member of (a second join: nothing)."""
    peer = await ws_connect()
    me = peer.welcome["clientId"]
    for _ in range(2):
        expect_type(await peer.request({"type": "join-room", "room": "r1"}), "room-joined")
    assert [e for e in recorder_events() if e[0] == "joined" and e[1] == me] == [
        ("joined", me, "r1")
    ]


async def test_hook_room_left(ws_connect: Connect, service: Service) -> None:
    """room_left: on leave-room, and for every room on a disconnect, before
    client_disconnected."""
    peer = await ws_connect()
    me = peer.welcome["clientId"]
    for room in ("a", "b", "c"):
        await peer.request({"type": "join-room", "room": room})
    expect_type(await peer.request({"type": "leave-room", "room": "a"}), "room-left")
    assert recorder_events()[-1] == ("left", me, "a")
    peer.conn.close(1000)
    await eventually(lambda: service.connected_count() == 0)
    mine = [e for e in recorder_events() if e[1] == me and e[0] in ("left", "disconnected")]
    assert mine[0] == ("left", me, "a") and sorted(mine[1:3]) == [
        ("left", me, "b"),
        ("left", me, "c"),
    ]
    assert mine[3:] == [("disconnected", me, 1000, ["b", "c"])]


async def test_hook_authorize_message(ws_connect: Connect) -> None:
    """authorize_message: False or Forbidden deny with error forbidden; None allows."""
    peer = await ws_connect()
    reply = await peer.request({"type": "join-room", "room": "vip", "id": 1})
    expect_error(reply, "forbidden", id=1)
    reply = await peer.request({"type": "join-room", "room": "secret"})
    expect_error(reply, "forbidden", message="secret rooms are closed")
    expect_type(await peer.request({"type": "join-room", "room": "open"}), "room-joined")


NOTICE_PLUGIN = """
from miaws import MessageType, hookimpl

def handle_notice(ctx, message):
    ctx.broadcast({"type": "notice", "text": message["text"]}, message["room"])

@hookimpl
def register_message_types():
    return [MessageType("notice", handle_notice, schema={"type": "object"})]
"""


async def test_plugin_room_broadcast_names_the_room(tmp_path: Path, server_process: Any) -> None:
    """Defect 16.8: ctx.broadcast(payload, room) adds "room", as the built-in broadcast's
    messages have it.  Before the fix a plugin's room broadcast carried no room."""
    write_plugin(tmp_path / "p", "notice", NOTICE_PLUGIN)
    config = (
        f"plugins:\n  enabled: [ping, rooms, notice]\n  paths: [{tmp_path / 'p'}]\n"
        "server:\n  host: 127.0.0.1\n"
    )
    peer = await Peer.connect(server_process(config).url)
    try:
        await peer.request({"type": "join-room", "room": "lobby"})
        await peer.send({"type": "notice", "text": "hi", "room": "lobby"})
        got = await peer.recv()
        assert got["room"] == "lobby" and list(got) == ["type", "text", "room", "timestamp"]
    finally:
        peer.close()
