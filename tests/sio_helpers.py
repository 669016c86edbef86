"""Socket.IO test helpers: a python-socketio client (:class:`SioPeer`), the official
``socket.io-client`` run by Node (:class:`NodePeer`, same interface), and a plugin that
produces the error codes no built-in type can."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import socketio

NODE_DIR = Path(__file__).resolve().parent / "node"
BUILTINS = ["ping", "echo", "broadcast", "rooms", "presence"]

ERRORS_PLUGIN = """
from miaws import MessageType, hookimpl
from miaws.core.errors import RateLimited

def handle_flood(ctx, message):
    raise RateLimited("Too many messages")

def handle_crash(ctx, message):
    raise RuntimeError("a bug in a plugin")

@hookimpl
def register_message_types():
    return [
        MessageType("flood", handle_flood, schema={"type": "object"}),
        MessageType("crash", handle_crash, schema={"type": "object"}),
    ]

@hookimpl
def authorize_message(client, message):
    return False if message.get("room") == "vip" else None
"""

ERROR_CASES: list[tuple[str, list[Any], str]] = [
    # (event, its arguments, the error code); invalid-json: tests/test_socketio_edges.py
    ("ping", ["not an object"], "invalid-message"),
    ("ping", [[1, 2]], "invalid-message"),
    ("ping", [], "invalid-message"),
    ("ping", [{}, {}], "invalid-message"),
    ("ping", [{"id": True}], "invalid-message"),
    ("join-room", [{"room": "bad room"}], "invalid-message"),
    ("echo", [{}], "invalid-message"),
    ("nope", [{}], "unknown-type"),
    ("leave-room", [{"room": "never"}], "not-in-room"),
    ("broadcast", [{"message": 1, "room": "never"}], "not-in-room"),
    ("join-room", [{"room": "vip"}], "forbidden"),
    ("flood", [{}], "rate-limited"),
]


def with_errors_plugin(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The test's ``config`` marker data, with the errors plugin enabled beside the built-ins."""
    marker = request.node.get_closest_marker("config")
    data: dict[str, Any] = dict(marker.args[0]) if marker else {}
    (tmp_path / "p").mkdir(exist_ok=True)
    (tmp_path / "p" / "sioerrors.py").write_text(textwrap.dedent(ERRORS_PLUGIN))
    data.setdefault(
        "plugins", {"enabled": [*BUILTINS, "sioerrors"], "paths": [str(tmp_path / "p")]}
    )
    return data


class EventPeer:
    """What both Socket.IO test clients share: received events in a queue, and the welcome."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.welcome: dict[str, Any] = {}

    @property
    def client_id(self) -> str:
        client_id: str = self.welcome["clientId"]
        return client_id

    async def read_welcome(self) -> None:
        event, self.welcome = await self.recv()
        assert event == "welcome", (event, self.welcome)

    async def recv(self, timeout: float = 5.0) -> tuple[str, Any]:
        """The next event as (name, payload)."""
        return await asyncio.wait_for(self.events.get(), timeout)

    async def call(self, event: str, data: Any, timeout: float = 5.0) -> Any:
        """Emit with an ack callback and return what the ack received."""
        raise NotImplementedError

    async def request(self, event: str, data: Any) -> tuple[Any, tuple[str, Any]]:
        """Emit with an ack; return (ack value, the event that carried the reply)."""
        ack = await self.call(event, data)
        return ack, await self.recv()

    async def expect_silence(self, seconds: float = 0.3) -> None:
        await asyncio.sleep(seconds)
        assert self.events.empty(), f"unexpected event {self.events.get_nowait()!r}"


class SioPeer(EventPeer):
    """One Socket.IO connection to one namespace; ``welcome`` is read by :meth:`connect`."""

    def __init__(self, namespace: str = "/") -> None:
        super().__init__(namespace)
        self.client = socketio.AsyncClient(reconnection=False)
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
        await peer.read_welcome()
        return peer

    async def emit(self, event: str, *data: Any) -> None:
        await self.client.emit(event, data[0] if len(data) == 1 else data, namespace=self.namespace)

    async def call(self, event: str, data: Any, timeout: float = 5.0) -> Any:
        return await self.client.call(event, data, namespace=self.namespace, timeout=timeout)

    async def close(self) -> None:
        await self.client.disconnect()


def ensure_node_modules(timeout: float = 120.0) -> None:
    """Install tests/node's locked socket.io-client with ``npm ci`` unless it is there."""
    if (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail(
            "node and npm are needed for the socket.io-client tests (.ci/run installs them)"
        )
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci in {NODE_DIR} failed:\n{done.stdout}\n{done.stderr}")


class NodePeer(EventPeer):
    """socket.io-client 4 in a Node process (tests/node/peer.js), with SioPeer's interface."""

    def __init__(self, proc: asyncio.subprocess.Process, namespace: str) -> None:
        super().__init__(namespace)
        self.proc = proc
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.status: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # connect, disconnect...
        self.upgraded = asyncio.Event()  # set when Engine.IO upgraded polling to WebSocket
        self._seq = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls, url: str, namespace: str = "/", transport: str | None = None
    ) -> NodePeer:
        args = [str(NODE_DIR / "peer.js"), url, namespace, *([transport] if transport else [])]
        proc = await asyncio.create_subprocess_exec(
            "node",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        peer = cls(proc, namespace)
        try:
            first = await peer.next_status()
            assert first["kind"] == "connect", first
            await peer.read_welcome()
        except BaseException:
            await peer.close()
            raise
        return peer

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if msg["kind"] == "event":
                await self.events.put((msg["event"], msg["data"]))
            elif msg["kind"] == "ack":
                future = self.acks.pop(msg["seq"])
                if msg["error"]:
                    future.set_exception(AssertionError(f"ack: {msg['error']}"))
                else:
                    future.set_result(msg["data"])
            elif msg["kind"] == "upgrade":
                self.upgraded.set()
            else:
                await self.status.put(msg)

    def _command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")

    async def wait_upgraded(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.upgraded.wait(), timeout)

    async def next_status(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.status.get(), timeout)

    async def emit(self, event: str, *data: Any) -> None:
        self._command(op="emit", event=event, args=list(data), ack=False)

    async def call(self, event: str, data: Any, timeout: float = 5.0) -> Any:
        self._seq += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[self._seq] = future
        args = list(data) if isinstance(data, tuple) else [data]
        self._command(op="emit", event=event, args=args, ack=True, seq=self._seq)
        return await asyncio.wait_for(future, timeout)

    async def disconnect(self) -> dict[str, Any]:
        """socket.disconnect(); returns the client's disconnect status line."""
        self._command(op="disconnect")
        return await self.next_status()

    def kill(self) -> None:
        """End the Node process abruptly (no Socket.IO disconnect)."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def close(self) -> None:
        self.kill()
        await asyncio.wait_for(self.proc.wait(), 5)
        await asyncio.wait_for(self._reader, 5)
