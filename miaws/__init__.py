"""miaws: a standalone real-time WebSocket server with plugin message types.

The public API is the wire protocol, :data:`hookimpl`, the hooks in
:mod:`miaws.core.hookspecs`, the names exported here, :mod:`miaws.client` and
:mod:`miaws.testing`.

Names are imported on first use (PEP 562), so ``import miaws.client`` costs only the client
and ``miaws.core.errors``: no Tornado, pluggy, jsonschema, PyYAML or PyJWT.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miaws.core.context import Context
    from miaws.core.errors import (
        BackendError,
        BackendTimeout,
        CloseCode,
        ConfigError,
        Forbidden,
        InvalidJSON,
        InvalidMessage,
        MessageError,
        MiawsError,
        NotInRoom,
        RateLimited,
        UnknownType,
    )
    from miaws.core.history import Joined, Position
    from miaws.core.hookspecs import hookimpl
    from miaws.core.model import Client, MessageType
    from miaws.integration.backend import Answer, Backends

__version__ = "0.1.0"

_EXPORTS = {
    "hookimpl": "miaws.core.hookspecs",
    "MessageType": "miaws.core.model",
    "Context": "miaws.core.context",
    "Client": "miaws.core.model",
    "Joined": "miaws.core.history",
    "Position": "miaws.core.history",
    "CloseCode": "miaws.core.errors",
    "MiawsError": "miaws.core.errors",
    "ConfigError": "miaws.core.errors",
    "MessageError": "miaws.core.errors",
    "InvalidJSON": "miaws.core.errors",
    "InvalidMessage": "miaws.core.errors",
    "UnknownType": "miaws.core.errors",
    "NotInRoom": "miaws.core.errors",
    "RateLimited": "miaws.core.errors",
    "Forbidden": "miaws.core.errors",
    "BackendError": "miaws.core.errors",
    "BackendTimeout": "miaws.core.errors",
    "Backends": "miaws.integration.backend",
    "Answer": "miaws.integration.backend",
}

__all__ = [  # the same names as _EXPORTS (tests/test_layers.py), spelled out for tools
    "hookimpl",
    "MessageType",
    "Context",
    "Client",
    "Joined",
    "Position",
    "CloseCode",
    "MiawsError",
    "ConfigError",
    "MessageError",
    "InvalidJSON",
    "InvalidMessage",
    "UnknownType",
    "NotInRoom",
    "RateLimited",
    "Forbidden",
    "BackendError",
    "BackendTimeout",
    "Backends",
    "Answer",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'miaws' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
