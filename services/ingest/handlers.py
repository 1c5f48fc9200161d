"""The vote write path: token, validation, one coalesced atomic append, answer."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import msgspec
from aiohttp import web

from services.common.api import VoteAccepted, VoteRequest
from services.common.messages import VoteEntry
from services.common.scripts import (
    VoteOutcome,
    VoteResult,
    VoteRules,
    vote_call,
)
from services.ingest.appender import Overloaded, Unavailable
from services.ingest.gateway.auth import caller_by
from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import body_now, decode_body, json_response
from services.ingest.keys import VOTE_PATH
from services.ingest.monitor import MISSING

JSON = "application/json"
_RETRY = {"Retry-After": "1"}
_REPLAYED = {"Idempotent-Replayed": "true"}


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers=_RETRY)


def _retry_after(ms: int) -> dict[str, str]:
    # Whole seconds, rounded up: a client that waits this long is inside a fresh window.
    return {"Retry-After": str(max(1, -(-ms // 1000)))}


REFUSALS: dict[VoteOutcome, Callable[[VoteResult], ApiError]] = {
    VoteOutcome.NOT_OPEN: lambda r: ApiError(
        409, "poll_not_open", f"poll is {r.state}", field="poll"
    ),
    VoteOutcome.RATE_LIMITED: lambda r: ApiError(
        429,
        "rate_limited",
        "device over its vote rate",
        field="Authorization",
        headers=_retry_after(r.retry_after_ms),
    ),
    VoteOutcome.VOTE_LIMIT: lambda r: ApiError(
        422,
        "vote_limit",
        f"device already cast its {r.max_votes} vote(s) in this poll",
        field="vote_id",
    ),
    VoteOutcome.ACCOUNT_LIMIT: lambda r: ApiError(
        422,
        "account_vote_limit",
        f"this viewer account already cast its {r.max_votes} vote(s) in this poll",
        field="Authorization",
    ),
    VoteOutcome.ID_REUSED: lambda r: ApiError(
        422, "vote_id_reused", "vote_id was already used for a different vote", field="vote_id"
    ),
}
"""Every outcome of the vote script that refuses the vote, as the API error it becomes."""


@functools.lru_cache(maxsize=1024)
def _rules(max_votes: int, max_account: int, rate_per_s: int, ttl_s: int) -> VoteRules:
    # A few polls, each with its rules, take every vote: built once each, not per vote.
    return VoteRules(
        max_votes=max_votes,
        max_votes_per_account=max_account,
        rate_per_s=rate_per_s,
        dedupe_ttl_s=ttl_s,
    )


def vote_response(vote_id: str, result: VoteResult) -> web.Response:
    """The answer to a vote, from the vote script's outcome."""
    if result.outcome is VoteOutcome.ACCEPTED:
        return json_response(VoteAccepted(vote_id=vote_id, accepted=result.accepted), 202)
    if result.outcome is VoteOutcome.REPLAYED:
        return json_response(
            VoteAccepted(vote_id=vote_id, accepted=result.accepted), 202, _REPLAYED
        )
    raise REFUSALS[result.outcome](result)


async def post_vote(request: web.Request) -> web.Response:
    path = request.app[VOTE_PATH]
    settings = path.settings
    caller = caller_by(path.tokens, settings.require_account, request)
    device = caller.device
    poll_id = request.match_info["poll"]
    # The body and the poll read in place when they are at hand, as nearly always:
    # request.read() awaits the payload twice even then (schemas.body_now).
    raw = body_now(request, settings.max_body_bytes)
    if raw is None:
        raw = await request.read()
    # The header as apps send it is taken as is: request.content_type parses it (a
    # Python property, a cached parse and a copy of its parameters) on every request.
    ctype = request.headers.get("Content-Type")
    vote = decode_body(raw, JSON if ctype == JSON else request.content_type, VoteRequest)
    polls = path.polls
    pdef = polls.cached(poll_id)
    if pdef is MISSING:
        pdef = await polls.get(poll_id)
    if pdef is None:
        raise ApiError(404, "poll_not_found", f"no poll {poll_id!r}", field="poll")
    if vote.option not in pdef.option_keys:
        raise ApiError(
            404, "option_not_found", f"poll has no option {vote.option!r}", field="option"
        )
    if vote.count > pdef.max_count:
        raise ApiError(
            422,
            "count_over_cap",
            f"count {vote.count} is over this poll's cap of {pdef.max_count}",
            field="count",
        )
    if pdef.max_votes_per_account and caller.account is None:
        raise ApiError(
            403,
            "account_required",
            "this poll counts votes per viewer account: register the device with an id_token",
            field="Authorization",
        )
    if path.backlog.backlog > settings.max_backlog:
        raise _unavailable("vote backlog over its bound, retry with the same vote_id")

    keys = path.keys
    p, acc = path.placement(device, caller.account)
    # The canonical text of the UUID, as str() gives it, in C: a third of str()'s cost.
    vote_id: str = msgspec.to_builtins(vote.vote_id)
    entry = VoteEntry(
        poll=poll_id,
        option=vote.option,
        count=vote.count,
        device=device,
        vote_id=vote_id,
        client_ts=vote.client_ts or 0,
        recv_ts=int(time.time() * 1000),
    )
    rules = _rules(
        pdef.max_votes_per_device or 0,
        pdef.max_votes_per_account or 0,
        settings.device_rate_per_s,
        settings.dedupe_ttl_s,
    )
    try:
        result = await path.appender.submit(p, vote_call(keys, p, entry, rules, acc))
    except Overloaded as exc:
        raise _unavailable(
            "ingest is over its in-flight bound, retry with the same vote_id"
        ) from exc
    except Unavailable as exc:
        raise _unavailable("vote store unavailable, retry with the same vote_id") from exc
    if result.outcome is VoteOutcome.ACCEPTED:  # as vote_response answers it, a call less
        return json_response(VoteAccepted(vote_id=vote_id, accepted=result.accepted), 202)
    return vote_response(vote_id, result)
