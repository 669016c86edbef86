"""Benchmark miaws against the Node system it replaces and a bare Tornado handler.

    python bench/run.py                                   # node-ws, tornado-raw, miaws; 4 scenarios
    python bench/run.py --servers miaws --scenarios echo --duration 5 --repeat 3
    python bench/run.py --servers node-ws,miaws --server mine='exec ./mine --port {port}'
    python bench/run.py --help                            # every option (bench.py's)

Run it with a Python that has ``bench/requirements.txt`` installed (the project's venv is
fine).  This wraps ``bench.py`` (a copy of the shared harness, ``../shared/bench``): it adds
the built-in server ``miaws`` (this checkout, ``python -m miaws serve`` from the project
root), installs the Node server's packages once under ``$BENCH_HOME/node-ws`` (``npm ci``),
raises the open-file limit for the 10,000-connection memory scenario, then runs the harness.
Servers are pinned to ``--server-cpu`` and the load generator (``loadgen.py``: picows on
uvloop, reporting its own CPU) to ``--gen-cpu`` with taskset.  Results go to
``$BENCH_HOME/results`` (default ``~/.cache/miaws-bench``) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NEEDED = ("psutil", "picows", "uvloop", "tornado")


def check_requirements() -> None:
    missing = []
    for name in NEEDED:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.exit(
            f"bench: missing {', '.join(missing)}; "
            f"run: {sys.executable} -m pip install -r {HERE / 'requirements.txt'}"
        )


def node_server(home: Path) -> Path:
    """A copy of ref/node-ws with its node_modules (npm ci once per change of its files)."""
    src, dest = HERE / "ref" / "node-ws", home / "node-ws"
    files = ("server.js", "package.json", "package-lock.json")
    stamp = "".join(
        str((src / f).stat().st_mtime_ns) + str((src / f).stat().st_size) for f in files
    )
    stamp_file = dest / ".bench-stamp"
    if (dest / "node_modules").is_dir() and stamp_file.is_file():
        if stamp_file.read_text() == stamp:
            return dest
    if shutil.which("npm") is None:
        print("bench: npm not found; the node-ws server will not start", file=sys.stderr)
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy(src / f, dest / f)
    print(f"bench: installing the node-ws server in {dest} (npm ci)", file=sys.stderr)
    subprocess.run(
        ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--silent"], cwd=dest, check=True
    )
    stamp_file.write_text(stamp)
    return dest


def main() -> int:
    check_requirements()
    home = Path(os.environ.get("BENCH_HOME") or Path.home() / ".cache" / "miaws-bench")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_HOME"] = str(home)
    os.environ["BENCH_NODE_DIR"] = str(node_server(home))
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if shutil.which("taskset") is None:
        print("bench: taskset not found; pass --server-cpu -1 --gen-cpu -1", file=sys.stderr)

    sys.path.insert(0, str(HERE))
    import bench  # the harness; reads BENCH_HOME / BENCH_NODE_DIR at import

    venv_miaws = ROOT / ".venv" / "bin" / "miaws"
    start = (
        shlex.quote(str(venv_miaws))
        if venv_miaws.exists()
        else f"{shlex.quote(sys.executable)} -m miaws"
    )
    bench.SERVERS["miaws"] = (
        f"cd {shlex.quote(str(ROOT))} && exec {start} serve --port {{port}}",
        "contract",
    )
    bench.DEFAULT_SERVERS = ["node-ws", "tornado-raw", "miaws"]
    # bench.main's --servers default was computed at import: give ours explicitly
    if not any(arg == "--servers" or arg.startswith("--servers=") for arg in sys.argv):
        sys.argv[1:1] = ["--servers", ",".join(bench.DEFAULT_SERVERS)]
    result: int = bench.main()
    return result


if __name__ == "__main__":
    sys.exit(main())
