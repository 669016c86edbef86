"""Operators' write endpoints: ``POST /api/publish`` and ``POST /api/reload``.

Both sit under ``/api/`` and so need the bearer key when keys are configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from miaws.core.dispatch import json_problem, loads
from miaws.core.errors import MiawsError
from miaws.core.rooms import room_key, split_key, valid_room
from miaws.ops.httpapi import JSONHandler
from miaws.ops.idempotency import IDEMPOTENCY_HEADER, IdempotencyKeys, Refusal
from miaws.ops.reload import reload_config

__all__ = ["Publish", "PublishHandler", "ReloadHandler", "publish_payload", "publish_payloads"]

PUBLISH_KEYS = {"room", "namespace", "message"}
MAX_BATCH = 1000  # messages in one POST /api/publish


class BadRequest(MiawsError, ValueError):
    """The request body is unusable; the text goes back as the 400 error."""


class Publish(NamedTuple):
    """One message of a publish request: where it goes, and what is sent."""

    key: str | None  # the room key (room_key), None: no room
    namespace: str | None  # without a room: that namespace's clients, None: every client
    payload: dict[str, Any]


def _body_json(body: bytes) -> Any:
    """The body as JSON, held to what a /ws frame could carry (no NaN, infinities or
    nesting past 128 levels, which json.loads takes and clients would get as null)."""
    try:
        data = loads(body.decode())
    except (ValueError, RecursionError):
        raise BadRequest("body is not valid JSON") from None
    if json_problem(data) is not None:
        raise BadRequest("body is not valid JSON")
    return data


def publish_payload(body: bytes, timestamp: str, namespaces: Sequence[str] = ("/",)) -> Publish:
    """The message of a publish request body; BadRequest if unusable.  namespaces: those a
    ``namespace`` field may name (``socketio.namespaces``; ``/`` always)."""
    return _one_payload(_body_json(body), timestamp, namespaces)


def publish_payloads(
    body: bytes, timestamp: str, namespaces: Sequence[str] = ("/",)
) -> list[Publish] | None:
    """The messages of a batch (a JSON list), in order, or None when body is one object;
    BadRequest naming the first unusable item (nothing is sent then)."""
    data = _body_json(body)
    if not isinstance(data, list):
        return None
    if not data:
        raise BadRequest("an empty list: expected at least one message")
    if len(data) > MAX_BATCH:
        raise BadRequest(f"a list of {len(data)} messages; at most {MAX_BATCH} per request")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(_one_payload(item, timestamp, namespaces))
        except BadRequest as exc:
            raise BadRequest(f"[{i}]: {exc}") from None
    return out


def _one_payload(data: Any, timestamp: str, namespaces: Sequence[str]) -> Publish:
    if not isinstance(data, dict):
        raise BadRequest(
            'body must be a JSON object: {"room": R?, "namespace": NS?, "message": ANY}'
        )
    unknown = sorted(set(data) - PUBLISH_KEYS)
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(unknown)}; expected room, namespace and message"
        )
    if "message" not in data:
        raise BadRequest("message is required (any JSON value)")
    namespace = data.get("namespace")
    if namespace is not None and namespace != "/" and namespace not in namespaces:
        known = ", ".join(sorted({"/", *namespaces}))
        raise BadRequest(
            f"unknown namespace {namespace!r}: expected one of socketio.namespaces ({known})"
        )
    room = data.get("room")
    if room is not None and not valid_room(room):
        hint = ""
        if isinstance(room, str) and "#" in room:  # a room key, as /api/rooms lists them
            ns, name = split_key(room)
            hint = f' (room {name!r} of namespace {ns!r}: send "namespace" and "room" apart)'
        raise BadRequest(
            f"invalid room name {room!r}: must be 1-64 characters of [A-Za-z0-9_.:-]{hint}"
        )
    payload: dict[str, Any] = {"type": "broadcast", "message": data["message"], "from": "server"}
    if room is not None:
        payload["room"] = room
    payload["timestamp"] = timestamp
    if room is not None:
        return Publish(room_key(namespace or "/", room), None, payload)
    return Publish(None, namespace, payload)


class PublishHandler(JSONHandler):
    """``POST /api/publish`` ``{"room": R?, "namespace": NS?, "message": ANY}`` ->
    ``{"recipients": N}``, or a list of such objects -> ``{"results": [{"recipients": N},
    ...]}``, delivered in order (all or nothing: one unusable item is a 400 and nothing is
    sent).

    Every member of room R of namespace NS (default ``/``, the native endpoint's rooms), or
    without R every client of NS (without NS: of every namespace), gets
    ``{"type":"broadcast","message":ANY,"from":"server","room"?:R,"timestamp"}``; N counts
    the recipients on this server.

    With an ``Idempotency-Key`` header (see :mod:`miaws.ops.idempotency`) a repeat within
    ``api.idempotency_window`` delivers nothing and gets the first answer again.
    """

    async def post(self) -> None:
        timestamp = self.service.clock.timestamp()
        namespaces = self.service.settings.socketio.namespaces
        try:
            batch = publish_payloads(self.request.body, timestamp, namespaces)
            messages = (
                batch
                if batch is not None
                else [publish_payload(self.request.body, timestamp, namespaces)]
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

    def _publish(self, messages: list[Publish], batch: bool) -> dict[str, Any]:
        results = [
            {"recipients": self.service.publish(m.payload, m.key, m.namespace)} for m in messages
        ]
        return {"results": results} if batch else results[0]


class ReloadHandler(JSONHandler):
    """``POST /api/reload``: re-read the config file; 200 with what changed, 422 if refused."""

    def post(self) -> None:
        result = reload_config(self.service, self.application)
        self.send_json(result.as_json(), 422 if result.error else 200)
