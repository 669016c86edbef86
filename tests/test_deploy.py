"""deploy/nginx-miaws.conf in front of a real `miaws serve`: the WebSocket upgrade works,
the heartbeat keeps idle connections through the proxy's idle timeout, /api/ stays internal."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from helpers import chromium, free_port
from sio_helpers import NodePeer, ensure_node_modules

from miaws.cli.check import Peer, expect_type

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="nginx is not installed (.ci/run installs it)"
)

IDLE_TIMEOUT = 2  # seconds: the proxy's idle timeout, shortened for the test


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[int], int]]:
    """``nginx(upstream_port)`` -> the port of an nginx running the shipped site config."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream: int) -> int:
        port = free_port()
        site = (ROOT / "deploy" / "nginx-miaws.conf").read_text()
        site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
        site = re.sub(r"\n\s*ssl_certificate.*", "", site)
        site = site.replace("127.0.0.1:3001", f"127.0.0.1:{upstream}")
        site = re.sub(r"proxy_(read|send)_timeout \d+s", rf"proxy_\1_timeout {IDLE_TIMEOUT}s", site)
        (tmp_path / "site.conf").write_text(site)
        temp = " ".join(
            f"{kind}_temp_path {tmp_path}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (tmp_path / "nginx.conf").write_text(
            f"daemon off; master_process off; pid {tmp_path}/nginx.pid;\n"
            f"error_log {tmp_path}/error.log;\n"
            "events { worker_connections 64; }\n"
            f"http {{ access_log off; {temp} include {tmp_path}/site.conf; }}\n"
        )
        proc = subprocess.Popen(
            [
                "nginx",
                "-p",
                str(tmp_path),
                "-c",
                str(tmp_path / "nginx.conf"),
                "-e",
                str(tmp_path / "error.log"),
            ],
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "error.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                return port
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise AssertionError("nginx did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(5)


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_websocket_through_nginx_survives_idle_time(
    server_process: Any, nginx: Callable[[int], int]
) -> None:
    """Heartbeat shorter than the proxy's idle timeout: an idle client stays connected."""
    server = server_process(
        "server:\n  host: 127.0.0.1\nheartbeat:\n  interval: 0.5\n  timeout: 0.5\n"
    )
    port = nginx(server.port)
    peer = await Peer.connect(f"ws://127.0.0.1:{port}/ws")
    try:
        expect_type(await peer.request({"type": "ping"}), "pong")
        await asyncio.sleep(IDLE_TIMEOUT + 1.5)  # idle, but the server's pings flow
        expect_type(await peer.request({"type": "echo", "message": "still here"}), "echo")
    finally:
        peer.close()
    assert status(f"http://127.0.0.1:{port}/health") == 200
    assert status(f"http://127.0.0.1:{port}/api/rooms") == 403  # denied by nginx: internal only
    assert status(f"{server.http}/api/rooms") == 200


async def test_without_heartbeat_the_proxy_cuts_idle_clients(
    server_process: Any, nginx: Callable[[int], int]
) -> None:
    """The reason for the rule: with no heartbeat, nginx drops a client idle past its timeout."""
    server = server_process("server:\n  host: 127.0.0.1\nheartbeat:\n  interval: 0\n")
    port = nginx(server.port)
    peer = await Peer.connect(f"ws://127.0.0.1:{port}/ws")
    try:
        started = time.monotonic()
        assert await asyncio.wait_for(peer.conn.read_message(), IDLE_TIMEOUT + 3) is None
        assert time.monotonic() - started >= IDLE_TIMEOUT - 0.5  # cut for being idle
    finally:
        peer.close()


async def test_socketio_websocket_only_through_nginx(
    server_process: Any, nginx: Callable[[int], int]
) -> None:
    """The official socket.io-client, websocket-only, connects through the shipped config
    and gets its welcome and a pong (it was refused: nginx sent no Upgrade for /socket.io/)."""
    ensure_node_modules()
    server = server_process("server:\n  host: 127.0.0.1\nsocketio:\n  enabled: true\n")
    port = nginx(server.port)
    peer = await NodePeer.connect(f"http://127.0.0.1:{port}", "/", "websocket")
    try:
        assert peer.welcome["type"] == "welcome"
        ack = await peer.call("ping", {"id": "through-nginx"})
        expect_type(ack, "pong", id="through-nginx")
    finally:
        await peer.close()


async def test_console_behind_nginx_tells_a_proxy_refusal_from_a_key_prompt(
    server_process: Any, nginx: Callable[[int], int]
) -> None:
    """nginx's `deny` answers /api/ with 403: the console says a proxy refused, and does not
    ask for an API key (miaws's own 401/403 carry a JSON error; tests/test_console.py)."""
    server = server_process("server:\n  host: 127.0.0.1\n")
    port = nginx(server.port)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{port}/")
        refused = page.locator("#api-refused", has_text="from a proxy in front of miaws")
        await refused.wait_for(state="visible", timeout=10_000)
        assert await page.is_hidden("#apikey-form")


def test_deploy_doc_shows_the_shipped_unit() -> None:
    """docs/deploy.md's unit is deploy/miaws.service without its comments, line for line."""
    shipped = (ROOT / "deploy" / "miaws.service").read_text().splitlines()
    shown = re.search(r"```ini\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    assert shown is not None
    keep = [line for line in shipped if line and not line.startswith("#")]
    assert [line for line in shown.group(1).splitlines() if line] == keep
    assert not any(line.startswith("Documentation=") for line in shipped)
