"""Run the push process: ``buzzer serve push``."""

from __future__ import annotations

import resource

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


def run(settings: PushSettings) -> None:
    import uvloop

    # Before any client or loop exists (aiohttp FAQ: clients made on another loop hang).
    uvloop.install()
    configure_logging(settings.log_level, "push")
    raise_fd_limit()
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

