"""Run the push process: ``buzzer serve push``."""

from __future__ import annotations

from aiohttp import web

from services.common.runner import serve
from services.common.settings import PushSettings


def run(settings: PushSettings) -> None:
    def make_app() -> web.Application:
        from services.push.app import create_app

        return create_app(settings)

    # Viewers joining (thousands a second at a show's start) leave objects that live as
    # long as their socket, so each young collection scans them all: at 100,000 objects
    # that was a 65-111 ms stall of every live update, at 10,000 one of 12-45 ms, with
    # less collector time in all (bench push --joiners, docs/capacity.md).
    serve("push", settings, make_app, backlog=4096, young_gc=10_000)
