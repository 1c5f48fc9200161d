"""A throwaway ``redis-server`` for a benchmark: a free port, its own directory, and the
deployment's durability (``appendonly yes``, ``appendfsync always``: a 202 is on disk).

Never the Redis at 6379: a benchmark must not depend on, or disturb, what else runs there.
``cpu`` pins the server to one core, so that its work is not charged to the process
measured (in production Redis runs on hosts of its own).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.tools.wrk import pinned
from buzzer.ports import free_ports


def cli(port: int, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, check=False)
    return out.stdout.decode().strip()


@contextmanager
def redis_server(
    tmp: Path,
    *,
    replica_of: int | None = None,
    appendfsync: str = "always",
    cpu: int | None = None,
) -> Iterator[int]:
    """Yields the port of a running ``redis-server``; kills it on exit."""
    port = free_ports(1)
    d = tmp / str(port)
    d.mkdir(parents=True)
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--dir",
        str(d),
    ]
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    if cpu is not None:
        argv = pinned(cpu, argv)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while cli(port, "PING") != "PONG":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server on {port} did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)
