"""Entry point of the tally process (``buzzer serve tally`` / ``python -m services.tally``)."""

from __future__ import annotations

from aiohttp import web

from services.common.runner import serve
from services.common.settings import TallySettings


def run(settings: TallySettings) -> None:
    def make_app() -> web.Application:
        from services.tally.app import create_app

        return create_app(settings)

    serve("tally", settings, make_app)
