"""``ping`` -> ``pong``: the application-level liveness check."""

from typing import Any

from miaws import Context, MessageType, hookimpl


def handle_ping(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "pong"}


@hookimpl
def register_message_types() -> list[MessageType]:
    pong = {"type": "object", "properties": {"type": {"const": "pong"}}, "required": ["type"]}
    return [MessageType("ping", handle_ping, description="Answers pong.", replies={"pong": pong})]
