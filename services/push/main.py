"""Run the push process: ``buzzer serve push``."""

from __future__ import annotations

import gc
import logging
import resource
import time

from aiohttp import web

from services.common.observability import configure_logging
from services.common.settings import PushSettings


def raise_fd_limit() -> int:
    """Every viewer is a file descriptor: use all the process is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def watch_gc_pauses(threshold_s: float = 0.05) -> None:
    """Log collections long enough to delay a fan-out (thousands of sockets = millions of objects)."""
    log = logging.getLogger("buzzer.push")
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            took = time.perf_counter() - started[0]
            if took > threshold_s:
                log.warning("long gc pause", extra={"seconds": round(took, 3), **info})

    gc.callbacks.append(callback)


def run(settings: PushSettings) -> None:
    import uvloop

    # Before any client or loop exists (aiohttp FAQ: clients made on another loop hang).
    uvloop.install()
    configure_logging(settings.log_level, "push")
    raise_fd_limit()
    # 10,000 sockets are ~1M tracked objects: a full collection stalls every fan-out for
    # ~0.5 s (measured). Collect the young generation less often and the old one rarely;
    # the per-socket objects are long-lived and mostly freed by reference counting.
    gc.set_threshold(100_000, 50, 100)
    watch_gc_pauses()
    from services.push.app import create_app

    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        print=None,
        backlog=4096,
    )
