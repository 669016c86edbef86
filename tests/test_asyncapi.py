"""GET /asyncapi.json and ``miaws asyncapi``: a valid AsyncAPI 3.0 document of the live protocol,
checked by the official AsyncAPI parser (tests/asyncapi, installed by .ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "tests" / "asyncapi"


def validate(document: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """(exit code, diagnostics) of the official parser on document."""
    assert (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "run: npm ci --prefix tests/asyncapi"
    )
    proc = subprocess.run(
        ["node", "validate.mjs"],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        cwd=VALIDATOR,
        timeout=60,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


async def fetch(port: int) -> dict[str, Any]:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/asyncapi.json")
    assert response.headers["Content-Type"].startswith("application/json")
    document: dict[str, Any] = json.loads(response.body)
    return document


async def test_asyncapi_document_is_valid_and_lists_every_type(port: int) -> None:
    """The document passes the official parser with no error and describes each enabled type
    with the schema the server checks, plus welcome and error."""
    document = await fetch(port)
    code, diagnostics = validate(document)
    assert code == 0, [d for d in diagnostics if d["severity"] == 0]
    assert document["asyncapi"] == "3.0.0"
    assert document["servers"]["miaws"]["host"] == f"127.0.0.1:{port}"
    messages = document["components"]["messages"]
    assert set(messages) == {
        "ping",
        "echo",
        "broadcast",
        "join-room",
        "leave-room",
        "reply.pong",
        "reply.echo",
        "reply.broadcast",
        "reply.room-joined",
        "reply.room-left",
        "presence",
        "reply.presence",
        "reply.member-joined",
        "reply.member-left",
        "server.welcome",
        "server.error",
        "server.gap",
    }
    since = messages["join-room"]["payload"]["properties"]["since"]
    assert since["required"] == ["epoch", "seq"]
    assert document["operations"]["receive.ping"]["action"] == "receive"
    # each type's replies, as its plugin declares them, with what the core adds (#16.15)
    reply = document["operations"]["receive.join-room"]["reply"]
    assert reply["messages"] == [{"$ref": "#/channels/ws/messages/reply.room-joined"}]
    # presence (#18): the reply and the join/leave events members get
    assert messages["reply.member-joined"]["payload"]["required"][:2] == ["type", "room"]
    assert "count" in messages["reply.presence"]["payload"]["properties"]
    joined = messages["reply.room-joined"]["payload"]
    assert joined["properties"]["type"] == {"const": "room-joined"}
    assert {"epoch", "seq", "recovered", "timestamp", "id"} <= set(joined["properties"])


@pytest.mark.config({"plugins": {"enabled": ["ping"]}})
async def test_asyncapi_follows_the_enabled_plugins(port: int) -> None:
    """With only ping enabled, only ping (and the core's messages) is described."""
    document = await fetch(port)
    assert set(document["components"]["messages"]) == {
        "ping",
        "reply.pong",
        "server.welcome",
        "server.error",
        "server.gap",
    }


def test_the_validator_rejects_a_broken_document() -> None:
    """The check above can fail: an operation with an unknown action is an error."""
    from miaws.config import build_settings
    from miaws.core.plugins import build_registry
    from miaws.ops.asyncapi import asyncapi_document

    document = asyncapi_document(
        build_registry(build_settings({}, environ={}).plugin_sources()), "h:1", "/ws"
    )
    document["operations"]["receive.ping"]["action"] = "publish"
    code, diagnostics = validate(document)
    assert code == 1 and any(d["severity"] == 0 for d in diagnostics)


def test_cli_prints_the_same_document(tmp_path: Path) -> None:
    """miaws asyncapi prints the configured server's document as JSON."""
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 4567\nplugins:\n  enabled: [ping, echo]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "miaws", "asyncapi", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["servers"]["miaws"]["host"] == "localhost:4567"
    assert set(document["components"]["messages"]) == {
        "ping",
        "echo",
        "reply.pong",
        "reply.echo",
        "server.welcome",
        "server.error",
        "server.gap",
    }
