"""Was my vote counted? A device's own vote, from the archive or, until the archiver
has it, from the vote's dedupe record in Redis."""

from __future__ import annotations

import uuid

import asyncpg
from aiohttp import web

from services.common.api import VoteStatus
from services.common.archive import find_vote
from services.common.redisconn import REDIS_AWAY
from services.ingest.gateway.auth import caller_of
from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import json_response
from services.ingest.keys import KEYS, PG, PLACEMENT, REDIS

_RETRY = {"Retry-After": "1"}


async def get_vote(request: web.Request) -> web.Response:
    caller = caller_of(request)
    device = caller.device
    poll = request.match_info["poll"]
    try:
        # Votes are stored under the canonical form of their UUID.
        vote_id = str(uuid.UUID(request.match_info["vote_id"]))
    except ValueError as exc:
        raise ApiError(400, "invalid_field", "vote_id must be a UUID", field="vote_id") from exc
    try:
        archived = await find_vote(request.app[PG], poll, device, vote_id)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ApiError(503, "unavailable", "the archive is unavailable", headers=_RETRY) from exc
    if archived:
        first = archived[0]
        return json_response(
            VoteStatus(
                vote_id,
                poll,
                accepted=True,
                archived=True,
                option=first.option,
                count=sum(r.count for r in archived),
                received_at=first.recv_ts,
            )
        )
    keys = request.app[KEYS]
    try:
        # The key is the device's own: another device's vote id never matches.
        fp = await request.app[REDIS].get(
            keys.dedupe(request.app[PLACEMENT](device, caller.account)[0], poll, device, vote_id)
        )
    except REDIS_AWAY as exc:
        raise ApiError(503, "unavailable", "redis unavailable", headers=_RETRY) from exc
    if fp is None:
        raise ApiError(404, "vote_not_found", "no such vote from this device", field="vote_id")
    option, _, count = (fp.decode() if isinstance(fp, bytes) else fp).rpartition(":")
    return json_response(
        VoteStatus(vote_id, poll, accepted=True, archived=False, option=option, count=int(count))
    )
