from __future__ import annotations

from aiohttp import web

from services.ingest.gateway import admin, audit, polls, votes
from services.ingest.gateway.auth import post_device
from services.ingest.gateway.openapi import build
from services.ingest.gateway.schemas import json_response
from services.ingest.handlers import post_vote


def setup_routes(app: web.Application) -> None:
    doc = build()

    async def openapi(_: web.Request) -> web.Response:
        return json_response(doc)

    r = app.router
    r.add_post("/v1/devices", post_device)
    r.add_post("/v1/polls/{poll}/votes", post_vote)
    r.add_get("/v1/polls/{poll}/votes/{vote_id}", votes.get_vote, allow_head=False)
    r.add_get("/v1/polls/{poll}", polls.get_poll, allow_head=False)
    r.add_get("/v1/polls/{poll}/tally", polls.get_tally, allow_head=False)
    r.add_get("/v1/openapi.json", openapi, allow_head=False)
    r.add_get("/v1/admin/shows", admin.list_shows, allow_head=False)
    r.add_post("/v1/admin/shows", admin.create_show)
    r.add_get("/v1/admin/polls", admin.list_polls, allow_head=False)
    r.add_post("/v1/admin/polls", admin.create_poll)
    r.add_post("/v1/admin/polls/{poll}/open", admin.open_poll)
    r.add_post("/v1/admin/polls/{poll}/close", admin.close_poll)
    r.add_get("/v1/admin/polls/{poll}/result.json", admin.result_json, allow_head=False)
    r.add_get("/v1/admin/polls/{poll}/result.csv", admin.result_csv, allow_head=False)
    r.add_get("/v1/admin/audit", audit.list_audit, allow_head=False)
