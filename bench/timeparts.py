"""Where a connection's time goes: wall time per connection of each part of the server.

    python bench/timeparts.py                     # churn: 20 loops for 6 s, server on CPU 0
    python bench/timeparts.py --scenario echo --duration 5

Runs ``miaws serve`` (this checkout, shipped config) in a subprocess pinned to ``--server-cpu``
with timers wrapped around the functions listed in ``PARTS``, drives it with
``bench/loadgen.py`` on ``--gen-cpu``, and prints, per accepted connection, the server's CPU
time and each part's wall time (inclusive: a part's figure contains the parts it calls) and
how often it ran.  Profilers (py-spy, cProfile) inflate a path of a few hundred microseconds
made of short calls; these timers add ~0.3 µs per wrapped call.  Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# module:qualified.name of each timed function, in the order a connection meets them.
PARTS = """
tornado.tcpserver:TCPServer._handle_connection
socket:socket.accept
tornado.iostream:IOStream.__init__
tornado.iostream:BaseIOStream.read_until_regex
miaws.transport.upgrade:UpgradeServer._on_head
miaws.transport.upgrade:UpgradeServer._upgrade_request
miaws.transport.upgrade:parse_headers
tornado.httputil:HTTPServerRequest.__init__
tornado.web:RequestHandler.__init__
miaws.transport.upgrade:_run
miaws.transport.native:WebSocketEndpoint.prepare
tornado.websocket:WebSocketProtocol13._challenge_response
tornado.web:RequestHandler.finish
miaws.transport.protocol:MiawsProtocol.start_pinging
miaws.transport.native:WebSocketEndpoint.open
miaws.service:Service.connect
miaws.transport.native:WebSocketEndpoint._shed
miaws.transport.protocol:MiawsProtocol._read_next
tornado.platform.asyncio:BaseAsyncIOLoop.add_handler
miaws.transport.protocol:MiawsProtocol._on_read
miaws.transport.native:WebSocketEndpoint.on_message
miaws.transport.protocol:MiawsProtocol._write_out
tornado.websocket:WebSocketProtocol13.close
tornado.iostream:BaseIOStream.close
miaws.service:Service.disconnect
logging:Logger.log
""".split()

SERVER = """
import atexit, collections, functools, importlib, resource, sys, time
total, calls = collections.Counter(), collections.Counter()
ns = time.perf_counter_ns

def wrap(part):
    module, _, name = part.partition(":")
    owner = importlib.import_module(module)
    *path, attr = name.split(".")
    for step in path:
        owner = getattr(owner, step)
    function = owner.__dict__[attr]

    @functools.wraps(function)
    def timed(*args, **kwargs):
        start = ns()
        try:
            return function(*args, **kwargs)
        finally:
            total[part] += ns() - start
            calls[part] += 1

    setattr(owner, attr, timed)
    # modules that imported the function by name call it through their own reference
    for other in list(sys.modules.values()):
        ours = getattr(other, "__name__", "").startswith("miaws")
        if ours and getattr(other, attr, None) is function:
            setattr(other, attr, timed)

def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    n = calls["tornado.tcpserver:TCPServer._handle_connection"] or 1
    print(f"connections {n}: CPU per connection {usage.ru_utime * 1e6 / n:.1f} us user, "
          f"{usage.ru_stime * 1e6 / n:.1f} us system (start-up included)", file=sys.stderr)
    for part in PARTS:
        if calls[part]:
            line = f"{total[part] / 1000 / n:8.1f} us  x{calls[part] / n:5.2f}  {part}"
            print(line, file=sys.stderr)

import miaws.app  # noqa: E402 (imported before wrapping)
import miaws.service  # noqa: E402
import miaws.transport.native  # noqa: E402
import miaws.transport.protocol  # noqa: E402
import miaws.transport.upgrade  # noqa: E402
for part in PARTS:
    wrap(part)
atexit.register(report)
from miaws.cli.main import main
sys.exit(main(["serve", "--port", sys.argv[1]]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="churn", choices=["churn", "echo"])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--gen-cpu", default="1")
    args = parser.parse_args()
    port = free_port()
    code = f"PARTS = {PARTS!r}\n{SERVER}"
    log = tempfile.TemporaryFile("w+")  # the server's log: a pipe nobody reads would fill up
    server = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, sys.executable, "-c", code, str(port)],
        cwd=HERE.parent,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        load = [sys.executable, str(HERE / "loadgen.py"), args.scenario]
        load += ["--url", f"ws://127.0.0.1:{port}/ws", "--duration", str(args.duration)]
        result = subprocess.run(
            ["taskset", "-c", args.gen_cpu, *load], capture_output=True, text=True, timeout=120
        )
        print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    log.seek(0)
    print("".join(line for line in log if " us " in line or line.startswith("connections")))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
