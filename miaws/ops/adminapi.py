"""Operators' write endpoints: ``POST /api/publish`` and ``POST /api/reload``.

Both sit under ``/api/`` and so need the bearer key when keys are configured.
"""

from __future__ import annotations

import json
from typing import Any

from miaws.core.errors import MiawsError
from miaws.core.rooms import room_key, valid_room
from miaws.ops.httpapi import JSONHandler
from miaws.ops.reload import reload_config

__all__ = ["PublishHandler", "ReloadHandler", "publish_payload"]

PUBLISH_KEYS = {"room", "message"}


class BadRequest(MiawsError, ValueError):
    """The request body is unusable; the text goes back as the 400 error."""


def publish_payload(body: bytes, timestamp: str) -> tuple[str | None, dict[str, Any]]:
    """(room or None, broadcast payload) from a publish request body; BadRequest if unusable."""
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest('body must be a JSON object: {"room": R?, "message": ANY}')
    unknown = sorted(set(data) - PUBLISH_KEYS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; expected room and message")
    if "message" not in data:
        raise BadRequest("message is required (any JSON value)")
    room = data.get("room")
    if room is not None and not valid_room(room):
        raise BadRequest(f"invalid room name {room!r}: must be 1-64 characters of [A-Za-z0-9_.:-]")
    payload: dict[str, Any] = {"type": "broadcast", "message": data["message"], "from": "server"}
    if room is not None:
        payload["room"] = room
    payload["timestamp"] = timestamp
    return room, payload


class PublishHandler(JSONHandler):
    """``POST /api/publish`` ``{"room": R?, "message": ANY}`` -> ``{"recipients": N}``.

    Every client (or every member of R) gets ``{"type":"broadcast","message":ANY,
    "from":"server","room"?:R,"timestamp"}``; N counts the recipients on this server.
    """

    def post(self) -> None:
        try:
            room, payload = publish_payload(self.request.body, self.service.clock.timestamp())
        except BadRequest as exc:
            self.send_json({"error": str(exc)}, 400)
            return
        # The publish API's rooms are those of the native endpoint (namespace "/"); without a
        # room it reaches every client of every namespace.
        key = None if room is None else room_key("/", room)
        self.send_json({"recipients": self.service.publish(payload, key)})


class ReloadHandler(JSONHandler):
    """``POST /api/reload``: re-read the config file; 200 with what changed, 422 if refused."""

    def post(self) -> None:
        result = reload_config(self.service, self.application)
        self.send_json(result.as_json(), 422 if result.error else 200)
