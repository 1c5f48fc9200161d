"""Public reads: a poll's definition and its live tally (no token needed)."""

from __future__ import annotations

from aiohttp import web

from services.common.live import load_polldef, read_live
from services.common.messages import PollDef
from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import json_response
from services.ingest.keys import KEYS, REDIS


async def _poll(request: web.Request) -> PollDef:
    poll_id = request.match_info["poll"]
    # Fresh from Redis, not the vote path's cache: the state must be current here.
    pdef = await load_polldef(request.app[REDIS], request.app[KEYS], poll_id)
    if pdef is None:
        raise ApiError(404, "poll_not_found", f"no poll {poll_id!r}", field="poll")
    return pdef


async def get_poll(request: web.Request) -> web.Response:
    return json_response(await _poll(request))


async def get_tally(request: web.Request) -> web.Response:
    pdef = await _poll(request)
    return json_response(await read_live(request.app[REDIS], request.app[KEYS], pdef))
