"""The soak (bench/soak.py), shortened: hundreds of clients churning for 30 s leave nothing
behind in the registry and memory returns near its baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_soak_leaves_nothing_behind() -> None:
    """200 clients joining, leaving, broadcasting and dropping for 30 s: registry empty,
    no contract violation or error reply, RSS within 16 MiB of the post-warm-up baseline."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--clients", "200", "--duration", "30"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = result.stdout + result.stderr
    print(out)
    assert result.returncode == 0, out
    assert "left behind: clients 0, rooms 0; health ok; tracebacks in the log 0" in out
    connects = int(re.search(r"connections (\d+)", out).group(1))  # type: ignore[union-attr]
    assert connects > 400  # the clients really churned
