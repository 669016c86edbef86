"""Operators' HTTP endpoints on the server's port: health and the live registry."""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from miaws.apiauth import api_keys, check_bearer
from miaws.service import Service

__all__ = ["JSONHandler", "HealthHandler", "ClientsHandler", "RoomsHandler", "PluginsHandler"]


class JSONHandler(tornado.web.RequestHandler):
    """Base: JSON bodies, errors as ``{"error": ...}``."""

    service: Service

    def initialize(self, service: Service) -> None:
        self.service = service

    def prepare(self) -> None:
        """``/api/*`` needs a bearer key when keys are configured (see miaws.apiauth)."""
        if self.request.path.startswith("/api/"):
            status = check_bearer(
                self.request.headers.get("Authorization"), api_keys(self.service.settings)
            )
            if status == 401:
                self.set_header("WWW-Authenticate", 'Bearer realm="miaws"')
                self.send_json({"error": "API key required"}, 401)
            elif status == 403:
                self.send_json({"error": "API key not accepted"}, 403)

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json({"error": self._reason}, status_code)


class HealthHandler(JSONHandler):
    """``GET /health``: 200 with ``status`` and ``connections``."""

    def get(self) -> None:
        self.send_json(self.service.health())


class ClientsHandler(JSONHandler):
    """``GET /api/clients``: a list of client objects (clientId, rooms, transport, ...)."""

    def get(self) -> None:
        self.send_json(self.service.clients_info())


class RoomsHandler(JSONHandler):
    """``GET /api/rooms``: room name -> member count."""

    def get(self) -> None:
        self.send_json(self.service.rooms_info())


class PluginsHandler(JSONHandler):
    """``GET /api/plugins``: enabled plugins, their hooks and message types."""

    def get(self) -> None:
        self.send_json(self.service.registry.plugins_info())
