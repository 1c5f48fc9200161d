"""Free local ports for the stacks that tests and benchmarks start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        # As the servers themselves bind: a port whose old connections linger in
        # TIME_WAIT (after a benchmark) is free for a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    return free_ports(1)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports on 127.0.0.1 that are free now, below the
    kernel's ephemeral range.

    Every outgoing connection takes a port of that range and leaves it in TIME_WAIT for a
    minute, and a listener cannot bind over a TIME_WAIT socket its client opened without
    SO_REUSEADDR: after a benchmark with tens of thousands of connections, runs of free
    ports there are rare (seen: 62,823 sockets in TIME_WAIT). No client port lands below.
    """
    top = _ephemeral_start()
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(10_000, max(10_001, top - n))
        if all(bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1 below {top}")
