"""Operators' HTTP endpoints on the server's port: health and the live registry."""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from miaws.core.errors import BrokerUnavailable
from miaws.core.presence import Member, presence_reply
from miaws.core.rooms import split_key
from miaws.ops.apikeys import api_keys, check_bearer
from miaws.service import Service

__all__ = [
    "JSONHandler",
    "HealthHandler",
    "LivezHandler",
    "ReadyzHandler",
    "ClientsHandler",
    "RoomsHandler",
    "PresenceHandler",
    "PluginsHandler",
]


class JSONHandler(tornado.web.RequestHandler):
    """Base: JSON bodies, errors as ``{"error": ...}``."""

    service: Service

    def initialize(self, service: Service) -> None:
        self.service = service

    def prepare(self) -> None:
        """``/api/*`` needs a bearer key when keys are configured (see miaws.ops.apikeys)."""
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
    """``GET /health``: 200 with ``status`` and ``connections`` (this node's).

    With the Redis broker it adds ``cluster``: every live node's totals, or
    ``{"node", "broker": "down"}`` while Redis is unreachable (``status`` is then
    ``degraded``, still 200: the node serves its own clients).
    """

    async def get(self) -> None:
        body = self.service.health()
        try:
            view = await self.service.broker.cluster()
        except BrokerUnavailable as exc:
            body["status"] = "degraded"
            body["cluster"] = {"node": exc.node, "broker": "down", "error": str(exc)}
        else:
            if view is not None:
                body["cluster"] = view.summary()
        self.send_json(body)


class LivezHandler(JSONHandler):
    """``GET /livez``: 200 ``{"status": "ok"}`` while the process serves HTTP, draining
    included.  A liveness probe that fails means: restart the process."""

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyzHandler(JSONHandler):
    """``GET /readyz``: 200 ``{"ready": true}`` when this node should be sent new clients,
    else 503 ``{"ready": false, "reason": ...}`` with ``Retry-After``: while it shuts down or
    drains (``draining``) and while it is at its connection cap (``full``).

    A broker outage does not make the node unready: every node shares the one broker, so
    failing readiness would take all of them out of the load balancer at once and turn a
    degraded service (each node still serves its own clients) into none; ``/health`` says
    ``degraded`` and alerts cover it.
    """

    def get(self) -> None:
        service = self.service
        reason = "draining" if service.shutting_down else "full" if service.at_capacity() else ""
        body: dict[str, Any] = {
            "ready": not reason,
            "connections": service.connection_count(),  # what max_connections caps
            "max_connections": service.max_connections(),
        }
        if reason:
            body["reason"] = reason
            self.set_header("Retry-After", "1" if reason == "full" else "5")
        self.send_json(body, 503 if reason else 200)


class ClientsHandler(JSONHandler):
    """``GET /api/clients``: a list of client objects (clientId, rooms, transport, ...)."""

    def get(self) -> None:
        self.send_json(self.service.clients_info())


class RoomsHandler(JSONHandler):
    """``GET /api/rooms``: room name -> member count on this node;
    ``?scope=cluster``: on all nodes (503 while the broker is unreachable)."""

    async def get(self) -> None:
        scope = self.get_query_argument("scope", "local")
        if scope == "local":
            self.send_json(self.service.rooms_info())
            return
        if scope != "cluster":
            self.send_json({"error": f"scope has value {scope!r}; expected local or cluster"}, 400)
            return
        try:
            view = await self.service.broker.cluster()
        except BrokerUnavailable as exc:
            self.send_json({"error": f"no cluster view: {exc}"}, 503)
            return
        self.send_json(self.service.rooms_info() if view is None else view.rooms())


class PresenceHandler(JSONHandler):
    """``GET /api/presence?room=KEY``: who is in a room (KEY as ``/api/rooms`` lists it).

    A room whose rule tracks presence (``rooms.rules``) answers as the ``presence`` request
    does, on every node (``"scope": "cluster"``); any other room lists this node's members
    (``"scope": "local"``, ``since`` null)."""

    async def get(self) -> None:
        key = self.get_query_argument("room", "")
        if not key:
            self.send_json({"error": "room is missing; expected ?room=<room key>"}, 400)
            return
        namespace, room = split_key(key)
        presence = self.service.presence
        if presence.tracks(key):
            members, partial = await presence.members(key)
            body = presence_reply(room, members, presence.cap, partial)
            body["scope"] = "cluster"
        else:
            local = [Member(c.client_id, c.user, 0) for c in self.service.local.members(key)]
            body = presence_reply(room, local, presence.cap)
            for m in body["members"]:
                m["since"] = None
            body["scope"] = "local"
        del body["type"]
        body["key"], body["namespace"] = key, namespace
        self.send_json(body)


class PluginsHandler(JSONHandler):
    """``GET /api/plugins``: enabled plugins, their hooks and message types."""

    def get(self) -> None:
        self.send_json(self.service.registry.plugins_info())
