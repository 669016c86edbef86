"""Operators' HTTP endpoints on the server's port."""

from __future__ import annotations

import json
from typing import Any

from conftest import Connect


async def get_json(client: Any, path: str) -> Any:
    response = await client.fetch(path)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def test_health(http_server_client: Any, ws_connect: Connect) -> None:
    """/health: status ok and the live connection count."""
    assert (await get_json(http_server_client, "/health"))["connections"] == 0
    await ws_connect()
    await ws_connect()
    body = await get_json(http_server_client, "/health")
    assert body["status"] == "ok" and body["connections"] == 2


async def test_api_clients_and_rooms(http_server_client: Any, ws_connect: Connect) -> None:
    """/api/clients lists each client with clientId and rooms; /api/rooms maps room -> count."""
    a, b = await ws_connect(), await ws_connect()
    await a.request({"type": "join-room", "room": "alpha"})
    await b.request({"type": "join-room", "room": "alpha"})
    await b.request({"type": "join-room", "room": "beta"})
    clients = await get_json(http_server_client, "/api/clients")
    by_id = {c["clientId"]: c for c in clients}
    assert set(by_id) == {a.welcome["clientId"], b.welcome["clientId"]}
    assert by_id[b.welcome["clientId"]]["rooms"] == ["alpha", "beta"]
    assert by_id[a.welcome["clientId"]]["transport"] == "ws"
    assert by_id[a.welcome["clientId"]]["remoteAddress"] == "127.0.0.1"
    assert await get_json(http_server_client, "/api/rooms") == {"alpha": 2, "beta": 1}


async def test_api_plugins(http_server_client: Any) -> None:
    """/api/plugins names each enabled plugin and its message types."""
    plugins = {p["name"]: p for p in await get_json(http_server_client, "/api/plugins")}
    assert plugins["rooms"]["messageTypes"] == ["join-room", "leave-room"]
    assert set(plugins) == {"ping", "echo", "broadcast", "rooms", "presence"}
