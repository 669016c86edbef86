"""RemoteEncoded: a message another node serialised, as it came from Redis."""

from __future__ import annotations

import json
from typing import Any

from miaws.core.model import Encoded

__all__ = ["RemoteEncoded"]


class RemoteEncoded(Encoded):
    """A message another node serialised: its text as received, parsed only if asked."""

    __slots__ = ()

    def __init__(self, data: bytes) -> None:  # not Encoded's: the UTF-8 JSON exists already
        self.data = data
        self._text = None
        self.wire = None

    def __getattr__(self, name: str) -> Any:
        # Only reached while the ``payload`` slot is unset.
        if name == "payload":
            self.payload = json.loads(self.data)
            return self.payload
        raise AttributeError(name)
