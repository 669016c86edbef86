"""The miaws command against real server processes: serve, health, check, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port

from miaws.cli.check import Peer, expect_type


def miaws(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "miaws", *args], capture_output=True, text=True, timeout=timeout
    )


def test_health_ok_and_failing(server_process: Any) -> None:
    """miaws health prints one line and exits 0 against a server, 1 when none listens."""
    server = server_process()
    ok = miaws("health", server.url)
    assert ok.returncode == 0 and ok.stdout.startswith("OK ") and "pong" in ok.stdout
    bad = miaws("health", f"ws://127.0.0.1:{free_port()}/ws", "--timeout", "2")
    assert bad.returncode == 1 and bad.stdout.startswith("FAIL ")
    assert len(ok.stdout.strip().splitlines()) == len(bad.stdout.strip().splitlines()) == 1


def test_health_takes_the_servers_http_address(server_process: Any) -> None:
    """The address an operator has at hand (http://host:port, or host:port) works too;
    what is not a server URL is refused in one line."""
    server = server_process()
    http = server.url.replace("ws://", "http://").removesuffix("/ws")
    for url in (http, http.removeprefix("http://")):
        ok = miaws("health", url)
        assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok.stderr
    wrong = miaws("health", "ftp://127.0.0.1:1")
    assert wrong.returncode == 2 and "is not a ws:// or http:// server URL" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_check_passes_every_scenario(server_process: Any) -> None:
    """miaws check prints a pass/fail table and exits 0 when every scenario passes."""
    server = server_process()
    result = miaws("check", server.url)
    assert result.returncode == 0, result.stdout
    rows = result.stdout.strip().splitlines()
    assert rows[-1].endswith(" passed, 0 failed")
    assert all(r.startswith("PASS") for r in rows[:-1]) and len(rows) > 10


def test_check_fails_against_a_wrong_server(server_process: Any) -> None:
    """miaws check exits 1 when the server breaks the contract (here: a 100-byte limit)."""
    server = server_process("server:\n  host: 127.0.0.1\nlimits:\n  max_message_bytes: 100\n")
    result = miaws("check", server.url)
    assert result.returncode == 1
    assert "FAIL  message of exactly the limit" in result.stdout


def test_runs_on_defaults_from_any_directory(tmp_path: Path) -> None:
    """With no config file anywhere, miaws serve runs on the bundled defaults."""
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    env.pop("MIAWS_CONFIG", None)
    log = (tmp_path / "out.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "miaws", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            if miaws("health", f"ws://127.0.0.1:{port}/ws", "--timeout", "1").returncode == 0:
                break
        check = miaws("check", f"ws://127.0.0.1:{port}/ws")
        assert check.returncode == 0, check.stdout
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_signal_closes_clients_with_1001(server_process: Any, sig: int) -> None:
    """SIGTERM or SIGINT: every client gets close 1001, then the process exits 0."""
    server = server_process()
    peers = [await Peer.connect(server.url) for _ in range(3)]
    await peers[0].request({"type": "join-room", "room": "r"})
    server.proc.send_signal(sig)
    codes = await asyncio.gather(*(p.closed_with(10) for p in peers))
    for p in peers:
        p.close()
    assert codes == [1001, 1001, 1001]
    assert await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 10) == 0
    out = server.output()
    assert out.count("code=1001") == 3


async def test_disconnect_log_line(server_process: Any) -> None:
    """Every disconnect is one log line: clientId, code with meaning, duration, rooms."""
    server = server_process()
    peer = await Peer.connect(server.url)
    expect_type(await peer.request({"type": "join-room", "room": "ops"}), "room-joined")
    peer.conn.close(1000)
    for _ in range(100):
        if "disconnected" in server.output():
            break
        await asyncio.sleep(0.05)
    (line,) = [x for x in server.output().splitlines() if "disconnected" in x]
    assert peer.welcome["clientId"] in line
    assert "code=1000 (normal closure)" in line and "duration=" in line and "rooms=[ops]" in line
