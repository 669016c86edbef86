"""RFC 6455 conformance at the byte level, over a real socket: what the Autobahn TestSuite
cases of compliance/ check (issue 15), one test per rule, so CI catches a regression without
running the suite."""

from __future__ import annotations

import logging
import struct

import pytest
from rawws import RawWS, client_frame


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return client_frame(struct.pack("!H", code) + reason, 0x8)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999])
async def test_invalid_close_code_is_a_protocol_error(port: int, code: int) -> None:
    """Autobahn 7.9.*: answered with 1002, not echoed."""
    ws = await RawWS.open(port)
    ws.send_raw(close_frame(code))
    assert await ws.close_code() == 1002
    ws.abort()


async def test_one_byte_close_payload_is_a_protocol_error(port: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b"\x03", 0x8))
    assert await ws.close_code() == 1002
    ws.abort()


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
async def test_valid_close_code_is_echoed(port: int, code: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(close_frame(code, b"bye"))
    assert await ws.close_code() == code
    ws.abort()


async def test_empty_close_frame_is_answered(port: int) -> None:
    ws = await RawWS.open(port)
    ws.send_raw(client_frame(b"", 0x8))
    assert await ws.close_code() == 1005  # an empty close frame back
    ws.abort()


async def test_close_reason_not_utf8_is_invalid_payload(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Autobahn 7.5.1: 1007, and no traceback from the frame reader."""
    caplog.set_level(logging.ERROR, logger="miaws")
    ws = await RawWS.open(port)
    ws.send_raw(close_frame(1000, "bye \u20ac".encode()[:-1]))  # a cut-off euro sign
    assert await ws.close_code() == 1007
    ws.abort()
    assert not [r for r in caplog.records if "frame reader failed" in r.getMessage()]
