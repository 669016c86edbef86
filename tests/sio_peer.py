"""A python-socketio ``AsyncClient`` that records every event it receives, for the tests."""

from __future__ import annotations

import asyncio
from typing import Any

import socketio


class SioPeer:
    """One Socket.IO connection to one namespace; ``welcome`` is read by :meth:`connect`."""

    def __init__(self, namespace: str = "/") -> None:
        self.namespace = namespace
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.welcome: dict[str, Any] = {}
        self.client.on("*", self._record, namespace=namespace)

    async def _record(self, event: str, *args: Any) -> None:
        await self.events.put((event, args[0] if len(args) == 1 else list(args)))

    @classmethod
    async def connect(
        cls, url: str, namespace: str = "/", transports: list[str] | None = None, **kw: Any
    ) -> SioPeer:
        peer = cls(namespace)
        await peer.client.connect(
            url,
            namespaces=[namespace],
            transports=transports or ["websocket"],
            wait_timeout=5,
            **kw,
        )
        event, peer.welcome = await peer.recv()
        assert event == "welcome", (event, peer.welcome)
        return peer

    @property
    def client_id(self) -> str:
        client_id: str = self.welcome["clientId"]
        return client_id

    async def recv(self, timeout: float = 5.0) -> tuple[str, Any]:
        """The next event as (name, payload)."""
        return await asyncio.wait_for(self.events.get(), timeout)

    async def emit(self, event: str, *data: Any) -> None:
        await self.client.emit(event, data[0] if len(data) == 1 else data, namespace=self.namespace)

    async def call(self, event: str, data: Any, timeout: float = 5.0) -> Any:
        """Emit with an ack callback and return what the ack received."""
        return await self.client.call(event, data, namespace=self.namespace, timeout=timeout)

    async def request(self, event: str, data: Any) -> tuple[Any, tuple[str, Any]]:
        """Emit with an ack; return (ack value, the event that carried the reply)."""
        ack = await self.call(event, data)
        return ack, await self.recv()

    async def expect_silence(self, seconds: float = 0.3) -> None:
        await asyncio.sleep(seconds)
        assert self.events.empty(), f"unexpected event {self.events.get_nowait()!r}"

    async def close(self) -> None:
        await self.client.disconnect()
