"""logging.format: json on a real `miaws serve`: every line is one JSON object."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from miaws.cli.check import Peer
from miaws.ops.logs import TEXT_FORMAT, JSONFormatter, TextFormatter


async def test_json_log_lines_from_a_server(server_process: Any) -> None:
    """Start-up and disconnect lines are JSON; the disconnect carries its fields."""
    server = server_process("server:\n  host: 127.0.0.1\nlogging:\n  format: json\n")
    peer = await Peer.connect(server.url)
    await peer.request({"type": "join-room", "room": "ops"})
    peer.conn.close(1000)
    for _ in range(100):
        if '"event": "disconnect"' in server.output():
            break
        await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in server.output().splitlines()]  # all of them JSON
    startup = [line["message"] for line in lines[:2] if line["event"] == "log"]
    assert any("listening" in m for m in startup), startup
    assert any("file descriptors" in m for m in startup), startup  # logged once, at start
    (gone,) = [x for x in lines if x["event"] == "disconnect"]
    assert {k: gone[k] for k in ("level", "logger", "clientId", "code", "rooms")} == {
        "level": "info",
        "logger": "miaws",
        "clientId": peer.welcome["clientId"],
        "code": 1000,
        "rooms": ["ops"],
    }
    assert gone["time"].endswith("+00:00") and gone["duration"] >= 0


def test_json_formatter_keeps_the_traceback() -> None:
    """An exception logged in JSON format keeps its traceback in one line."""
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("miaws", logging.ERROR, __file__, 1, "failed", None, None)
        record.exc_info = sys.exc_info()
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed" and "ValueError: bad" in entry["exception"]


def test_text_lines_are_logging_default_lines() -> None:
    """The text format caches the time of day per second; its lines stay exactly what
    logging's own formatter writes, across second and day boundaries."""
    ours, default = TextFormatter(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    times = (1_000_000.0, 1_000_000.25, 1_000_000.999, 1_000_001.0, 1_086_399.5, 1_086_400.0)
    for created in times:
        record = logging.makeLogRecord({"name": "miaws", "msg": "x %d", "args": (1,)})
        record.created, record.msecs = created, (created % 1) * 1000
        assert ours.format(record) == default.format(record)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = sys.exc_info()
    for extra in ({"exc_info": failed}, {"stack_info": "Stack (most recent call last):"}, {}):
        fields = {"name": "a.b", "levelno": 40, "levelname": "ERROR", "msg": "%(k)s", **extra}
        record = logging.makeLogRecord({**fields, "args": {"k": "v"}})
        again = logging.makeLogRecord({**fields, "args": {"k": "v"}})
        again.created, again.msecs = record.created, record.msecs  # made a moment later
        assert ours.format(record) == default.format(again)
