"""Memory per connection once it has talked: no more than while it was idle."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc

import pytest
import websockets

SERVER_FILES = [tracemalloc.Filter(True, "*/miaws/*"), tracemalloc.Filter(True, "*/tornado/*")]


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
