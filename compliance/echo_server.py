"""An echo server on miaws's own native transport, for the Autobahn TestSuite cases.

    python compliance/echo_server.py --port 9002 [--compression]

serves ``ws://127.0.0.1:PORT/``: miaws's upgrade path (``UpgradeServer``), its WebSocket
protocol and frame reader (``MiawsProtocol``), with no welcome and no dispatcher: each text
message is sent back as text and each binary one as binary.  Limits are raised for the
suite's 16 MB cases; ``--compression`` turns permessage-deflate on (``compression.enabled``,
every message compressed: ``min_size`` 0; :mod:`miaws.transport.deflate`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import tornado.web

from miaws.app import make_server
from miaws.config import build_settings
from miaws.service import Service
from miaws.transport.native import WebSocketEndpoint

MAX_MESSAGE = 32 * 1024 * 1024  # the suite's largest cases send 16 MiB


class EchoEndpoint(WebSocketEndpoint):
    """miaws's endpoint with the service taken out: open does nothing, messages echo."""

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        pass


async def serve(port: int, compression: bool) -> None:
    settings = build_settings(
        {
            "server": {"host": "127.0.0.1", "port": port, "ws_path": "/"},
            "heartbeat": {"interval": 0, "timeout": 0},
            "limits": {"max_message_bytes": MAX_MESSAGE, "max_queued_bytes": 0},
            "socketio": {"enabled": False},
            "compression": {"enabled": compression, "min_size": 0},
        },
        source="compliance",
        environ={},
    )
    service = Service.from_settings(settings)
    app = tornado.web.Application(
        [("/", EchoEndpoint, {"service": service})],
        websocket_max_message_size=MAX_MESSAGE,
    )
    server = make_server(app, service)
    server.ws_handler = EchoEndpoint
    server.listen(port, address="127.0.0.1")
    print(f"echo server on ws://127.0.0.1:{port}/ (compression {'on' if compression else 'off'})")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    args = p.parse_args()
    asyncio.run(serve(args.port, args.compression))


if __name__ == "__main__":
    main()
