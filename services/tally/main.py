"""Entry point of the tally process (``buzzer serve tally`` / ``python -m services.tally``)."""

from __future__ import annotations

import asyncio

import uvloop
from aiohttp import web

from services.common.observability import configure_logging
from services.common.settings import TallySettings


def run(settings: TallySettings) -> None:
    # Before anything creates a loop or a client (aiohttp FAQ).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    configure_logging(settings.log_level, "tally")
    from services.tally.app import create_app

    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        print=None,
        access_log=None,
    )
