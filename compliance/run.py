"""Run the Autobahn TestSuite cases (kosoku, PyPI) against compliance/echo_server.py.

    pip install kosoku
    python compliance/run.py                  # cases 1-10, compression off
    python compliance/run.py --compression    # 12.* and 13.*, permessage-deflate on
    python compliance/run.py --compression --quick -p 4   # the 108 of them CI runs
    python compliance/run.py --compression --cases '12.1.*,13.1.*' -p 4   # some of them
    python compliance/run.py -i 7.9.*         # some cases only

Starts the echo server on a free 127.0.0.1 port, runs ``kosoku`` (fuzzingclient mode) against
it, writes the reports to compliance/reports/, prints each case that is not OK and exits 1
when any case is FAILED or NON-STRICT (INFORMATIONAL and UNIMPLEMENTED are listed, not
failed).  It also prints the CPU seconds the echo server and kosoku used: the compressed
cases are 1000 round trips each, one at a time, so their time is mostly waiting; ``-p``
runs that many cases at once against the one server.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAIN = [f"{n}.*" for n in (1, 2, 3, 4, 5, 6, 7, 9, 10)]  # the suite has no section 8
COMPRESSED = ["12.*", "13.*"]
# The compressed cases .CI runs: every data set (12.1-12.5) and every offer (13.1-13.7), with
# messages of 16 to 16384 bytes, whole or cut into 256-byte frames (x.1-x.7, x.11, x.12);
# left out, the 32-128 KiB messages (x.8-x.10, x.13-x.18), 70% of the full set's time.
QUICK_EXCLUDE = [f"{g}.*.{n}" for g in (12, 13) for n in (8, 9, 10, 13, 14, 15, 16, 17, 18)]
BAD = ("FAILED", "NON-STRICT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc; 0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compression", action="store_true", help="run 12.* and 13.* with deflate")
    p.add_argument("-i", "--include", action="append", help="case id or glob (repeatable)")
    p.add_argument("--cases", help="case ids or globs, comma-separated (with or instead of -i)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="with --compression: the 108 cases with messages up to 16 KiB (what CI runs)",
    )
    p.add_argument("-p", "--parallelism", type=int, default=1)
    args = p.parse_args()
    kosoku = shutil.which("kosoku") or str(Path(sys.executable).parent / "kosoku")
    chosen = (args.include or []) + [c for c in (args.cases or "").split(",") if c.strip()]
    cases = chosen or (COMPRESSED if args.compression else PLAIN)
    port = free_port()
    server_args = [sys.executable, str(HERE / "echo_server.py"), "--port", str(port)]
    server = subprocess.Popen(server_args + (["--compression"] if args.compression else []))
    outdir = HERE / "reports" / ("compressed" if args.compression else "plain")
    shutil.rmtree(outdir, ignore_errors=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("compliance: the echo server did not start", file=sys.stderr)
                    return 2
                time.sleep(0.1)
        started = time.monotonic()
        command = [kosoku, f"127.0.0.1:{port}", "-o", str(outdir), "-p", str(args.parallelism)]
        for case in cases:
            command += ["-i", case]
        for case in QUICK_EXCLUDE if args.quick else []:
            command += ["-x", case]
        ran = subprocess.run(command, check=False)
        took = time.monotonic() - started
        client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # kosoku (the server runs on)
    finally:
        server_cpu = server_seconds(server.pid)
        server.terminate()
        server.wait(10)
    if not (outdir / "index.json").is_file():
        print(f"compliance: kosoku wrote no report (exit {ran.returncode})", file=sys.stderr)
        return 2
    index = json.loads((outdir / "index.json").read_text())
    results = {case: r for agent in index.values() for case, r in agent.items()}
    counts = Counter(r["behavior"] for r in results.values())
    for case in sorted(results, key=lambda c: [int(x) for x in c.split(".")]):
        r = results[case]
        if r["behavior"] != "OK":
            print(f"{r['behavior']:14} {case:10} close: {r.get('behaviorClose')}")
    summary = ", ".join(f"{n} {b}" for b, n in counts.most_common())
    print(f"{len(results)} cases in {took:.0f} s: {summary}")
    kosoku_cpu = client_cpu.ru_utime + client_cpu.ru_stime
    print(f"CPU: echo server {server_cpu:.0f} s, kosoku {kosoku_cpu:.0f} s (-p {args.parallelism})")
    return 1 if any(counts[b] for b in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
