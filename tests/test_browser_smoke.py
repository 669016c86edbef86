"""A real browser (headless Debian Chromium) talks to /ws: the old browser test, minimal."""

from __future__ import annotations

from helpers import chromium

PAGE = """<script>
const ws = new WebSocket("%s");
window.got = [];
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  window.got.push(m.type);
  if (m.type === "welcome") ws.send(JSON.stringify({type: "ping", id: 1}));
};
</script>"""


async def test_browser_gets_welcome_and_pong(ws_url: str, port: int) -> None:
    """A page opens a WebSocket, gets welcome, sends ping and gets pong."""
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{port}/health")  # same origin as the server
        await page.set_content(PAGE % ws_url)
        await page.wait_for_function("window.got && window.got.includes('pong')", timeout=10000)
        assert await page.evaluate("window.got") == ["welcome", "pong"]
