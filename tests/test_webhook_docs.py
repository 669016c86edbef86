"""docs/webhooks.md's signature checks, in Python and in Node, verify what miaws signs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from miaws.ops.webhooks import sign

DOC = (ROOT / "docs" / "webhooks.md").read_text()
BODY = b'{"time_ms":1,"events":[{"event":"room-occupied","room":"caf\xc3\xa9"}]}'


def snippet(lang: str) -> str:
    (code,) = re.findall(rf"```{lang}\n(.*?)```", DOC, re.S)
    return str(code)


def test_the_python_snippet_verifies_a_miaws_signature() -> None:
    namespace: dict[str, object] = {}
    exec(compile(snippet("python"), "docs/webhooks.md", "exec"), namespace)
    verified = namespace["verified"]
    assert callable(verified)
    header = sign("k3y", BODY)
    assert verified("k3y", BODY, header) is True
    assert verified("other", BODY, header) is False
    assert verified("k3y", BODY + b" ", header) is False


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_snippet_verifies_a_miaws_signature(tmp_path: Path) -> None:
    (tmp_path / "verify.js").write_text(snippet("javascript"))
    (tmp_path / "body.bin").write_bytes(BODY)
    header = sign("k3y", BODY)
    script = (
        "const {verified} = require('./verify.js');"
        "const body = require('fs').readFileSync('body.bin');"
        f"console.log(verified('k3y', body, '{header}'), verified('no', body, '{header}'),"
        " verified('k3y', body, undefined));"
    )
    out = subprocess.run(
        ["node", "-e", script], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.split() == ["true", "false", "false"], out.stderr
