"""The web console at / in headless Chromium: live counts, registry tables, the WS panel."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Connect
from helpers import chromium

from miaws.cli.check import expect_type

TIMEOUT = 10_000  # ms, for each wait in the page


async def received(page: Any, kind: str, text: str = "") -> str:
    """Wait until the log shows an incoming message of kind (containing text); its text."""
    selector = f'#log li.in[data-type="{kind}"]'
    if text:
        selector += f':has-text("{text}")'
    item = page.locator(selector).last
    await item.wait_for(timeout=TIMEOUT)
    return str(await item.inner_text())


async def test_console_panel_and_registry(
    port: int, ws_connect: Connect, tmp_path: Path, http_server_client: Any
) -> None:
    """Connect from the page, click every button, see each reply; counts and tables follow."""
    other = await ws_connect()
    await other.request({"type": "join-room", "room": "lobby"})
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 820})
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function(
            "document.getElementById('conn-count').textContent === '1'", timeout=TIMEOUT
        )
        assert other.welcome["clientId"] in await page.locator("#clients").inner_text()

        await page.click("#connect")
        welcome = await received(page, "welcome")
        await page.wait_for_function(
            "document.getElementById('conn-count').textContent === '2'", timeout=TIMEOUT
        )
        await page.locator("#clients", has_text="(this page)").wait_for(timeout=TIMEOUT)

        await page.click("#ping")
        await received(page, "pong")
        await page.fill("#echo-text", '{"a": [1, 2]}')
        await page.click("#echo")
        assert '"original":{"a":[1,2]}' in await received(page, "echo")

        await page.fill("#room", "lobby")
        await page.click("#join")
        await received(page, "room-joined", "lobby")
        await (
            page.locator("#rooms tr", has_text="lobby")
            .filter(has_text="2")
            .wait_for(timeout=TIMEOUT)
        )

        await page.fill("#bc-text", "hello from the console")
        await page.fill("#bc-room", "lobby")
        await page.click("#broadcast")
        await received(page, "broadcast", "hello from the console")
        msg = await other.recv()  # a real client in the room got it from the page
        expect_type(msg, "broadcast", message="hello from the console", room="lobby")
        assert msg["from"] in welcome

        await other.send({"type": "broadcast", "message": "hi page", "room": "lobby"})
        await received(page, "broadcast", "hi page")
        await http_server_client.fetch(
            "/api/publish", method="POST", body='{"message": "from ops", "room": "lobby"}'
        )
        await received(page, "broadcast", "from ops")

        await page.click("#leave")
        await received(page, "room-left", "lobby")
        out = await page.locator("#log li.out").all_inner_texts()
        assert [t.split("→", 1)[1].strip()[:22] for t in out] == [
            '{"type":"ping","id":1}',
            '{"type":"echo","messag',
            '{"type":"join-room","r',
            '{"type":"broadcast","m',
            '{"type":"leave-room","',
        ]

        # the raw box sends any text as typed: a type of one's own, or a malformed message
        await page.fill("#raw-text", '{"type":"ping","id":"raw-1"}')
        await page.click("#raw")
        assert '"id":"raw-1"' in await received(page, "pong", "raw-1")
        await page.fill("#raw-text", "not json")
        await page.click("#raw")
        assert "invalid-json" in await received(page, "error", "invalid-json")

        shot = tmp_path / "console.png"
        await page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("MIAWS_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, ROOT / "docs" / "console.png")

        await page.click("#connect")  # now "Disconnect"
        await page.locator("#log li.sys", has_text="closed: code 1000").wait_for(timeout=TIMEOUT)
        assert await page.is_disabled("#ping")


@pytest.mark.config(
    {
        "auth": {"mode": "token", "tokens": {"t-ann": "ann", "t-ben": "ben"}},
        "rooms": {"rules": [{"match": "team:*", "presence": True}]},
    }
)
async def test_console_shows_a_rooms_presence(port: int, ws_connect: Connect, ws_url: str) -> None:
    """The rooms table's "show" lists the room's members with their users (#18); the list
    follows a join."""
    ann = await ws_connect(ws_url + "?token=t-ann")
    expect_type(await ann.request({"type": "join-room", "room": "team:1"}), "room-joined")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{port}/")
        row = page.locator("#rooms tr", has_text="team:1")
        await row.locator("button.show-presence").click(timeout=TIMEOUT)
        members = page.locator("#presence-members")
        await (
            members.locator("tr", has_text=ann.welcome["clientId"])
            .filter(has_text="ann")
            .wait_for(timeout=TIMEOUT)
        )
        await page.locator("#presence-summary", has_text="1 user on every node").wait_for(
            timeout=TIMEOUT
        )
        ben = await ws_connect(ws_url + "?token=t-ben")
        expect_type(await ben.request({"type": "join-room", "room": "team:1"}), "room-joined")
        await members.locator("tr", has_text="ben").wait_for(timeout=TIMEOUT)
        await page.locator("#presence-summary", has_text="2 users").wait_for(timeout=TIMEOUT)


@pytest.mark.config({"api": {"keys": ["letmein"]}})
async def test_console_asks_for_the_api_key(port: int, ws_connect: Connect) -> None:
    """With API keys set the page asks for one; a wrong one is refused, the right one works."""
    peer = await ws_connect()
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.locator("#apikey-form").wait_for(state="visible", timeout=TIMEOUT)
        await page.wait_for_function(
            "document.getElementById('conn-count').textContent === '1'", timeout=TIMEOUT
        )
        await page.fill("#apikey", "wrong")
        await page.click("#apikey-use")
        await page.locator("#apikey-error", has_text="key not accepted").wait_for(timeout=TIMEOUT)
        await page.fill("#apikey", "letmein")
        await page.click("#apikey-use")
        await page.locator("#clients", has_text=peer.welcome["clientId"]).wait_for(timeout=TIMEOUT)
        await page.locator("#apikey-form").wait_for(state="hidden", timeout=TIMEOUT)


@pytest.mark.config({"console": {"enabled": False}})
async def test_console_can_be_switched_off(http_server_client: Any) -> None:
    """console.enabled: false -> 404 at / and for its files; the API still answers."""
    for path in ("/", "/console/console.js"):
        assert (await http_server_client.fetch(path, raise_error=False)).code == 404
    assert (await http_server_client.fetch("/health")).code == 200
