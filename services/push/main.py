"""Run the push process: ``buzzer serve push``."""

from __future__ import annotations

from aiohttp import web

from services.common.runner import serve
from services.common.settings import PushSettings


def run(settings: PushSettings) -> None:
    def make_app() -> web.Application:
        from services.push.app import create_app

        return create_app(settings)

    serve("push", settings, make_app, backlog=4096)
