"""Free local ports for the stacks that tests and benchmarks start."""

from __future__ import annotations

import socket


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


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports on 127.0.0.1 that are free now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n < 65535 and all(bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1")
