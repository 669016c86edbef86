"""What an operator reads when miaws starts, fails to start, or serves the console (#16.11)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from miaws.core.errors import _MEANINGS, close_meaning


def serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "miaws", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def test_the_start_up_line_names_the_config_file(server_process: Any, tmp_path: Path) -> None:
    """The "listening" line says which config file the node runs on."""
    server = server_process()
    deadline = time.monotonic() + 10
    while "miaws listening" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)  # the line follows the listen
    (line,) = [x for x in server.output().splitlines() if "miaws listening" in x]
    assert f"config {tmp_path / f'config-{server.port}.yaml'}" in line, line


def test_cannot_listen_names_host_and_port(tmp_path: Path) -> None:
    """A port in use: one line naming host and port, exit 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "c.yaml").write_text("server:\n  host: 127.0.0.1\n")
        done = serve("--config", "c.yaml", "--port", str(port), cwd=tmp_path)
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in line, done.stderr


def test_a_yaml_error_gives_the_parsers_reason(tmp_path: Path) -> None:
    """Bad YAML: PyYAML's reason and the line, in one line."""
    (tmp_path / "c.yaml").write_text("server:\n  host: [127.0.0.1\n  port: 3001\n")
    done = serve("--config", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "not valid YAML at line" in done.stderr and "expected ',' or ']'" in done.stderr


def test_close_meanings_have_no_nested_parentheses() -> None:
    """The disconnect line puts the meaning in parentheses: the meaning holds none."""
    for code in _MEANINGS:
        assert "(" not in close_meaning(code) and ")" not in close_meaning(code)


async def test_a_console_load_logs_no_warning(
    http_server_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Browsers ask for /favicon.ico with every page: no WARNING (404) each time."""
    caplog.set_level(logging.INFO)
    assert (await http_server_client.fetch("/")).code == 200
    response = await http_server_client.fetch("/favicon.ico", raise_error=False)
    assert response.code in (200, 204)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("tornado", "miaws"))
    ]  # (asyncio may report earlier tests' leftovers here)
    assert warnings == []
