"""Fuzz the upgrade path's header parser with atheris (coverage-guided; outside CI).

``miaws.transport.upgrade.parse_headers`` promises Tornado's ``HTTPHeaders.parse``: the same
headers or the same ``HTTPInputError``.  Each input is decoded as the server decodes a request
head (latin-1) and given to both; any other exception, or any difference, is a finding.

    pip install atheris
    python fuzz/fuzz_headers.py -max_total_time=600 -max_len=4096 [corpus_dir]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tornado import httputil

    from miaws.transport.upgrade import parse_headers


def outcome(parse: object, block: str) -> object:
    try:
        headers = parse(block)  # type: ignore[operator]
    except httputil.HTTPInputError as exc:
        return ("HTTPInputError", str(exc))
    return sorted(headers.get_all())


def test_one(data: bytes) -> None:
    block = data.decode("latin1")
    ours = outcome(parse_headers, block)
    tornados = outcome(httputil.HTTPHeaders.parse, block)
    if ours != tornados:
        raise AssertionError(f"{block!r}: ours {ours!r} != Tornado's {tornados!r}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
