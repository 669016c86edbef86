"""Operators' write endpoints: ``POST /api/publish`` and ``POST /api/reload``.

Both sit under ``/api/`` and so need the bearer key when keys are configured.
"""

from __future__ import annotations

import json
from typing import Any

from miaws.core.errors import MiawsError
from miaws.core.rooms import room_key, valid_room
from miaws.ops.httpapi import JSONHandler
from miaws.ops.idempotency import IDEMPOTENCY_HEADER, IdempotencyKeys, Refusal
from miaws.ops.reload import reload_config

__all__ = ["PublishHandler", "ReloadHandler", "publish_payload", "publish_payloads"]

PUBLISH_KEYS = {"room", "message"}
MAX_BATCH = 1000  # messages in one POST /api/publish


class BadRequest(MiawsError, ValueError):
    """The request body is unusable; the text goes back as the 400 error."""


def publish_payload(body: bytes, timestamp: str) -> tuple[str | None, dict[str, Any]]:
    """(room or None, broadcast payload) from a publish request body; BadRequest if unusable."""
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("body is not valid JSON") from None
    return _one_payload(data, timestamp)


def publish_payloads(body: bytes, timestamp: str) -> list[tuple[str | None, dict[str, Any]]] | None:
    """The messages of a batch (a JSON list), in order, or None when body is one object;
    BadRequest naming the first unusable item (nothing is sent then)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(data, list):
        return None
    if not data:
        raise BadRequest("an empty list: expected at least one message")
    if len(data) > MAX_BATCH:
        raise BadRequest(f"a list of {len(data)} messages; at most {MAX_BATCH} per request")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(_one_payload(item, timestamp))
        except BadRequest as exc:
            raise BadRequest(f"[{i}]: {exc}") from None
    return out


def _one_payload(data: Any, timestamp: str) -> tuple[str | None, dict[str, Any]]:
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
    """``POST /api/publish`` ``{"room": R?, "message": ANY}`` -> ``{"recipients": N}``, or a
    list of such objects -> ``{"results": [{"recipients": N}, ...]}``, delivered in order
    (all or nothing: one unusable item is a 400 and nothing is sent).

    Every client (or every member of R) gets ``{"type":"broadcast","message":ANY,
    "from":"server","room"?:R,"timestamp"}``; N counts the recipients on this server.

    With an ``Idempotency-Key`` header (see :mod:`miaws.ops.idempotency`) a repeat within
    ``api.idempotency_window`` delivers nothing and gets the first answer again.
    """

    async def post(self) -> None:
        timestamp = self.service.clock.timestamp()
        try:
            batch = publish_payloads(self.request.body, timestamp)
            messages = (
                batch if batch is not None else [publish_payload(self.request.body, timestamp)]
            )
        except BadRequest as exc:
            self.send_json({"error": str(exc)}, 400)
            return
        key = self.request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            self.send_json(self._publish(messages, batch is not None))
            return
        keys = IdempotencyKeys(self.service.broker, self.service.settings.api.idempotency_window)
        try:
            first = await keys.claim(key, self.request.body)
        except Refusal as exc:
            if exc.retry_after:
                self.set_header("Retry-After", str(exc.retry_after))
            self.send_json({"error": exc.reason}, exc.status)
            return
        if first is not None:
            self.set_header("Idempotent-Replayed", "true")
            self.send_json(first)
            return
        answer = self._publish(messages, batch is not None)
        await keys.answered(key, self.request.body, answer)
        self.send_json(answer)

    def _publish(
        self, messages: list[tuple[str | None, dict[str, Any]]], batch: bool
    ) -> dict[str, Any]:
        # The publish API's rooms are those of the native endpoint (namespace "/"); without a
        # room it reaches every client of every namespace.
        results = [
            {
                "recipients": self.service.publish(
                    payload, None if room is None else room_key("/", room)
                )
            }
            for room, payload in messages
        ]
        return {"results": results} if batch else results[0]


class ReloadHandler(JSONHandler):
    """``POST /api/reload``: re-read the config file; 200 with what changed, 422 if refused."""

    def post(self) -> None:
        result = reload_config(self.service, self.application)
        self.send_json(result.as_json(), 422 if result.error else 200)
