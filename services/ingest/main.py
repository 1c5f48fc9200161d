"""Run the ingest process: ``buzzer serve ingest``."""

from __future__ import annotations

from aiohttp import web

from services.common.runner import serve
from services.common.settings import IngestSettings


def run(settings: IngestSettings) -> None:
    def make_app() -> web.Application:
        from services.ingest.app import create_app

        return create_app(settings)

    serve("ingest", settings, make_app)
