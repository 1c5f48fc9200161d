from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from services.ingest.gateway import admin, audit, polls, votes
from services.ingest.gateway.auth import post_device
from services.ingest.gateway.edge import add_no_route, add_route
from services.ingest.gateway.openapi import build
from services.ingest.gateway.schemas import json_response
from services.ingest.handlers import post_vote


def setup_routes(app: web.Application) -> None:
    doc = build()

    async def openapi(_: web.Request) -> web.Response:
        return json_response(doc)

    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/devices", post_device),
        ("POST", "/v1/polls/{poll}/votes", post_vote),
        ("GET", "/v1/polls/{poll}/votes/{vote_id}", votes.get_vote),
        ("GET", "/v1/polls/{poll}", polls.get_poll),
        ("GET", "/v1/polls/{poll}/tally", polls.get_tally),
        ("GET", "/v1/openapi.json", openapi),
        ("GET", "/v1/admin/shows", admin.list_shows),
        ("POST", "/v1/admin/shows", admin.create_show),
        ("GET", "/v1/admin/polls", admin.list_polls),
        ("POST", "/v1/admin/polls", admin.create_poll),
        ("POST", "/v1/admin/polls/{poll}/open", admin.open_poll),
        ("POST", "/v1/admin/polls/{poll}/close", admin.close_poll),
        ("GET", "/v1/admin/polls/{poll}/result.json", admin.result_json),
        ("GET", "/v1/admin/polls/{poll}/result.csv", admin.result_csv),
        ("GET", "/v1/admin/audit", audit.list_audit),
    ]
    for method, path, handler in routes:
        add_route(app, method, path, handler)
    add_no_route(app)  # last: whatever matched nothing above
