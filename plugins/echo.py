"""``echo`` -> ``echo`` with the client's ``message`` as ``original``.

The smallest complete plugin: a handler, and a hook that registers it.  Its schema is
``schemas/echo.json``; the core checks every message against it before the handler runs, and
adds ``timestamp`` and the request's ``id`` to the reply.
"""

from typing import Any

from miaws import Context, MessageType, hookimpl


def handle_echo(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "echo", "original": message["message"]}


@hookimpl
def register_message_types() -> list[MessageType]:
    echo = {
        "type": "object",
        "properties": {"type": {"const": "echo"}, "original": {}},
        "required": ["type", "original"],
    }
    return [
        MessageType(
            "echo",
            handle_echo,
            description="Sends the message back as original.",
            replies={"echo": echo},
        )
    ]
