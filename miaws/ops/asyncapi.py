"""The live protocol as an AsyncAPI 3.0 document, built from the enabled plugins' schemas.

``GET /asyncapi.json`` and ``miaws asyncapi`` serve the same document: one ``ws`` channel
(the native endpoint); one ``receive`` operation per client message type, whose payload is
that type's JSON Schema exactly as the server checks it; and the messages every server
sends whatever its plugins (``welcome`` on connect, ``error`` for a refused message).
Client teams can feed it to any AsyncAPI tool; it changes when plugins change.
"""

from __future__ import annotations

import re
from typing import Any

from miaws import __version__
from miaws.core.errors import ERROR_CODES
from miaws.core.plugins import Registry
from miaws.ops.httpapi import JSONHandler

__all__ = ["asyncapi_document", "AsyncAPIHandler"]

SERVER_MESSAGES: dict[str, dict[str, Any]] = {
    "welcome": {
        "summary": "Sent once on connect.",
        "payload": {
            "type": "object",
            "properties": {
                "type": {"const": "welcome"},
                "clientId": {"type": "string"},
                "message": {"type": "string"},
                "timestamp": {"type": "string", "format": "date-time"},
            },
            "required": ["type", "clientId", "message", "timestamp"],
        },
    },
    "error": {
        "summary": "The reply to a message that was refused; carries the message's id.",
        "payload": {
            "type": "object",
            "properties": {
                "type": {"const": "error"},
                "code": {"enum": list(ERROR_CODES)},
                "message": {"type": "string"},
                "details": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
                },
                "id": {"type": ["string", "integer"]},
                "timestamp": {"type": "string", "format": "date-time"},
            },
            "required": ["type", "code", "message", "timestamp"],
        },
    },
    "gap": {
        "summary": (
            "To the members of a room with history (Redis broker): messages before this "
            "position may have been lost for you; the messages after seq follow "
            "(docs/recovery.md)."
        ),
        "payload": {
            "type": "object",
            "properties": {
                "type": {"const": "gap"},
                "room": {"type": "string"},
                "epoch": {"type": "string"},
                "seq": {"type": "integer", "minimum": 0},
                "timestamp": {"type": "string", "format": "date-time"},
            },
            "required": ["type", "room", "epoch", "seq"],
        },
    },
}

ENVELOPE = (
    "Every message is a JSON object with a string `type`. A client message may carry an `id` "
    "(a string of at most 64 characters or an integer); the reply carries the same `id`. "
    "Broadcasts to a room with history carry `epoch` and `seq`; `join-room` with `since` "
    "recovers missed ones (docs/recovery.md)."
)


def _key(name: str) -> str:
    """A component key AsyncAPI accepts (``^[a-zA-Z0-9.\\-_]+$``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _payload(schema: dict[str, Any]) -> dict[str, Any]:
    """A message schema as an AsyncAPI payload (draft-07 superset): minus $schema and $id."""
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def _reply_payload(schema: dict[str, Any]) -> dict[str, Any]:
    """A declared reply's schema with what the core adds to every reply."""
    payload = _payload(schema)
    props = {**payload.get("properties", {})}
    props.setdefault("timestamp", {"type": "string", "format": "date-time"})
    props.setdefault("id", {"type": ["string", "integer"]})
    return {**payload, "properties": props}


def asyncapi_document(registry: Registry, host: str, ws_path: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of a server with this registry, reached at host."""
    channel_ref = {"$ref": "#/channels/ws"}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    replies: dict[str, tuple[str, dict[str, Any]]] = {}  # reply key -> (type, schema)
    for _, bound in sorted(registry.types.items()):
        for reply_type, schema in bound.descriptor.replies.items():
            replies.setdefault(f"reply.{_key(reply_type)}", (reply_type, schema))
    for key, (reply_type, schema) in sorted(replies.items()):
        messages[key] = {
            "name": reply_type,
            "title": reply_type,
            "summary": f"The server sends {reply_type}.",
            "contentType": "application/json",
            "payload": _reply_payload(schema),
        }
    for type_name, bound in sorted(registry.types.items()):
        key = _key(type_name)
        messages[key] = {
            "name": type_name,
            "title": type_name,
            "summary": bound.descriptor.description or f"The {type_name} message.",
            "contentType": "application/json",
            "payload": _payload(bound.schema.document),
            "x-miaws-plugin": bound.plugin,
        }
        operations[f"receive.{key}"] = {
            "action": "receive",
            "channel": channel_ref,
            "summary": f"A client sends {type_name}.",
            "messages": [{"$ref": f"#/channels/ws/messages/{key}"}],
        }
        if bound.descriptor.replies:
            operations[f"receive.{key}"]["reply"] = {
                "channel": channel_ref,
                "messages": [
                    {"$ref": f"#/channels/ws/messages/reply.{_key(r)}"}
                    for r in sorted(bound.descriptor.replies)
                ],
            }
    for name, spec in SERVER_MESSAGES.items():
        key = f"server.{name}"
        messages[key] = {"name": name, "title": name, "contentType": "application/json", **spec}
        operations[f"send.{name}"] = {
            "action": "send",
            "channel": channel_ref,
            "summary": spec["summary"],
            "messages": [{"$ref": f"#/channels/ws/messages/{key}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "miaws",
            "version": __version__,
            "description": "The live protocol of this miaws server. " + ENVELOPE,
        },
        "defaultContentType": "application/json",
        "servers": {
            "miaws": {"host": host, "protocol": "ws", "pathname": ws_path},
        },
        "channels": {
            "ws": {
                "address": ws_path,
                "title": "The native WebSocket endpoint",
                "servers": [{"$ref": "#/servers/miaws"}],
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
            }
        },
        "operations": operations,
        "components": {"messages": messages},
    }


class AsyncAPIHandler(JSONHandler):
    """``GET /asyncapi.json``: the document, with the host the client asked for."""

    def get(self) -> None:
        s = self.service.settings
        host = self.request.host or f"{s.server.host}:{s.server.port}"
        self.send_json(asyncapi_document(self.service.registry, host, s.server.ws_path))
