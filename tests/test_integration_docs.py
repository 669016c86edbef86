"""docs/integration.md's backends (the Python and the Node one), run against a real miaws."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import free_port
from test_auth import refused_status
from tornado.httpclient import HTTPRequest

from miaws.cli.check import Peer, expect_type
from miaws.config import build_settings
from miaws.server import Server

DOC = (Path(__file__).resolve().parent.parent / "docs" / "integration.md").read_text()


def block(language: str) -> str:
    (code,) = re.findall(rf"```{language}\n(.*?)```", DOC, re.S)
    return code


def config(base: str) -> dict[str, Any]:
    """The configuration at the top of the page, pointed at base."""
    text = block("yaml").replace("http://orders.internal:8080", base)
    import yaml

    data: dict[str, Any] = yaml.safe_load(text)
    data["proxy"]["types"][0].pop("schema")  # the page's schema file is not shipped
    data["server"] = {"host": "127.0.0.1"}
    return data


@contextlib.asynccontextmanager
async def miaws(base: str) -> AsyncIterator[str]:
    server = Server(build_settings(config(base), source="test", environ={}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    await server.start([sock])
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
    finally:
        await server.stop(grace=0)


async def order_scenario(url: str) -> None:
    assert await refused_status(url, {"Cookie": "session=nope"}) == 401
    peer = await Peer.connect(HTTPRequest(url, headers={"Cookie": "session=abc"}))
    try:
        reply = await peer.request({"type": "order.submit", "id": 1, "item": "tea"})
        expect_type(reply, "order.accepted", id=1, order=42, item="tea", by="alice")
        expect_type(
            await peer.recv(),
            "broadcast",
            room="order:42",
            message={"status": "new", "order": 42, "item": "tea", "by": "alice"},
        )
    finally:
        peer.close()


async def test_python_backend() -> None:
    """The page's aiohttp backend, imported from the page, serves miaws as described."""
    namespace: dict[str, Any] = {"__name__": "integration_doc"}
    exec(compile(block("python"), "docs/integration.md", "exec"), namespace)
    runner = web.AppRunner(namespace["make_app"](), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with miaws(f"http://127.0.0.1:{port}") as url:
            await order_scenario(url)
    finally:
        await runner.cleanup()


async def test_node_backend(tmp_path: Path) -> None:
    """The page's Node backend (plain http module) serves miaws as described."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for this test (.ci/run installs it)")
    (tmp_path / "backend.js").write_text(block("js"))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        node, str(tmp_path / "backend.js"), env={"PORT": str(port)}
    )
    try:
        for _ in range(100):  # up to 5 s for it to listen
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            await asyncio.sleep(0.05)
        async with miaws(f"http://127.0.0.1:{port}") as url:
            await order_scenario(url)
    finally:
        proc.kill()
        await proc.wait()
