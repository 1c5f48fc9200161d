"""Run the ingest process: ``buzzer serve ingest``."""

from __future__ import annotations

from aiohttp import web

from services.common.observability import configure_logging
from services.common.settings import IngestSettings


def run(settings: IngestSettings) -> None:
    import uvloop

    # Before any client or loop exists (aiohttp FAQ: clients made on another loop hang).
    uvloop.install()
    configure_logging(settings.log_level, "ingest")
    from services.ingest.app import create_app

    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        print=None,
        backlog=1024,
        reuse_port=settings.reuse_port or None,
    )
