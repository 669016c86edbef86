"""The short way in for WebSocket upgrades (miaws.transport.upgrade), seen from raw sockets:
upgrades of the WebSocket path however the head arrives, refusals answered and closed, everything
else served by Tornado as before (keep-alive, pipelining), and Tornado's header limits."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tornado.httputil
import tornado.netutil
import tornado.web
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from miaws.service import Service
from miaws.transport.native import WebSocketEndpoint
from miaws.transport.upgrade import UpgradeServer, parse_headers


def upgrade_head(port: int, path: str = "/ws", key: bool = True) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ]
    if key:
        lines.append(f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(status line and headers, body by Content-Length) of one HTTP response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return head, body


async def read_welcome(reader: asyncio.StreamReader) -> dict[str, Any]:
    header = await asyncio.wait_for(reader.readexactly(2), 5)
    length = header[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    payload = await asyncio.wait_for(reader.readexactly(length), 5)
    message: dict[str, Any] = json.loads(payload)
    return message


async def test_upgrade_head_in_pieces(port: int, service: Service) -> None:
    """A head that arrives a few bytes at a time still upgrades: 101, then the welcome."""
    reader, writer = await connect(port)
    head = upgrade_head(port)
    for i in range(0, len(head), 7):
        writer.write(head[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    status, _ = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 101 ")
    assert (await read_welcome(reader))["type"] == "welcome"
    assert service.connected_count() == 1
    writer.close()


async def test_refused_upgrade_is_answered_and_closed(port: int, service: Service) -> None:
    """Tornado's own refusal (no Sec-WebSocket-Key: 400) is sent, then the connection ends."""
    reader, writer = await connect(port)
    writer.write(upgrade_head(port, key=False))
    status, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in status
    assert b"WebSocket" in body
    headers = dict(line.split(": ", 1) for line in status.decode().split("\r\n")[1:] if line)
    assert headers["Server"].startswith("TornadoServer/")
    date = email.utils.parsedate_to_datetime(headers["Date"])  # an HTTP-date, and now
    assert abs(date.timestamp() - time.time()) < 5
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert service.connected_count() == 0
    writer.close()


async def test_other_requests_keep_alive_and_pipelining(port: int) -> None:
    """Requests that are not upgrades go to Tornado: several on one connection, two in
    one write, and an upgrade of another path, all answered in order."""
    reader, writer = await connect(port)
    get = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    writer.write(get)
    first, body = await read_response(reader)
    assert first.startswith(b"HTTP/1.1 200 ") and json.loads(body)["status"] == "ok"
    rooms = f"GET /api/rooms HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    writer.write(get + rooms)
    second, _ = await read_response(reader)
    third, body = await read_response(reader)
    assert second.startswith(b"HTTP/1.1 200 ") and third.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body) == {}
    writer.write(upgrade_head(port, path="/nowhere"))
    status, _ = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 404 ")
    writer.close()


@pytest.fixture
def upgrade_server(service: Service, io_loop: Any) -> Iterator[Callable[..., int]]:
    """``upgrade_server(handler, **options)`` -> the port of an UpgradeServer for handler at
    /ws; stopped at teardown."""
    servers: list[UpgradeServer] = []

    def start(handler: type[WebSocketEndpoint] = WebSocketEndpoint, **options: Any) -> int:
        kw = {"service": service}
        app = tornado.web.Application([("/ws", handler, kw)])
        server = UpgradeServer(app, ws_path="/ws", ws_handler=handler, ws_kwargs=kw, **options)
        [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_socket(sock)
        servers.append(server)
        return int(sock.getsockname()[1])

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def strict_port(upgrade_server: Callable[..., int]) -> int:
    """An UpgradeServer with a 0.3 s header timeout and a 1 KiB header limit."""
    return upgrade_server(idle_connection_timeout=0.3, max_header_size=1024)


async def test_header_timeout_and_size_limit(strict_port: int) -> None:
    """Tornado's limits hold on the short way in: a client that sends no head is closed
    after idle_connection_timeout, one whose head exceeds max_header_size at once."""
    reader, writer = await connect(strict_port)
    writer.write(b"GET /ws HTTP/1.1\r\n")  # and nothing more
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    reader, writer = await connect(strict_port)
    writer.write(b"GET /ws HTTP/1.1\r\nX-Pad: " + b"x" * 2048 + b"\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    reader, writer = await connect(strict_port)
    writer.write(upgrade_head(strict_port))
    status, _ = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 101 ")
    writer.close()


class WaitingEndpoint(WebSocketEndpoint):
    """A handler whose prepare waits twice: a bare yield, then a timer."""

    async def prepare(self) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        super().prepare()


async def test_a_handler_that_waits_still_upgrades(
    service: Service, upgrade_server: Callable[..., int]
) -> None:
    """Handlers run without a task until they wait; one that waits goes on afterwards and
    its 101 still comes before the welcome."""
    port = upgrade_server(WaitingEndpoint)
    reader, writer = await connect(port)
    writer.write(upgrade_head(port))
    status, _ = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 101 ")
    assert (await read_welcome(reader))["type"] == "welcome"
    assert service.connected_count() == 1
    writer.close()


HEADER_TEXT = st.text(alphabet=st.sampled_from(list("\r\n: \tAbz-_09=\x7f\xe9\x00")), max_size=60)


@settings(max_examples=3000, deadline=None)
@given(HEADER_TEXT)
def test_header_parsing_is_tornados(block: str) -> None:
    """The short way in parses a header block exactly as Tornado's HTTPHeaders.parse: the
    same headers in the same order, or the same refusal."""

    def outcome(parse: Any) -> Any:
        try:
            return list(parse(block).get_all())
        except tornado.httputil.HTTPInputError as exc:
            return ("refused", str(exc))

    assert outcome(parse_headers) == outcome(tornado.httputil.HTTPHeaders.parse)


def test_header_parsing_of_a_real_head() -> None:
    """A browser-like upgrade head gives the headers Tornado would."""
    block = "\r\nHost: a:1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    block += "Cookie: a=1\r\ncookie: b=2\r\nUser-Agent:  Mozilla/5.0 (X11) \t\r\n\r\n"
    assert list(parse_headers(block).get_all()) == list(
        tornado.httputil.HTTPHeaders.parse(block).get_all()
    )
    assert parse_headers(block).get_list("Cookie") == ["a=1", "b=2"]


def self_signed_tls(tmp_path: Any) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def test_a_tls_stream_reads_what_its_ssl_object_holds(
    upgrade_server: Callable[..., int], tmp_path: Any
) -> None:
    """Over TLS a message of one 12 KiB record is read in two 8 KiB reads, the second from
    the SSL object's buffer with nothing left on the socket for epoll to see: the frame
    reader must still read it (and answer) rather than wait for readiness."""
    port = upgrade_server(ssl_options=self_signed_tls(tmp_path), chunk_size=8192)
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    async with websockets.connect(f"wss://127.0.0.1:{port}/ws", ssl=client) as peer:
        assert json.loads(await asyncio.wait_for(peer.recv(), 5))["type"] == "welcome"
        text = "x" * 12_000
        await peer.send(json.dumps({"type": "echo", "message": text}))
        reply = json.loads(await asyncio.wait_for(peer.recv(), 5))
        assert reply["type"] == "echo" and reply["original"] == text
