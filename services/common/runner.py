"""How every service process starts: uvloop first, JSON logs, limits, then run_app."""

from __future__ import annotations

import gc
import logging
import resource
import time
from collections.abc import Callable

from aiohttp import web

from services.common.observability import configure_logging
from services.common.settings import CommonSettings


def raise_fd_limit() -> int:
    """Every client is a file descriptor: use all the process is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def watch_gc_pauses(service: str, threshold_s: float = 0.05) -> None:
    """Log collections long enough to be seen in a latency percentile."""
    log = logging.getLogger(f"buzzer.{service}")
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            took = time.perf_counter() - started[0]
            if took > threshold_s:
                log.warning("long gc pause", extra={"seconds": round(took, 3), **info})

    gc.callbacks.append(callback)


YOUNG_GC = 100_000
"""Net new tracked objects between two collections of the young generation."""
MIDDLE_GC_EVERY = 5_000_000
"""Net new tracked objects between two collections of the middle generation, whatever
the young threshold: a process that collects its young generation more often does not
collect the larger middle one more often for it."""


def gc_thresholds(young: int = YOUNG_GC) -> tuple[int, int, int]:
    """The collector's thresholds for a young generation of ``young`` objects."""
    return young, max(1, MIDDLE_GC_EVERY // young), 100


def serve(
    service: str,
    settings: CommonSettings,
    make_app: Callable[[], web.Application],
    *,
    backlog: int = 1024,
    young_gc: int = YOUNG_GC,
) -> None:
    """Run one service until SIGTERM/SIGINT, then shut it down gracefully.

    ``make_app`` is called after uvloop is installed: nothing may create a loop or a
    client before that (aiohttp FAQ: clients made on another loop hang).

    ``young_gc``: see :func:`gc_thresholds`. A young collection scans every object of
    the young generation, and a process whose new objects mostly live on (viewers
    joining push) pays that whole scan as one pause.
    """
    import uvloop

    uvloop.install()
    configure_logging(settings.log_level, service)
    raise_fd_limit()
    # Thousands of long-lived connections are millions of tracked objects: a full
    # collection stalls every request for 0.25-0.5 s (measured on push). Collect the
    # middle and old generations rarely; most garbage here is acyclic and freed by
    # reference counting anyway.
    gc.set_threshold(*gc_thresholds(young_gc))
    watch_gc_pauses(service)
    app = make_app()
    gc.freeze()  # what startup built lives as long as the process: never scan it again
    web.run_app(
        app,
        host=settings.host,
        port=getattr(settings, "port", 8080),
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        print=None,
        backlog=backlog,
        reuse_port=settings.reuse_port or None,
    )
