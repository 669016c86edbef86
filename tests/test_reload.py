"""Live reconfiguration: POST /api/reload in-process and SIGHUP on a `miaws serve` process.

Connections stay open throughout; what changed is applied from the next message or the next
connection, and what cannot change live is reported as needing a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import yaml
from conftest import Connect
from helpers import ServerProcess
from http_backend import TestBackend, reply
from test_metrics import scrape

from miaws.cli.check import Peer, expect_error, expect_type
from miaws.service import Service

ALL = ["ping", "echo", "broadcast", "rooms", "presence"]


def write_config(path: Path, **sections: Any) -> None:
    path.write_text(yaml.safe_dump(sections))


async def reload(client: Any) -> tuple[int, dict[str, Any]]:
    response = await client.fetch("/api/reload", method="POST", body="", raise_error=False)
    return response.code, json.loads(response.body)


@pytest.fixture
def config_file(tmp_path: Path, service: Service) -> Path:
    """The file the running service reloads from (initially: all built-in plugins)."""
    path = tmp_path / "config.yaml"
    write_config(path, plugins={"enabled": ALL})
    service.config_path = path
    return path


async def test_reload_switches_a_plugin_off_without_dropping_connections(
    http_server_client: Any, ws_connect: Connect, service: Service, config_file: Path
) -> None:
    """Echo switched off: the same open connections now get unknown-type; others still work."""
    peers = [await ws_connect() for _ in range(3)]
    expect_type(await peers[0].request({"type": "echo", "message": 1}), "echo", original=1)
    write_config(config_file, plugins={"enabled": ["ping", "broadcast", "rooms"]})
    status, body = await reload(http_server_client)
    assert status == 200
    assert body["status"] == "reloaded" and body["applied"] == ["plugins.enabled"]
    assert body["restartRequired"] == []
    assert service.connected_count() == 3
    for peer in peers:
        expect_error(await peer.request({"type": "echo", "message": 1, "id": 7}), "unknown-type")
        expect_type(await peer.request({"type": "ping"}), "pong")
    plugins = json.loads((await http_server_client.fetch("/api/plugins")).body)
    assert {p["name"] for p in plugins} == {"ping", "broadcast", "rooms"}
    # ...and back on again.
    write_config(config_file, plugins={"enabled": ALL})
    assert (await reload(http_server_client))[1]["applied"] == ["plugins.enabled"]
    expect_type(await peers[1].request({"type": "echo", "message": 2}), "echo", original=2)


async def test_metrics_keep_counting_after_a_reload(
    http_server_client: Any, ws_connect: Connect, config_file: Path
) -> None:
    """Handled messages and errors are still counted in /metrics after a reload."""
    peer = await ws_connect()
    assert (await reload(http_server_client))[0] == 200
    expect_type(await peer.request({"type": "ping"}), "pong")
    expect_error(await peer.request({"type": "nope"}), "unknown-type")
    m = await scrape(http_server_client)
    assert m["miaws_messages_in_total", (("type", "ping"),)] == 1
    assert m["miaws_errors_total", (("code", "unknown-type"),)] == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("plugins: [unclosed\n", "not valid YAML"),
        ("plugins:\n  enabled: [ping, nosuchplugin]\n", "nosuchplugin"),
        ("heartbeat:\n  interval: soon\n", "heartbeat.interval"),
    ],
)
async def test_broken_file_is_refused_and_running_config_stays(
    http_server_client: Any,
    ws_connect: Connect,
    service: Service,
    config_file: Path,
    caplog: pytest.LogCaptureFixture,
    text: str,
    needle: str,
) -> None:
    """A broken file: 422 with the reason, one error log line, nothing changes."""
    caplog.set_level(logging.INFO, "miaws")
    peer = await ws_connect()
    before = service.settings
    config_file.write_text(text)
    status, body = await reload(http_server_client)
    assert status == 422 and body["status"] == "refused" and needle in body["error"]
    assert service.settings is before
    (line,) = [r for r in caplog.records if r.name == "miaws" and "reload" in r.getMessage()]
    assert line.levelno == logging.ERROR and needle in line.getMessage()
    expect_type(await peer.request({"type": "echo", "message": "still"}), "echo")


async def test_restart_only_settings_are_reported_and_kept(
    http_server_client: Any, ws_connect: Connect, service: Service, config_file: Path
) -> None:
    """Heartbeat, port and host changes need a restart: reported, not applied."""
    write_config(
        config_file,
        server={"port": 4999, "host": "127.0.0.2"},
        heartbeat={"interval": 5, "timeout": 5},
        plugins={"enabled": ALL},
    )
    status, body = await reload(http_server_client)
    assert status == 200 and body["applied"] == []
    assert body["restartRequired"] == [
        "server.host",
        "server.port",
        "heartbeat.interval",
        "heartbeat.timeout",
    ]
    assert service.settings.heartbeat.interval == 30 and service.settings.server.port == 3001


async def test_reload_applies_size_limit_to_new_connections(
    http_server_client: Any, ws_connect: Connect, config_file: Path
) -> None:
    """max_message_bytes applies to connections opened after the reload; open ones keep theirs."""
    old = await ws_connect()
    write_config(config_file, plugins={"enabled": ALL}, limits={"max_message_bytes": 200})
    assert (await reload(http_server_client))[1]["applied"] == ["limits.max_message_bytes"]
    big = {"type": "echo", "message": "x" * 300}
    expect_type(await old.request(big), "echo")
    new = await ws_connect()
    await new.send(big)
    assert await new.closed_with() == 1009


async def test_reload_switches_the_console_off(
    http_server_client: Any, service: Service, config_file: Path
) -> None:
    """console.enabled: false answers 404 at / after a reload."""
    assert (await http_server_client.fetch("/")).code == 200
    write_config(config_file, plugins={"enabled": ALL}, console={"enabled": False})
    assert (await reload(http_server_client))[1]["applied"] == ["console.enabled"]
    assert (await http_server_client.fetch("/", raise_error=False)).code == 404
    assert (await http_server_client.fetch("/console/console.js", raise_error=False)).code == 404


async def wait_for(server: Any, text: str, timeout: float = 10) -> str:
    for _ in range(int(timeout / 0.05)):
        if text in server.output():
            return str(server.output())
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not in the server log:\n{server.output()}")


async def test_sighup_reloads_plugins_and_log_format(server_process: Any) -> None:
    """SIGHUP on `miaws serve`: echo off and JSON logs, the open connection stays; the
    disconnect is then one JSON line with event, clientId, code, reason and duration."""
    server = server_process("server:\n  host: 127.0.0.1\n")
    peer = await Peer.connect(server.url)
    try:
        expect_type(await peer.request({"type": "echo", "message": 1}), "echo")
        cfg = next(Path(server.log_path).parent.glob(f"config-{server.port}.yaml"))
        cfg.write_text(
            "server:\n  host: 127.0.0.1\n  port: 1234\n"
            "plugins:\n  enabled: [ping, broadcast, rooms]\n"
            "logging:\n  format: json\n"
        )
        server.proc.send_signal(signal.SIGHUP)
        await wait_for(server, '"event": "reload"')
        expect_error(await peer.request({"type": "echo", "message": 1}), "unknown-type")
        expect_type(await peer.request({"type": "ping"}), "pong")
        cfg.write_text("plugins: [broken\n")
        server.proc.send_signal(signal.SIGHUP)
        await wait_for(server, "config reload refused")
        expect_type(await peer.request({"type": "ping"}), "pong")
    finally:
        peer.conn.close(1000, "bye")
    out = await wait_for(server, '"event": "disconnect"')
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    (reloaded,) = [x for x in lines if x["event"] == "reload"]
    assert reloaded["applied"] == ["plugins.enabled", "logging.format"]
    assert reloaded["restartRequired"] == []  # --port overrides the file's port, as at start
    (gone,) = [x for x in lines if x["event"] == "disconnect"]
    assert gone["clientId"] == peer.welcome["clientId"]
    assert (gone["code"], gone["reason"], gone["level"]) == (1000, "closed by client", "info")
    assert isinstance(gone["duration"], float) and gone["duration"] >= 0
    assert server.proc.poll() is None


async def test_plugin_failing_at_startup_is_refused(
    http_server_client: Any, ws_connect: Connect, service: Service, config_file: Path
) -> None:
    """A newly enabled plugin whose startup hook raises: refused, the old plugins stay."""
    plugin_dir = config_file.parent / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "boom.py").write_text(
        "from miaws import hookimpl\n\n"
        "@hookimpl\ndef startup(service):\n    raise RuntimeError('no database')\n"
    )
    peer = await ws_connect()
    write_config(config_file, plugins={"enabled": ["ping", "boom"], "paths": [str(plugin_dir)]})
    status, body = await reload(http_server_client)
    assert (status, body["error"]) == (422, "RuntimeError: no database")
    assert {p["name"] for p in service.registry.plugins_info()} == set(ALL)
    expect_type(await peer.request({"type": "echo", "message": 1}), "echo")


async def test_room_rules_need_a_restart(
    http_server_client: Any, ws_connect: Connect, service: Service, config_file: Path
) -> None:
    """rooms.rules giving presence and join_leave to team:* (#4): reported as needing a
    restart, not applied, so a room with members never answers presence without them."""
    peer = await ws_connect()
    expect_type(await peer.request({"type": "join-room", "room": "team:1"}), "room-joined")
    rules = [{"match": "team:*", "presence": True, "join_leave": True}]
    write_config(config_file, plugins={"enabled": ALL}, rooms={"rules": rules, "leave_delay": 0})
    status, body = await reload(http_server_client)
    assert (status, body["applied"]) == (200, ["rooms.leave_delay"])
    assert body["restartRequired"] == ["rooms.rules"]
    other = await ws_connect()
    for client, room in ((peer, "team:1"), (other, "team:2")):
        await client.request({"type": "join-room", "room": room})
        expect_error(await client.request({"type": "presence", "room": room}), "forbidden")
    assert service.settings.rooms.rules == [] and service.settings.rooms.leave_delay == 0


def keyed(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.config({"api": {"keys": ["old"]}})
@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ({"messages_per_second": float("inf")}, "limits.messages_per_second"),
        ({"messages_per_second": 10, "burst": 10**400}, "limits.burst"),
    ],
    ids=["inf-rate", "huge-burst"],
)
async def test_a_file_that_cannot_be_applied_is_refused_and_changes_nothing(
    http_server_client: Any,
    ws_connect: Connect,
    service: Service,
    config_file: Path,
    caplog: pytest.LogCaptureFixture,
    limits: dict[str, Any],
    key: str,
) -> None:
    """New api.keys plus limits the rate limiter cannot be built from (#1; config's checks
    now refuse them first): 422 refused naming the key, one refusal line; the old key still
    works, the new one does not."""
    caplog.set_level(logging.INFO, "miaws")
    peer = await ws_connect()
    write_config(config_file, api={"keys": ["new"]}, limits=limits, plugins={"enabled": ALL})
    response = await http_server_client.fetch(
        "/api/reload", method="POST", body="", headers=keyed("old"), raise_error=False
    )
    body = json.loads(response.body)
    assert (response.code, body["status"], body["applied"]) == (422, "refused", [])
    assert key in body["error"] and "Traceback" not in body["error"]
    (line,) = [r for r in caplog.records if r.name == "miaws" and "reload" in r.getMessage()]
    assert line.getMessage().startswith("config reload refused, running configuration kept")
    for key, code in (("old", 200), ("new", 403)):
        got = await http_server_client.fetch("/api/rooms", headers=keyed(key), raise_error=False)
        assert got.code == code, key
    for n in range(20):  # no rate limit came in either
        expect_type(await peer.request({"type": "echo", "message": n}), "echo")


async def test_reload_adds_changes_and_removes_the_join_backend(
    http_server_client: Any,
    ws_connect: Connect,
    config_file: Path,
    backend: TestBackend,
) -> None:
    """rooms.join_proxy_url set, changed and removed by reloads (#2): the next join of an
    open connection asks the new backend, or none."""
    backend.route("/deny", reply({"reason": "members only"}, 403))
    backend.route("/allow", reply(status=204))
    peer = await ws_connect()

    async def join_after(url: str | None, room: str) -> dict[str, Any]:
        write_config(config_file, plugins={"enabled": ALL}, rooms={"join_proxy_url": url})
        status, body = await reload(http_server_client)
        assert (status, body["applied"]) == (200, ["rooms.join_proxy_url"])
        assert body["restartRequired"] == []
        answer: dict[str, Any] = await peer.request({"type": "join-room", "room": room})
        return answer

    expect_error(await join_after(f"{backend.url}/deny", "a"), "forbidden", message="members only")
    expect_type(await join_after(f"{backend.url}/allow", "b"), "room-joined", room="b")
    expect_type(await join_after(None, "c"), "room-joined", room="c")
    assert [s.body["room"] for s in backend.seen] == ["a", "b"]


async def test_reload_keeps_the_host_given_on_the_command_line(tmp_path: Path) -> None:
    """`serve --host 127.0.0.1` with a file naming no host (#3): a reload needs no restart."""
    server = ServerProcess(
        "logging:\n  level: info\n", tmp_path, extra_args=["--host", "127.0.0.1"]
    )
    try:
        server.wait_ready()
        cfg = tmp_path / f"config-{server.port}.yaml"
        cfg.write_text("logging:\n  level: info\nplugins:\n  enabled: [ping, echo]\n")
        response = await tornado.httpclient.AsyncHTTPClient().fetch(
            f"{server.http}/api/reload", method="POST", body=""
        )
        body = json.loads(response.body)
        assert (body["applied"], body["restartRequired"]) == (["plugins.enabled"], [])
    finally:
        server.stop()


async def test_sighup_with_a_file_that_cannot_be_applied_logs_the_refusal(
    server_process: Any,
) -> None:
    """SIGHUP with limits the rate limiter cannot be built from (#1): the refusal line, no
    traceback, and the node keeps serving."""
    server = server_process("server:\n  host: 127.0.0.1\n")
    peer = await Peer.connect(server.url)
    try:
        cfg = next(Path(server.log_path).parent.glob(f"config-{server.port}.yaml"))
        cfg.write_text("limits:\n  messages_per_second: 10\n  burst: 1" + "0" * 400 + "\n")
        server.proc.send_signal(signal.SIGHUP)
        out = await wait_for(server, "config reload refused, running configuration kept")
        assert "limits.burst" in out and "Traceback" not in out
        expect_type(await peer.request({"type": "echo", "message": 1}), "echo")
    finally:
        peer.conn.close(1000, "bye")
