"""Run the Autobahn TestSuite cases (kosoku, PyPI) against compliance/echo_server.py.

    pip install kosoku
    python compliance/run.py                  # cases 1-10, compression off
    python compliance/run.py --compression    # 12.* and 13.*, permessage-deflate on
    python compliance/run.py -i 7.9.*         # some cases only

Starts the echo server on a free 127.0.0.1 port, runs ``kosoku`` (fuzzingclient mode) against
it, writes the reports to compliance/reports/, prints each case that is not OK and exits 1
when any case is FAILED or NON-STRICT (INFORMATIONAL and UNIMPLEMENTED are listed, not
failed).
"""

from __future__ import annotations

import argparse
import json
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
BAD = ("FAILED", "NON-STRICT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compression", action="store_true", help="run 12.* and 13.* with deflate")
    p.add_argument("-i", "--include", action="append", help="case id or glob (repeatable)")
    p.add_argument("-p", "--parallelism", type=int, default=1)
    args = p.parse_args()
    kosoku = shutil.which("kosoku") or str(Path(sys.executable).parent / "kosoku")
    cases = args.include or (COMPRESSED if args.compression else PLAIN)
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
        ran = subprocess.run(command, check=False)
        took = time.monotonic() - started
    finally:
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
    return 1 if any(counts[b] for b in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
