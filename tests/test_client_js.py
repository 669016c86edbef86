"""The browser client (/client.js) in headless Chromium: reconnect, recovery, failure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web
from conftest import Connect
from helpers import chromium, eventually, free_port
from test_recovery import PacedPublisher, joined_publisher, publish

from miaws.service import Service
from miaws.transport.native import NativeClient

PAGE = """<script type="module">
import { MiawsClient } from "http://127.0.0.1:%(port)d/client.js";
window.got = [];
window.failures = [];
const client = new MiawsClient("%(url)s", {
  backoffInitial: %(backoff)d,
  backoffMax: %(backoff)d * 10,
  onMessage: (m) => { if (m.type === "broadcast") window.got.push([m.message, m.seq]); },
  onRecoveryFailed: (room, reply) => window.failures.push([room, reply]),
});
window.client = client;
await client.connect();
window.joined = await client.join("feed");
</script>"""

HISTORY = {"history": {"rooms": [{"match": "feed", "size": 1000, "ttl": 60}]}}
SMALL = {"history": {"rooms": [{"match": "feed", "size": 5, "ttl": 60}]}}


async def open_page(browser: Any, port: int, url: str, backoff: int) -> Any:
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{port}/health")  # same origin as the server
    await page.set_content(PAGE % {"port": port, "url": url, "backoff": backoff})
    await page.wait_for_function("window.joined !== undefined", timeout=10000)
    return page


def cut(service: Service, client_id: str) -> None:
    """Close the server's side of that client's TCP connection: no close frame."""
    client = next(c for c in service.local.clients() if c.client_id == client_id)
    assert isinstance(client, NativeClient)
    conn = client.handler.ws_connection
    assert conn is not None and conn.stream is not None
    conn.stream.close()


async def test_client_js_is_served_as_a_module(port: int) -> None:
    """GET /client.js answers JavaScript that exports MiawsClient."""
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/client.js")
    assert "javascript" in response.headers["Content-Type"]
    assert b"export class MiawsClient" in response.body


@pytest.mark.config(HISTORY)
async def test_browser_client_gets_1000_exactly_once_across_cuts(
    ws_url: str, port: int, ws_connect: Connect, service: Service
) -> None:
    """1000 room messages while the server drops the page's connection five times: the
    page ends with every message once, in order."""
    publisher = PacedPublisher(await joined_publisher(ws_connect, "feed"), "feed", 1000)
    async with chromium() as browser:
        page = await open_page(browser, port, ws_url, backoff=20)
        cuts_at: list[int] = []

        async def cutter() -> None:
            seen: set[str] = set()
            for _ in range(5):
                await asyncio.sleep(0.12)
                client_id = await page.evaluate("window.client.socket && window.client.clientId")
                while not client_id or client_id in seen:
                    await asyncio.sleep(0.01)
                    client_id = await page.evaluate(
                        "window.client.socket && window.client.clientId"
                    )
                seen.add(client_id)
                listed = {c.client_id for c in service.local.clients()}
                assert client_id in listed  # the page saw its welcome, so the server lists it
                cut(service, client_id)
                cuts_at.append(publisher.sent)

        await asyncio.wait_for(asyncio.gather(publisher.run(), cutter()), 30)
        await page.wait_for_function("window.got.length >= 1000", timeout=20000)
        await asyncio.sleep(0.2)  # any duplicate would arrive now
        got = await page.evaluate("window.got")
        connects = await page.evaluate("window.client.connects")
    assert [m for m, _ in got] == list(range(1000))
    assert [s for _, s in got] == list(range(1, 1001))
    assert len(cuts_at) == 5 and all(0 < n < 1000 for n in cuts_at), cuts_at
    assert connects == 6


@pytest.mark.config(SMALL)
async def test_browser_client_reports_failed_recovery(
    ws_url: str, port: int, ws_connect: Connect, service: Service
) -> None:
    """Away while more than the history goes by: onRecoveryFailed gets recovered false
    with the current position, and the page goes on from there."""
    pub = await joined_publisher(ws_connect, "feed")
    async with chromium() as browser:
        page = await open_page(browser, port, ws_url, backoff=1000)
        epoch = await page.evaluate("window.joined.epoch")
        cut(service, await page.evaluate("window.client.clientId"))
        await eventually(lambda: service.connected_count() == 1)
        await publish(pub, "feed", range(20))
        await page.wait_for_function("window.failures.length === 1", timeout=10000)
        room, reply = (await page.evaluate("window.failures"))[0]
        assert (room, reply["recovered"], reply["epoch"], reply["seq"]) == (
            "feed",
            False,
            epoch,
            20,
        )
        await publish(pub, "feed", range(20, 21))
        await page.wait_for_function("window.got.length === 1", timeout=5000)
        assert await page.evaluate("window.got") == [[20, 21]]


DASHBOARD = """<script type="module">
try {
  const { MiawsClient } = await import("http://127.0.0.1:%(port)d/client.js");
  window.imported = typeof MiawsClient;
} catch (e) {
  window.imported = "failed: " + e.message;
}
</script>"""

# Dashboards on other origins than the server's (another port is another origin).
DASHBOARD_PORT, OTHER_PORT = free_port(), free_port()
DASHBOARD_ORIGIN = f"http://127.0.0.1:{DASHBOARD_PORT}"


class DashboardPage(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(DASHBOARD % {"port": self.application.settings["miaws_port"]})


@pytest.fixture
def dashboards(port: int) -> Iterator[None]:
    """The dashboard page served on DASHBOARD_PORT and OTHER_PORT (real servers: Chromium
    keeps pages it cannot place on the network from loading anything from 127.0.0.1)."""
    servers = []
    for at in (DASHBOARD_PORT, OTHER_PORT):
        app = tornado.web.Application([(r"/", DashboardPage)], miaws_port=port)
        servers.append(app.listen(at, address="127.0.0.1"))
    yield
    for server in servers:
        server.stop()


async def import_from(browser: Any, at: int) -> str:
    """What the dashboard page on port at sees when it imports the server's /client.js."""
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{at}/")
    await page.wait_for_function("window.imported !== undefined", timeout=10000)
    result: str = await page.evaluate("window.imported")
    await page.close()
    return result


async def test_client_js_can_be_imported_from_another_origin(dashboards: None) -> None:
    """A dashboard on another origin imports /client.js (a module script needs CORS): with
    the default security.allowed_origins, any origin may."""
    async with chromium() as browser:
        assert await import_from(browser, DASHBOARD_PORT) == "function"


@pytest.mark.config({"security": {"allowed_origins": [DASHBOARD_ORIGIN]}})
async def test_client_js_cors_follows_allowed_origins(dashboards: None) -> None:
    """With an allow-list, the listed origin may import it and another may not."""
    async with chromium() as browser:
        assert await import_from(browser, DASHBOARD_PORT) == "function"
        assert (await import_from(browser, OTHER_PORT)).startswith("failed")
