"""The browser snippet of docs/socketio.md, as written, in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import Connect
from helpers import chromium, eventually
from sio_helpers import NODE_DIR, ensure_node_modules

from miaws.cli.check import expect_type

ROOT = Path(__file__).resolve().parent.parent


async def test_docs_browser_snippet(port: int, ws_connect: Connect) -> None:
    """The page logs welcome, both acks and its own broadcast; a native member of the room
    gets that broadcast too.  Only the port changes; the CDN URL is answered with the same
    socket.io-client file from tests/node (tests talk to 127.0.0.1 only)."""
    ensure_node_modules()
    doc = (ROOT / "docs" / "socketio.md").read_text()
    (html,) = re.findall(r"```html\n(.*?)```", doc, re.S)
    assert 'io("http://localhost:3001")' in html
    html = html.replace("localhost:3001", f"localhost:{port}")  # a cross-origin connection
    client_js = NODE_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
    native = await ws_connect()
    await native.request({"type": "join-room", "room": "lobby"})

    async with chromium() as browser:
        page = await browser.new_page()
        logged: list[str] = []
        page.on("console", lambda msg: logged.append(msg.text))
        await page.route("https://cdn.socket.io/**", lambda route: route.fulfill(path=client_js))
        await page.goto(f"http://127.0.0.1:{port}/health")
        await page.set_content(html)
        await eventually(lambda: "broadcast lobby hello" in logged, timeout=10)

    ours = [
        line for line in logged if line.split(" ")[0] in {"welcome", "ack", "broadcast", "error"}
    ]
    assert re.fullmatch(r"welcome \d+-[a-z0-9]{8}", ours[0])
    assert sorted(ours[1:]) == ["ack pong", "ack room-joined", "broadcast lobby hello"]
    expect_type(await native.recv(), "broadcast", room="lobby", message="hello")
