"""Memory per connection once it has talked: no more than while it was idle."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from pathlib import Path

import pytest
import tornado
import websockets

import miaws


def package_files(module: object) -> tracemalloc.Filter:
    """A filter for the files of one package, by its own folder (a ``*/miaws/*`` pattern
    also matched a checkout named ``miaws``: its .venv, with the client library, and tests)."""
    return tracemalloc.Filter(True, str(Path(str(module.__file__)).parent) + "/*")


SERVER_FILES = [package_files(miaws), package_files(tornado)]


def test_the_filter_counts_only_the_server_packages() -> None:
    """Files of the checkout outside the package (its venv, the tests) are not counted,
    whatever the checkout folder is named."""
    package = Path(str(miaws.__file__)).parent
    checkout = Path("/tmp/anywhere/miaws")  # a clone named miaws, as the README suggests
    outside = [
        checkout / ".venv/lib/python3/site-packages/websockets/protocol.py",
        checkout / "tests/test_memory.py",
    ]
    inside = [package / "service.py", Path(str(tornado.__file__)).parent / "iostream.py"]
    snapshot = tracemalloc.Snapshot(
        [(0, 100, ((str(path), 1),), 1) for path in outside + inside], 1
    ).filter_traces(SERVER_FILES)
    assert sorted(t.traceback[0].filename for t in snapshot.traces) == sorted(map(str, inside))


def server_heap() -> int:
    """Bytes allocated in miaws and Tornado code since tracemalloc started, still held."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(SERVER_FILES)
    return sum(stat.size for stat in snapshot.statistics("filename"))


@pytest.mark.config({"heartbeat": {"interval": 0.2, "timeout": 0.2}})
async def test_a_connection_that_talked_takes_no_more_memory(ws_url: str) -> None:
    """100 connections that each sent a message and answered heartbeats hold no more server
    memory than when they were idle.  (Each attribute the WebSocket protocol object gained
    beyond Tornado's own took its instance dict past CPython's shared-key limit: ~1.3 KiB
    more per connection.)"""
    clients = [await websockets.connect(ws_url) for _ in range(100)]
    try:
        for client in clients:
            await client.recv()  # welcome
        tracemalloc.start()  # from here on: what talking adds
        for client in clients:
            await client.send(json.dumps({"type": "echo", "message": "hi"}))
        for client in clients:
            assert json.loads(await client.recv())["type"] == "echo"
        await asyncio.sleep(0.6)  # two heartbeats, answered by the clients
        added = server_heap()
        tracemalloc.stop()
        assert added / len(clients) < 300
    finally:
        for client in clients:
            await client.close()
