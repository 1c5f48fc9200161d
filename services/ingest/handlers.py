"""The vote write path: token, validation, one coalesced atomic append, answer."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.auth import device_of
from gateway.errors import ApiError
from gateway.schemas import VoteAccepted, VoteRequest, json_response, read_body
from services.common.messages import VoteEntry
from services.common.scripts import VoteRules
from services.ingest.appender import Overloaded, Unavailable
from services.ingest.keys import APPENDER, BACKLOG, KEYS, POLLS, SETTINGS

_RETRY = {"Retry-After": "1"}


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers=_RETRY)


async def post_vote(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    device = device_of(request)
    poll_id = request.match_info["poll"]
    vote = await read_body(request, VoteRequest)
    pdef = await app[POLLS].get(poll_id)
    if pdef is None:
        raise ApiError(404, "poll_not_found", f"no poll {poll_id!r}", field="poll")
    if vote.option not in pdef.option_keys():
        raise ApiError(404, "option_not_found", f"poll has no option {vote.option!r}", field="option")
    if vote.count > pdef.max_count:
        raise ApiError(
            422, "count_over_cap", f"count {vote.count} is over this poll's cap of {pdef.max_count}",
            field="count",
        )
    backlog = app[BACKLOG]
    if backlog.backlog > settings.max_backlog:
        raise _unavailable("vote backlog over its bound, retry with the same vote_id")

    p = app[KEYS].partition_of(device)
    vote_id = str(vote.vote_id)
    entry = VoteEntry(
        poll=poll_id,
        option=vote.option,
        count=vote.count,
        device=device,
        vote_id=vote_id,
        client_ts=vote.client_ts or 0,
        recv_ts=int(time.time() * 1000),
    )
    rules = VoteRules(
        max_votes=pdef.max_votes_per_device or 0,
        rate_per_s=settings.device_rate_per_s,
        dedupe_ttl_s=settings.dedupe_ttl_s,
    )
    try:
        code, a, b = await app[APPENDER].submit(p, entry, rules)
    except Overloaded as exc:
        raise _unavailable("ingest is over its in-flight bound, retry with the same vote_id") from exc
    except Unavailable as exc:
        raise _unavailable("vote store unavailable, retry with the same vote_id") from exc

    if code == 202:
        headers = {"Idempotent-Replayed": "true"} if b else None
        return json_response(VoteAccepted(vote_id=vote_id, accepted=int(a)), 202, headers)
    if code == 409:
        state = a.decode() if isinstance(a, bytes) else str(a)
        raise ApiError(409, "poll_not_open", f"poll is {state}", field="poll")
    if code == 429:
        retry_s = max(1, -(-int(b) // 1000))
        raise ApiError(
            429, "rate_limited", "device over its vote rate", field="Authorization",
            headers={"Retry-After": str(retry_s)},
        )
    reason = a.decode() if isinstance(a, bytes) else str(a)
    if reason == "vote_limit":
        raise ApiError(
            422, "vote_limit", f"device already cast its {int(b)} vote(s) in this poll", field="vote_id"
        )
    raise ApiError(
        422, "vote_id_reused", "vote_id was already used for a different vote", field="vote_id"
    )
