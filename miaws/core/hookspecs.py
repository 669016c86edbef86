"""The plugin author's reference: every hook miaws calls, with its arguments and return.

A plugin is a module (or object) with functions decorated ``@hookimpl``, whose names match
these specs.  Argument names must match too; a plugin may accept fewer arguments.  A plugin
that misspells a hook name stops start-up (``check_pending``).  ``docs/plugins.md`` has a
complete worked example.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from miaws.core.model import Client, MessageType

__all__ = ["hookspec", "hookimpl"]

hookspec = pluggy.HookspecMarker("miaws")
hookimpl = pluggy.HookimplMarker("miaws")


# ---------------------------------------------------------------- registration


@hookspec
def register_message_types(config: Any) -> list[MessageType]:
    """Return the client message types this plugin handles.

    Called once at start-up (and again on a config reload).  Two plugins claiming the same
    type stop start-up with both plugin names.

    :param config: the node's settings (:class:`miaws.Settings`, read-only: ``config.proxy``,
        ``config.limits``, ...), for a plugin whose types come from the configuration, as the
        built-in ``proxy`` plugin's do.  Most plugins leave it out (pluggy passes only the
        arguments an implementation names).
    :return: a list of :class:`miaws.MessageType`.
    """
    raise NotImplementedError


@hookspec
def startup(service: Any) -> None:
    """Called once when the server has been built, before it accepts connections, and again
    for the new plugin registry when a config reload changes ``plugins`` or ``schemas``.

    :param service: the :class:`miaws.service.Service` (settings, counts).
    """


# ---------------------------------------------------------------- connection lifecycle


@hookspec
def client_connected(client: Client) -> None:
    """A client connected (after the ``welcome`` was sent).

    :param client: the new :class:`miaws.Client`; ``client.transport`` says ``ws`` or
        ``socket.io``.
    """


@hookspec
def client_disconnected(client: Client, code: int, reason: str) -> None:
    """A client disconnected and was removed from the registry.

    :param client: the client, with the rooms it was in still listed in ``client.rooms``.
    :param code: the close code (1000, 1001, 1005, 1006, 1011, ...).
    :param reason: a short description (``"dead: missed heartbeat"``, a close reason, ...);
        for display only: miaws itself never parses it.
    """


@hookspec
def room_joined(client: Client, room: str) -> None:
    """A client of this node became a member of a room (not called when it joins again).

    :param client: the member.
    :param room: the room's name as the client gave it (its namespace is
        ``client.namespace``).
    """


@hookspec
def room_left(client: Client, room: str) -> None:
    """A client of this node stopped being a member of a room: it left, or it disconnected
    (then once per room, before ``client_disconnected``).

    :param client: the former member.
    :param room: the room's name as the client gave it.
    """


# ---------------------------------------------------------------- authorisation


@hookspec(firstresult=True)
def authorize_message(client: Client, message: dict[str, Any]) -> bool | None:
    """Allow or deny one valid message before its handler runs (``join-room`` included).

    Stops at first non-None result.

    :param client: the sender.
    :param message: the message, already checked against its schema.
    :return: ``False`` to deny (the client gets error ``forbidden``), ``True`` to allow
        without asking further plugins, ``None`` to have no opinion.  A plugin may also
        raise :class:`miaws.Forbidden` with its own message.
    """
