"""Fuzz the frame reader with atheris (coverage-guided; outside CI): the pure parser and the
protocol reading a byte stream.

Each input is split by ``atheris.FuzzedDataProvider`` into a few choices and a byte stream:

1. ``miaws.transport.frames.parse_frame`` at a position with a limit, and with RSV1 allowed
   or not: it must return a frame that lies inside the buffer (within the limit, masked) or
   one of its int answers (a count that reaches past the buffer, ``TOO_BIG``,
   ``PROTOCOL_ERROR``, ``UNMASKED``), and never raise.
2. The stream, cut into chunks, fed over a real socket pair (tests/framedrive.py) to miaws's
   reader (``MiawsProtocol``, or ``DeflateProtocol`` with permessage-deflate negotiated) and to
   Tornado's (``WebSocketProtocol13``): miaws's must end, log no error and raise nothing,
   deliver no message over the limit, and come out as Tornado's does or close with 1002 or
   1007 having delivered a prefix of Tornado's messages (the property of
   tests/test_frame_property.py, on any bytes the fuzzer finds).

    pip install atheris
    python fuzz/fuzz_frames.py -max_total_time=600 -max_len=2048 [corpus_dir]
    FUZZ_FRAMES=parse python fuzz/fuzz_frames.py ...   # part 1 alone: ~100x the execs/s

(Part 2 runs two readers over a socket pair per input: some hundred inputs a second on an
idle core, where part 1 alone runs at tens of thousands.)
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import atheris
import tornado.iostream
import tornado.websocket  # noqa: F401  (imported first: only miaws's modules are instrumented)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

with atheris.instrument_imports(include=["miaws"]):
    from miaws.transport import deflate, frames, protocol  # noqa: F401
    from miaws.transport.frames import PROTOCOL_ERROR, TOO_BIG, UNMASKED, parse_frame

from framedrive import Outcome, drive  # noqa: E402

PARSE_ONLY = os.environ.get("FUZZ_FRAMES") == "parse"
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)


def check_parse(data: bytes, pos: int, limit: int, reserved: int) -> None:
    got = parse_frame(data, pos, limit, reserved)
    if isinstance(got, int):
        if got > 0:
            assert pos + got > len(data), (data, pos, got)
        else:
            assert got in (TOO_BIG, PROTOCOL_ERROR, UNMASKED), got
        return
    opcode, fin, payload, stop = got
    assert 0 <= opcode <= 15 and fin in (0, 0x80)
    assert pos < stop <= len(data) and len(payload) <= limit
    assert len(payload) <= stop - pos - 6  # a 2-byte header and a mask at least
    assert data[pos + 1] & 0x80  # masked


def same(a: Outcome, b: Outcome) -> bool:
    return (a.messages, a.sent, a.ended) == (b.messages, b.sent, b.ended)


def test_one(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    limit = fdp.PickValueInList([1 << 20, 300, 40])
    chunk = fdp.ConsumeIntInRange(1, 64)
    compressed = fdp.ConsumeBool()
    pos = fdp.ConsumeIntInRange(0, 16)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    check_parse(stream, min(pos, len(stream)), limit, 0x30 if compressed else 0x70)
    if PARSE_ONLY:
        return
    reader = "deflate" if compressed else "miaws"
    cuts = [chunk] * (len(stream) // chunk + 2)
    ours = LOOP.run_until_complete(drive(reader, stream, cuts, limit, deflate=compressed))
    assert not ours.errors, ours
    assert ours.ended, ours
    assert all(len(m) <= limit for m in ours.messages), ours
    if compressed:
        return  # Tornado's reader differs on compressed fragments (see fuzz/README.md)
    tornados = LOOP.run_until_complete(drive("tornado", stream, cuts, limit))
    if not same(ours, tornados):
        assert ours.close in (1002, 1007), (ours, tornados)
        assert tornados.messages[: len(ours.messages)] == ours.messages, (ours, tornados)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
