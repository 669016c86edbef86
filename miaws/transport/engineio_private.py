"""Every python-engineio / python-socketio internal miaws uses, declared in one place.

The Socket.IO bridge (:mod:`miaws.transport.sio`) stays on python-socketio's public API where
it can; where it cannot, the names it uses are listed here, by the class that owns them:

- :data:`PRIVATE`: underscore names (overridden or read).  ``tests/test_privates.py`` fails
  when miaws's source uses one that is not listed, or lists one no longer used.
- :data:`UNDOCUMENTED`: names without an underscore that are still internals (neither
  library documents them as API): Engine.IO's socket table and per-socket queue, the
  manager's sid mapping, the ``tornado.handler`` environ key.

Each is checked by a canary test on the real classes (and, for ``tornado.handler``, on the
source of Engine.IO's Tornado driver), so an upgrade shows what to revisit.  Both libraries
are pinned tightly in ``pyproject.toml`` for this reason.
"""

from __future__ import annotations

__all__ = ["PRIVATE", "UNDOCUMENTED", "ENVIRON_KEYS", "declared"]

PRIVATE: dict[str, tuple[str, ...]] = {
    # overridden: a packet it cannot parse closes the connection instead of a traceback;
    # an Engine.IO connection's start and end, for what the admission path counted for it
    "socketio.async_server.AsyncServer": (
        "_handle_eio_message",
        "_handle_eio_connect",
        "_handle_eio_disconnect",
    ),
}
"""Underscore names, by class (checked with hasattr)."""

UNDOCUMENTED: dict[str, tuple[str, ...]] = {
    "socketio.async_server.AsyncServer": ("eio", "manager", "packet_class"),
    "engineio.async_server.AsyncServer": ("sockets",),  # instance: sid -> AsyncSocket
    "engineio.async_socket.AsyncSocket": ("queue", "close"),  # queue: instance attribute
    "socketio.async_manager.AsyncManager": ("eio_sid_from_sid", "is_connected"),
}
"""Internals without an underscore, by class (class attribute, or set in ``__init__``)."""

ENVIRON_KEYS: tuple[str, ...] = ("tornado.handler",)
"""Keys of the WSGI-style environ that Engine.IO's Tornado driver fills in."""


def declared() -> frozenset[str]:
    """Every underscore name declared above."""
    return frozenset(name for names in PRIVATE.values() for name in names)
