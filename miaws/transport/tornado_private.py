"""Every Tornado private name miaws uses, declared in one place.

miaws is fast because it works under Tornado's public API in a few places (see
docs/hot-path.md): the frame reader and corked writes of :mod:`miaws.transport.protocol`, the
short way in for upgrades (:mod:`miaws.transport.upgrade`), permessage-deflate
(:mod:`miaws.transport.deflate`), the lighter handler of
:mod:`miaws.transport.native`, the slow-consumer cap, one error body in :mod:`miaws.ops.httpapi`.
Those names are not Tornado's promise, so each one miaws touches is listed here, by the class
(or module) that owns it.  Code elsewhere may use them inline (the hot path does) only when
they are listed:

- ``tests/test_privates.py`` fails when miaws's source uses a private Tornado name that is
  not declared here, or declares one it no longer uses;
- its canary tests fail on a Tornado lacking one of them (checked on the real classes, and
  on real instances for attributes set in ``__init__``), so an upgrade of Tornado shows
  what to revisit before anything misbehaves.  ``pyproject.toml`` pins Tornado to ``<7``.

Not Tornado's, but relied on beside it: ``asyncio.Future._asyncio_future_blocking``
(:func:`miaws.transport.upgrade._run` sets it as a ``Task`` would).
"""

from __future__ import annotations

__all__ = ["CLASS_NAMES", "INSTANCE_NAMES", "MODULE_NAMES", "declared"]

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    # methods (called or overridden), checked with hasattr on the class
    "tornado.iostream.BaseIOStream": ("_start_read", "_add_io_state"),
    "tornado.websocket.WebSocketProtocol13": (
        "_receive_frame_loop",  # replaced: the batching frame reader
        "_handle_message",  # control frames and non-text messages
        "_write_frame",  # control frames written directly
        "_run_callback",  # how Tornado calls on_message
        "_abort",
        "_create_compressors",  # permessage-deflate: miaws's answer and zlib objects
    ),
    "tornado.tcpserver.TCPServer": (
        "_handle_connection",  # what miaws's accept loop gives an accepted socket to
    ),
    "tornado.web.RequestHandler": (
        "_execute",  # the short way in runs the handler from the request head
        "_request_summary",  # overridden: the access log without the token
    ),
}
"""Methods, by the class that defines or inherits them."""

INSTANCE_NAMES: dict[str, tuple[str, ...]] = {
    # attributes set in __init__, checked on real instances
    "tornado.iostream.BaseIOStream": (
        "_write_buffer",  # its size: what the peer has not taken (queue cap, direct send)
        "_write_futures",  # replaced by a list (memory per idle connection)
        "_read_buffer",  # giving a non-upgrade request's head back to Tornado
        "_read_buffer_size",
        "_read_bytes",  # waiting for readiness without a first recv
        "_read_partial",
    ),
    "tornado.iostream._StreamBuffer": ("_buffers",),  # replaced by a list
    # fd -> remover of a listening socket's accept handler: miaws's accept loop
    # (miaws.transport.accept) puts its own in, which TCPServer.stop then removes
    "tornado.tcpserver.TCPServer": ("_handlers",),
    "tornado.websocket.WebSocketProtocol13": (
        "_fragmented_message_buffer",
        "_fragmented_message_opcode",
        "_decompressor",  # permessage-deflate: holds miaws's Inflater (Tornado's reader if not)
        "_compressor",  # permessage-deflate: holds miaws's Deflater
        "_wire_bytes_out",
        "_ping_coroutine",  # holds the heartbeat's timer handle instead of a task
        "_received_pong",
    ),
    "tornado.web.RequestHandler": (
        "_headers",  # RequestHandler.clear with a cached Date; dropped after the upgrade
        "_write_buffer",
        "_status_code",
        "_reason",  # the error body of miaws.ops.httpapi
    ),
}
"""Instance attributes, by the class whose ``__init__`` (or ``clear``) sets them."""

MODULE_NAMES: dict[str, tuple[str, ...]] = {
    "tornado.util": ("_websocket_mask",),  # the C unmasking
    "tornado.httpserver": (
        "_HTTPRequestContext",
    ),  # remote_ip and protocol, as Tornado works them out
}
"""Private module-level names imported by miaws."""


def declared() -> frozenset[str]:
    """Every private name declared above."""
    groups = (*CLASS_NAMES.values(), *INSTANCE_NAMES.values(), *MODULE_NAMES.values())
    return frozenset(name for group in groups for name in group)
