from __future__ import annotations

from aiohttp import web

from services.push import handlers


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/polls/{poll}/live", handlers.poll_live, name="poll_live")
    app.router.add_get("/v1/live", handlers.live, name="live")
    app.router.add_get("/v1/ops", handlers.ops, name="ops")
    app.router.add_get("/results", handlers.results_page, name="results")
    app.router.add_get("/console", handlers.console_page, name="console")
    app.router.add_get("/config.json", handlers.config, name="config")
    app.router.add_static("/static/", handlers.STATIC, name="static")
