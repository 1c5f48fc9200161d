"""A real HAProxy for the lb tests (tests/integration/test_lb_*.py): its work folder, its
start, the wait for its servers, and a resolver that sends ``localhost`` to it."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from lb.process import HaproxyProcess
from lb.render import RenderSettings


def short_tmpdir(prefix: str) -> Path:
    """A new folder right under /tmp: the runtime socket's path must stay under 108
    bytes, which pytest's tmp_path can pass. The caller removes it."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def start_haproxy(
    workdir: Path, config: str, settings: RenderSettings, log_name: str = "haproxy.log"
) -> HaproxyProcess:
    """HAProxy running ``config`` with the runtime socket and state file ``settings``
    name; the caller stops it."""
    hap = HaproxyProcess(
        workdir,
        runtime_socket=Path(settings.runtime_socket),
        state_file=Path(settings.server_state_file) if settings.server_state_file else None,
        log_path=workdir / log_name,
    )
    hap.start(config)
    return hap


def wait_all_up(hap: HaproxyProcess, backend: str, count: int, timeout: float = 5.0) -> None:
    """Until ``count`` servers of ``backend`` pass their health checks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = [s for s in hap.runtime.servers_state(backend) if s.up]
        if len(up) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{backend}: fewer than {count} servers up: {hap.log_tail()}")


class LocalResolver(aiohttp.abc.AbstractResolver):
    """Every name is 127.0.0.1, so a client can ask for ``localhost`` by name (the
    test certificates' name) and still reach the local HAProxy over IPv4."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass
