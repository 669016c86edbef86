"""Every python-engineio / python-socketio internal miaws uses, declared in one place.

The Socket.IO bridge (:mod:`miaws.transport.sio`) stays on python-socketio's public API where
it can; where it cannot, the names it uses are listed here, by the class that owns them:

- :data:`PRIVATE`: underscore names (overridden or read).  ``tests/test_privates.py`` fails
  when miaws's source uses one that is not listed, or lists one no longer used.
- :data:`PRIVATE_INSTANCE`: underscore names set on instances (checked on live objects).
- :data:`UNDOCUMENTED`: names without an underscore that are still internals (neither
  library documents them as API): Engine.IO's socket table, per-socket queue and state
  flags, the manager's sid mapping, the ``tornado.handler`` environ key, and the Tornado
  handler of Engine.IO's driver (:data:`DRIVER_HANDLER_NAMES`).

Why the Socket.IO hot path (:mod:`miaws.transport.sio_wire`) needs more than the public API:
python-socketio offers no way to handle an event without a task per packet on each side
(Engine.IO's reader wraps every ``receive`` in ``wait_for`` and a new task; its writer is a
task fed by a queue, writing each packet with Tornado's ``write_message``).  So miaws reads the
frames itself (overriding the driver handler's ``on_message`` / ``get_next_message``, and
knowing its ``receive_queue``), writes frames itself when Engine.IO's queue holds nothing
unwritten (``create_queue`` gives each session a counting queue; Engine.IO's writer calls
``task_done`` per packet as it writes it), checks the session's ``upgraded`` / ``upgrading``
/ ``closing`` / ``closed`` flags and python-socketio's pending binary packets
(``_binary_packet``), and holds what it sends a new namespace client until python-socketio
has answered its CONNECT (``_handle_connect``).

Each is checked by a canary test on the real classes (and, for ``tornado.handler``, on the
source of Engine.IO's Tornado driver), so an upgrade shows what to revisit.  Both libraries
are pinned tightly in ``pyproject.toml`` for this reason.
"""

from __future__ import annotations

__all__ = [
    "PRIVATE",
    "PRIVATE_INSTANCE",
    "UNDOCUMENTED",
    "ENVIRON_KEYS",
    "DRIVER_HANDLER_NAMES",
    "declared",
]

PRIVATE: dict[str, tuple[str, ...]] = {
    "socketio.async_server.AsyncServer": (
        "_handle_eio_message",  # overridden: an unparsable packet closes the connection
        "_handle_connect",  # overridden: what waited for the CONNECT answer goes out after it
        "_engineio_server_class",  # overridden: Engine.IO with miaws's per-session queue
        # overridden: the session's environ cut to what miaws reads, and what the admission
        # path counted for the connection given to the session and back at its end
        "_handle_eio_connect",
        "_handle_eio_disconnect",
    ),
}
"""Underscore names, by class (checked with hasattr)."""

PRIVATE_INSTANCE: dict[str, tuple[str, ...]] = {
    # eio_sid -> a binary packet awaiting its attachments: such a session's next frames
    # are python-socketio's
    "socketio.async_server.AsyncServer": ("_binary_packet",),
}
"""Underscore names set on instances, by class (checked on a live server)."""

UNDOCUMENTED: dict[str, tuple[str, ...]] = {
    "socketio.async_server.AsyncServer": ("eio", "manager", "packet_class"),
    # sockets (instance): sid -> AsyncSocket; create_queue: called for each socket's queue
    "engineio.async_server.AsyncServer": ("sockets", "create_queue"),
    "engineio.async_socket.AsyncSocket": (
        "queue",  # instance attributes, set in BaseSocket.__init__
        "sid",
        "upgraded",
        "upgrading",
        "closing",
        "closed",
        "close",
    ),
    "engineio.packet": ("Packet", "MESSAGE"),  # what a socket's queue holds
    "socketio.async_manager.AsyncManager": ("eio_sid_from_sid", "is_connected"),
}
"""Internals without an underscore, by class (class attribute, or set in ``__init__``)."""

ENVIRON_KEYS: tuple[str, ...] = ("tornado.handler",)
"""Keys of the WSGI-style environ that Engine.IO's Tornado driver fills in."""

DRIVER_HANDLER_NAMES: tuple[str, ...] = ("receive_queue", "get_next_message", "on_message")
"""Names of the handler class that ``engineio.async_drivers.tornado.get_tornado_handler``
builds, which miaws's subclass reads or overrides (checked on the driver's source)."""


def declared() -> frozenset[str]:
    """Every underscore name declared above."""
    return frozenset(
        name for table in (PRIVATE, PRIVATE_INSTANCE) for names in table.values() for name in names
    )
