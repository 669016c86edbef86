"""miaws: a standalone real-time WebSocket server with plugin message types.

The public API is the wire protocol, :data:`hookimpl`, the hooks in :mod:`miaws.core.hookspecs`,
and the names exported here.
"""

from miaws.core.dispatch import Context
from miaws.core.errors import (
    CloseCode,
    Forbidden,
    InvalidJSON,
    InvalidMessage,
    MessageError,
    MiawsError,
    NotInRoom,
    RateLimited,
    UnknownType,
)
from miaws.core.hookspecs import hookimpl
from miaws.core.model import Client, MessageType

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "MessageType",
    "Context",
    "Client",
    "CloseCode",
    "MiawsError",
    "MessageError",
    "InvalidJSON",
    "InvalidMessage",
    "UnknownType",
    "NotInRoom",
    "RateLimited",
    "Forbidden",
    "__version__",
]
