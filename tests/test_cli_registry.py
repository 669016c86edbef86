"""`miaws clients` and `miaws rooms` against a real `miaws serve` process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from miaws.cli.check import Peer

CONFIG = "server:\n  host: 127.0.0.1\napi:\n  keys: [sesame]\n"


async def miaws(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command without blocking the event loop (the peers stay serviced)."""
    full_env = {k: v for k, v in os.environ.items() if k != "MIAWS_API_KEY"} | (env or {})
    return await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: subprocess.run(
            [sys.executable, "-m", "miaws", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=full_env,
        ),
    )


async def test_clients_and_rooms_tables(server_process: Any) -> None:
    """Both commands print a header, one row per client / room, and a count."""
    server = server_process(CONFIG)
    a, b = await Peer.connect(server.url), await Peer.connect(server.url)
    try:
        await a.request({"type": "join-room", "room": "ops"})
        await a.request({"type": "join-room", "room": "dev"})
        await b.request({"type": "join-room", "room": "ops"})
        done = await miaws("clients", server.http, "--api-key", "sesame")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].split() == [
            "CLIENT",
            "ID",
            "TRANSPORT",
            "REMOTE",
            "CONNECTED",
            "AT",
            "ROOMS",
            "IN",
            "OUT",
            "USER",
        ]
        rows = {line.split()[0]: line.split() for line in lines[1:-1]}
        assert set(rows) == {a.welcome["clientId"], b.welcome["clientId"]}
        assert rows[a.welcome["clientId"]][1:3] == ["ws", "127.0.0.1"]
        assert rows[a.welcome["clientId"]][4] == "dev,ops"
        assert lines[-1] == "2 client(s)"

        done = await miaws("rooms", server.url, env={"MIAWS_API_KEY": "sesame"})  # ws:// too
        assert done.returncode == 0, done.stderr
        assert [line.split() for line in done.stdout.splitlines()] == [
            ["ROOM", "MEMBERS"],
            ["dev", "1"],
            ["ops", "2"],
            ["2", "room(s)"],
        ]
    finally:
        a.close()
        b.close()


async def test_registry_commands_explain_key_and_connection_problems(server_process: Any) -> None:
    """No key, a wrong key, no server: exit 1 with one line saying what is wrong."""
    server = server_process(CONFIG)
    done = await miaws("rooms", server.http)
    assert done.returncode == 1 and "HTTP 401" in done.stderr and "--api-key" in done.stderr
    done = await miaws("clients", server.http, "--api-key", "guess")
    assert done.returncode == 1 and "HTTP 403 (wrong API key)" in done.stderr
    server.stop()
    done = await miaws("clients", server.http, "--api-key", "sesame", "--timeout", "2")
    assert done.returncode == 1 and "cannot connect" in done.stderr
    assert done.stdout == ""
