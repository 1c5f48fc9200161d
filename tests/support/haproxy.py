"""A real HAProxy for the lb tests (tests/integration/test_lb_*.py): its work folder, its
start, the wait for its servers, and a resolver that sends ``localhost`` to it."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import sys
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


# CPython before 3.12.8 (and 3.13.0) leaves the socket under a TLS connection open after
# the connection is closed, until the peer's close_notify arrives. When the test's loop
# closes first, that socket is reported as an unclosed transport in whichever later test
# the garbage collector runs in: a failure of an unrelated test, now and then. aiohttp
# aborts those sockets when the session closes if asked to (it refuses the flag where
# CPython no longer needs it).
_ABORT_TLS_ON_CLOSE = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


def connector(ssl_context: ssl.SSLContext | None = None, **kw: Any) -> aiohttp.TCPConnector:
    """A connector for a session that talks TLS, which leaves no socket behind it once
    the session is closed; with ``ssl_context``, every name resolves to 127.0.0.1."""
    if ssl_context is not None:
        kw.setdefault("resolver", LocalResolver())
        kw["ssl"] = ssl_context
    return aiohttp.TCPConnector(enable_cleanup_closed=_ABORT_TLS_ON_CLOSE, **kw)


async def open_sockets(settle: float = 1.0) -> list[Any]:
    """Client sockets of the running test's loop not closed yet (asyncio's own).

    An aborted transport closes its socket on a later turn of the loop (``call_soon``),
    so one already closing is given up to ``settle`` seconds to finish; a socket still
    held open, the bug this guards against, stays in the list however long we wait."""

    def still_open() -> list[Any]:
        return [
            o
            for o in gc.get_objects()
            if type(o).__name__ == "_SelectorSocketTransport"
            and getattr(o, "_sock", None) is not None
        ]

    deadline = asyncio.get_running_loop().time() + settle
    found = still_open()
    while found and asyncio.get_running_loop().time() < deadline:
        if not all(t.is_closing() for t in found):
            break
        await asyncio.sleep(0.01)
        found = still_open()
    return found
