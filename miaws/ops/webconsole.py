"""The web console at ``/``: static HTML, JavaScript and CSS shipped in ``miaws/console/``.

The page polls ``/health``, ``/api/clients``, ``/api/rooms`` (and ``/api/presence`` of the
room whose presence it shows) and has a panel that opens its own WebSocket to
``server.ws_path``.  ``console.enabled: false`` answers 404 (checked per
request, so a config reload switches it on or off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.template
import tornado.web

from miaws.service import Service
from miaws.transport.origins import origin_allowed

__all__ = [
    "ConsoleHandler",
    "ConsoleAssetHandler",
    "ClientScriptHandler",
    "FaviconHandler",
    "CONSOLE_DIR",
    "STATIC_DIR",
    "console_routes",
]

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_templates = tornado.template.Loader(str(CONSOLE_DIR))


class ConsoleHandler(tornado.web.RequestHandler):
    """``GET /``: the console page, told where the WebSocket endpoint is."""

    service: Service

    def initialize(self, service: Service) -> None:
        self.service = service

    def get(self) -> None:
        if not self.service.settings.console.enabled:
            raise tornado.web.HTTPError(404)
        self.set_header("Cache-Control", "no-store")
        page = _templates.load("index.html").generate(ws_path=self.service.settings.server.ws_path)
        self.finish(page)


class _ServiceStaticHandler(tornado.web.StaticFileHandler):
    """Tornado's static files, with the service at hand (for its settings)."""

    service: Service | None = None

    def initialize(
        self,
        path: str,
        default_filename: str | None = None,
        allowed_symlink_directory: str | list[str] | None = None,
        service: Service | None = None,
    ) -> None:
        super().initialize(path, default_filename, allowed_symlink_directory)
        self.service = service


class ConsoleAssetHandler(_ServiceStaticHandler):
    """``GET /console/<file>``: the page's script and style sheet."""

    def prepare(self) -> None:
        if self.service is not None and not self.service.settings.console.enabled:
            raise tornado.web.HTTPError(404)


class ClientScriptHandler(_ServiceStaticHandler):
    """``GET /client.js``: the browser client, an ES module.  A page on another origin may
    import it when ``security.allowed_origins`` allows that origin (any, when the list is
    empty), so it is answered with ``Access-Control-Allow-Origin``."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if origin is None or self.service is None:
            return
        allowed = self.service.settings.security.allowed_origins
        if not allowed:
            self.set_header("Access-Control-Allow-Origin", "*")
        elif origin_allowed(origin, allowed):
            self.set_header("Access-Control-Allow-Origin", origin)


class FaviconHandler(tornado.web.RequestHandler):
    """``GET /favicon.ico``: no icon, 204, so that each console load (browsers ask for one)
    does not log a WARNING for a 404."""

    def get(self) -> None:
        self.set_status(204)
        self.set_header("Cache-Control", "max-age=86400")
        self.finish()


def console_routes(service: Service) -> list[Any]:
    return [
        (r"/", ConsoleHandler, {"service": service}),
        (r"/console/(.*)", ConsoleAssetHandler, {"path": str(CONSOLE_DIR), "service": service}),
        (r"/favicon\.ico", FaviconHandler),
        (r"/(client\.js)", ClientScriptHandler, {"path": str(STATIC_DIR), "service": service}),
    ]
