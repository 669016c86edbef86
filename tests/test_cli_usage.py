"""The miaws command as a new user meets it: version, help, serve --host, and the one-line
answers of listen, check and health (#16.10)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from helpers import free_port

import miaws

COMMANDS = ("serve", "health", "check", "clients", "rooms", "listen", "send", "asyncapi")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "miaws", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version() -> None:
    """miaws --version prints the package version."""
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"miaws {miaws.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_describes_itself(command: str) -> None:
    """Each command's help has a description; url and --timeout say what and in which unit."""
    out = run(command, "--help")
    assert out.returncode == 0
    usage, _, rest = out.stdout.partition("\n\n")
    assert rest.split("\n\n")[0].strip(), f"no description:\n{out.stdout}"
    if "--timeout" in out.stdout:
        assert "SECONDS" in out.stdout and "default" in out.stdout
    if " url" in usage:
        assert "default: " in out.stdout and "127.0.0.1" in out.stdout


def test_serve_host(tmp_path: Any) -> None:
    """serve --host picks the listening address (here one that refuses the others)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "miaws", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(150):
            out = run("health", f"127.0.0.1:{port}", "--timeout", "1")
            if out.returncode == 0:
                break
        assert out.returncode == 0, out.stdout
    finally:
        proc.terminate()
        log = proc.communicate(timeout=10)[0]
    assert f"http://127.0.0.1:{port}" in log


def test_listen_says_when_count_is_not_reached(server_process: Any) -> None:
    """listen --count that is not reached in time says so in one line and exits 1."""
    server = server_process()
    out = run("listen", server.url, "--room", "r", "--count", "2", "--timeout", "0.5")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "miaws: got 0 of 2 messages before the timeout (0.5 s)"
    ]


def test_check_hints_at_the_size_limit(server_process: Any) -> None:
    """check against a server with a smaller size limit fails that scenario and says which
    option to pass; with the option it passes."""
    server = server_process("server:\n  host: 127.0.0.1\nlimits:\n  max_message_bytes: 4096\n")
    out = run("check", server.url)
    assert out.returncode == 1 and "--max-message-bytes" in out.stderr
    assert run("check", server.url, "--max-message-bytes", "4096").returncode == 0


def test_health_reports_a_degraded_node(server_process: Any) -> None:
    """A node whose broker is down still serves: health says DEGRADED and exits 3."""
    dead = f"redis://127.0.0.1:{free_port()}"
    server = server_process(f"server:\n  host: 127.0.0.1\nbroker:\n  type: redis\n  url: {dead}\n")
    out = run("health", server.url, "--timeout", "3")
    assert out.returncode == 3, out.stdout
    assert out.stdout.startswith("DEGRADED ") and len(out.stdout.strip().splitlines()) == 1
