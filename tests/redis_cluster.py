"""A real Redis Cluster (Debian's redis-server and redis-cli) on free 127.0.0.1 ports, for
tests and benches: 3 primaries and, with ``replicas=1``, one replica each.

Each node listens on a port of at most 55535 (its cluster bus is the port + 10000), with no
persistence and its ``nodes.conf`` in the work directory.  :meth:`RedisCluster.start` runs
``redis-cli --cluster create ... --cluster-yes`` and waits until every node says
``cluster_state:ok`` and every replica is in sync; :meth:`RedisCluster.stop` kills them all.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RedisCluster", "ClusterNode", "cluster_ports"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
BUS_OFFSET = 10000
HIGHEST_PORT = 65535 - BUS_OFFSET


def _below_ephemeral() -> int:
    """The highest node port whose bus port stays below the kernel's ephemeral range: a port
    found free there is not taken by an outgoing connection before redis-server binds it (CI
    once lost a cluster that way: 'Failed listening on port 54257')."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return HIGHEST_PORT
    return max(12000, min(HIGHEST_PORT, low - 1 - BUS_OFFSET))


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, tries: int = 500) -> list[int]:
    """count ports of at most 55535 whose port and bus port (+10000) are both free."""
    chosen: list[int] = []
    for _ in range(tries):
        port = random.randint(10000, _below_ephemeral())
        if port in chosen or port + BUS_OFFSET in chosen:
            continue
        if _free(port) and _free(port + BUS_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free port pairs (port, port + {BUS_OFFSET}) found")


@dataclass
class ClusterNode:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        args += ["--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--enable-debug-command", "local"]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def cli(self, *command: str, timeout: float = 10.0) -> str:
        """One command through redis-cli; its output."""
        done = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.stdout

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def info(self, section: str) -> dict[str, str]:
        lines = self.cli("CLUSTER", "INFO") if section == "cluster" else self.cli("INFO", section)
        return dict(line.split(":", 1) for line in lines.split() if ":" in line)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class RedisCluster:
    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.workdir = workdir
        self.replicas = replicas
        ports = cluster_ports(primaries * (1 + replicas))
        self.nodes = [ClusterNode(port, workdir) for port in ports]
        self.url = f"redis://127.0.0.1:{ports[0]}"

    def start(self, timeout: float = 60.0) -> None:
        for path in (REDIS_SERVER, REDIS_CLI):
            if not Path(path).exists():
                raise RuntimeError(f"{path} is not installed (apt-get install redis-server)")
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout
        while not all(node.ping() for node in self.nodes):
            self._check(deadline)
            time.sleep(0.02)
        create = [REDIS_CLI, "--cluster", "create"]
        create += [f"127.0.0.1:{node.port}" for node in self.nodes]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        while not self.healthy():
            self._check(deadline)
            time.sleep(0.1)

    def _check(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            logs = "\n".join(n.log_path.read_text()[-2000:] for n in self.nodes)
            raise RuntimeError(f"the Redis Cluster did not come up:\n{logs}")

    def healthy(self) -> bool:
        """Every running node says cluster_state:ok, and every replica's link is up."""
        running = [n for n in self.nodes if n.proc is not None]
        for node in running:
            if node.info("cluster").get("cluster_state") != "ok":
                return False
            replication = node.info("replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
                or replication.get("master_sync_in_progress") != "0"
            ):
                return False
        return True

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def owner(self, key: str) -> ClusterNode:
        """The primary that holds key's slot now."""
        running = [n for n in self.nodes if n.proc is not None]
        slot = int(running[0].cli("CLUSTER", "KEYSLOT", key).strip())
        for node in self.nodes:
            if node.proc is None:
                continue
            for line in node.cli("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for span in fields[8:]:
                    if span.startswith("["):
                        continue  # a slot being migrated
                    low, _, high = span.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return self.node(int(fields[1].split(":")[1].split("@")[0]))
            break
        raise RuntimeError(f"no primary holds the slot of {key!r}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        node_id = primary.cli("CLUSTER", "MYID").strip()
        for node in self.nodes:
            if node is not primary and node.proc is not None:
                replication = node.info("replication")
                if replication.get("role") == "slave" and replication.get("master_port") == str(
                    primary.port
                ):
                    return node
        raise RuntimeError(f"no replica of {primary.port} ({node_id})")

    def move_slot(self, key: str, target: ClusterNode) -> None:
        """Move key's slot, with its keys, to the primary target (as resharding does:
        IMPORTING / MIGRATING, MIGRATE, then SETSLOT NODE on every primary)."""
        source = self.owner(key)
        slot = source.cli("CLUSTER", "KEYSLOT", key).strip()
        source_id = source.cli("CLUSTER", "MYID").strip()
        target_id = target.cli("CLUSTER", "MYID").strip()
        target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = source.cli("CLUSTER", "GETKEYSINSLOT", slot, "100").split()
            if not keys:
                break
            source.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
        for node in self.nodes:
            if node.proc is not None and node.info("replication").get("role") == "master":
                node.cli("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def primaries(self) -> list[ClusterNode]:
        return [
            n
            for n in self.nodes
            if n.proc is not None and n.info("replication").get("role") == "master"
        ]

    def wait_replicated(self, primary: ClusterNode, timeout: float = 10.0) -> None:
        """Wait until primary's replica has every write primary has (asynchronous
        replication: a failover right after a write could lose it otherwise)."""
        replica = self.replica_of(primary)
        deadline = time.monotonic() + timeout
        while True:
            offset = primary.info("replication").get("master_repl_offset")
            if replica.info("replication").get("slave_repl_offset") == offset:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {replica.port} did not catch up with {primary.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
