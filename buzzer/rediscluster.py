"""A local Redis Cluster from plain ``redis-server`` processes: 3 primaries, 3 replicas.

`buzzer up --redis-cluster`, `buzzer bench redis` and the cluster tests all start it
the same way, so what a new user sees is what the tests prove.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from buzzer.ports import bindable


class ClusterError(RuntimeError):
    pass


BUS_OFFSET = 10_000
"""Each node's cluster bus listens on its port + 10000, so that port must be free too."""


def cluster_ports(n: int) -> int:
    """The first of ``n`` consecutive ports that are free with their bus ports."""
    rng = random.Random()
    for _ in range(200):
        # Below the kernel's ephemeral range (32768+), so a client's outgoing port
        # cannot take a node's port between this check and the node's bind.
        base = rng.randrange(12_000, 32_768 - BUS_OFFSET - n)
        wanted = [*range(base, base + n), *range(base + BUS_OFFSET, base + BUS_OFFSET + n)]
        if all(bindable(p) for p in wanted):
            return base
    raise ClusterError(f"no {n} consecutive free ports with free bus ports")


@dataclass
class LocalCluster:
    """``primaries`` shards with ``replicas`` each, on consecutive free ports."""

    primaries: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    appendfsync: str = "always"
    """``always``: a write the primary answered is on its disk (as the single-node default)."""
    base_dir: Path | None = None
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _dir: Path | None = None
    _own_dir: bool = False

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    @property
    def url(self) -> str:
        """The ``REDIS_URL`` that selects the cluster client (services/common/redisconn.py)."""
        return "redis+cluster://" + ",".join(self.seeds[: self.primaries])

    def start(self, timeout: float = 30.0) -> LocalCluster:
        n = self.primaries * (1 + self.replicas)
        base = cluster_ports(n)
        self.ports = list(range(base, base + n))
        if self.base_dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="buzzer-cluster-"))
            self._own_dir = True
        else:
            self._dir = self.base_dir
            self._dir.mkdir(parents=True, exist_ok=True)
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_ping(port, timeout)
            create = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *self.seeds,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            if create.returncode != 0:
                raise ClusterError(create.stdout.decode()[-2000:] + create.stderr.decode()[-2000:])
            self.wait_ok(timeout)
            self._wait_replicas_linked(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, port: int) -> None:
        assert self._dir is not None
        node_dir = self._dir / str(port)
        node_dir.mkdir(exist_ok=True)
        log = open(node_dir / "redis.log", "ab")  # noqa: SIM115 - kept open by the child
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--dir",
                str(node_dir),
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                # The other shards keep serving while one shard's slots fail over.
                "--cluster-require-full-coverage",
                "no",
                # A replica's first sync (at start, and after a restart) would otherwise
                # wait the default 5 s for more replicas to share a diskless transfer.
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def cli(self, port: int, *args: str, timeout: float = 5.0) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return out.stdout.decode()

    def _wait_ping(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.cli(port, "PING").strip() != "PONG":
            proc = self.procs[port]
            if proc.poll() is not None:
                assert self._dir is not None
                log = (self._dir / str(port) / "redis.log").read_text(errors="replace")
                raise ClusterError(
                    f"redis-server on {port} exited with {proc.returncode}: {log[-500:]}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"redis-server on {port} did not start")
            time.sleep(0.05)

    def alive_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` and agrees on all slots."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.cli(p, "CLUSTER", "INFO") for p in self.alive_ports()]
            if states and all("cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise ClusterError("cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _wait_replicas_linked(self, timeout: float) -> None:
        # A replica that has not finished its first sync cannot acknowledge WAIT, and
        # could not be promoted: a test or a `buzzer up` must not start before that.
        deadline = time.monotonic() + timeout
        while True:
            infos = [self.cli(p, "INFO", "replication") for p in self.primary_ports()]
            if all(s.count("state=online") >= self.replicas for s in infos):
                return
            if time.monotonic() > deadline:
                raise ClusterError("replicas did not come online")
            time.sleep(0.1)

    def nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by a running node: id, port, role, slots."""
        for port in self.alive_ports():
            text = self.cli(port, "CLUSTER", "NODES")
            if text.strip():
                break
        else:
            raise ClusterError("no node answers")
        rows = []
        for line in text.strip().splitlines():
            parts = line.split()
            flags = parts[2].split(",")
            rows.append(
                {
                    "id": parts[0],
                    "port": parts[1].split("@")[0].rsplit(":", 1)[1],
                    "role": "primary" if "master" in flags else "replica",
                    "failed": "fail" if "fail" in flags or "fail?" in flags else "",
                    "slots": " ".join(parts[8:]),
                }
            )
        return rows

    def primary_ports(self) -> list[int]:
        return [
            int(n["port"])
            for n in self.nodes()
            if n["role"] == "primary" and not n["failed"] and int(n["port"]) in self.alive_ports()
        ]

    def primary_for_slot(self, slot: int) -> int:
        for n in self.nodes():
            if n["role"] != "primary" or n["failed"]:
                continue
            for r in n["slots"].split():
                if r.startswith("["):
                    continue  # a slot being migrated
                lo, _, hi = r.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return int(n["port"])
        raise ClusterError(f"no primary serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node: the machine is gone, with whatever it had not replicated."""
        proc = self.procs[port]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def wait_promoted(self, dead: int, timeout: float = 30.0) -> None:
        """Wait until the dead primary's slots moved to its promoted replica."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, StopIteration):
                row = next(r for r in self.nodes() if int(r["port"]) == dead)
                if not row["slots"]:
                    self.wait_ok(max(1.0, deadline - time.monotonic()))
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"no replica took over from {dead}")
            time.sleep(0.1)

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Bring a killed node back, as a replacement machine would come: it rejoins
        from its nodes file as a replica of whoever took its slots, and syncs."""
        self._spawn(port)
        self._wait_ping(port, timeout)
        deadline = time.monotonic() + timeout
        while True:
            info = self.cli(port, "INFO", "replication")
            if "role:slave" in info and "master_link_status:up" in info:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"node {port} did not rejoin as a replica")
            time.sleep(0.1)
        self._wait_replicas_linked(timeout)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_for_up(env: dict[str, str], state_dir: Path) -> LocalCluster:
    """`buzzer up --redis-cluster`: a fresh cluster under the state dir, and the
    environment that points every process at it with replica acknowledgement on."""
    base = state_dir / "redis-cluster"
    shutil.rmtree(base, ignore_errors=True)  # a stopped stack's nodes files are stale
    cluster = LocalCluster(base_dir=base).start()
    env["REDIS_URL"] = cluster.url
    env.setdefault("BUZZER_ACK_REPLICAS", "1")
    return cluster


@contextlib.contextmanager
def local_cluster(**kwargs: object) -> Iterator[LocalCluster]:
    cluster = LocalCluster(**kwargs)  # type: ignore[arg-type]
    with cluster:
        yield cluster
