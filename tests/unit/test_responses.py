"""How the API renders answers and refusals: JSON errors naming the field, no service."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.api import VoteRequest
from services.common.scripts import VoteOutcome, VoteResult
from services.ingest.gateway.errors import ApiError, as_response, error_response
from services.ingest.gateway.schemas import decode_body
from services.ingest.handlers import REFUSALS, vote_response

pytestmark = pytest.mark.unit

# Fixed, not random: it is part of the test ids, which every pytest process must
# collect alike (pytest-xdist).
VID = "0b6f3c52-5d0a-4a57-9a11-3f1f2f1b9c01"


def body(response: web.StreamResponse) -> dict[str, Any]:
    assert isinstance(response, web.Response) and response.body is not None
    assert response.content_type == "application/json"
    parsed: dict[str, Any] = json.loads(bytes(response.body))  # type: ignore[arg-type]
    return parsed


def refusal(result: VoteResult) -> ApiError:
    with pytest.raises(ApiError) as info:
        vote_response(VID, result)
    return info.value


def test_an_accepted_vote_is_202_with_its_count() -> None:
    r = vote_response(VID, VoteResult(VoteOutcome.ACCEPTED, accepted=7))
    assert r.status == 202
    assert body(r) == {"vote_id": VID, "accepted": 7}
    assert "Idempotent-Replayed" not in r.headers


def test_a_replay_is_the_same_answer_marked_as_such() -> None:
    r = vote_response(VID, VoteResult(VoteOutcome.REPLAYED, accepted=7))
    assert (r.status, body(r)) == (202, {"vote_id": VID, "accepted": 7})
    assert r.headers["Idempotent-Replayed"] == "true"


def test_every_refusing_outcome_has_one_row() -> None:
    accepting = {VoteOutcome.ACCEPTED, VoteOutcome.REPLAYED}
    assert set(REFUSALS) == set(VoteOutcome) - accepting


@pytest.mark.parametrize(
    ("result", "status", "code", "field"),
    [
        (VoteResult(VoteOutcome.NOT_OPEN, state="closed"), 409, "poll_not_open", "poll"),
        (
            VoteResult(VoteOutcome.RATE_LIMITED, retry_after_ms=1),
            429,
            "rate_limited",
            "Authorization",
        ),
        (VoteResult(VoteOutcome.VOTE_LIMIT, max_votes=1), 422, "vote_limit", "vote_id"),
        (VoteResult(VoteOutcome.ID_REUSED), 422, "vote_id_reused", "vote_id"),
    ],
)
def test_refusals_are_json_errors_naming_the_field(
    result: VoteResult, status: int, code: str, field: str
) -> None:
    err = refusal(result)
    r = error_response(err)
    assert r.status == status
    got = body(r)
    assert got["error"] == code and got["field"] == field and got["message"]


def test_the_refusal_says_what_the_script_saw() -> None:
    assert "closed" in refusal(VoteResult(VoteOutcome.NOT_OPEN, state="closed")).body.message
    assert "draft" in refusal(VoteResult(VoteOutcome.NOT_OPEN, state="draft")).body.message
    assert " 3 vote" in refusal(VoteResult(VoteOutcome.VOTE_LIMIT, max_votes=3)).body.message


@pytest.mark.parametrize(
    ("ms", "seconds"), [(0, "1"), (1, "1"), (1000, "1"), (1001, "2"), (2500, "3")]
)
def test_retry_after_rounds_the_rate_window_up(ms: int, seconds: str) -> None:
    err = refusal(VoteResult(VoteOutcome.RATE_LIMITED, retry_after_ms=ms))
    assert error_response(err).headers["Retry-After"] == seconds


REQUEST = make_mocked_request("POST", "/v1/polls/p1/votes")


def test_http_refusals_of_aiohttp_become_json() -> None:
    r = as_response(web.HTTPNotFound(), REQUEST)
    assert (r.status, body(r)["error"]) == (404, "not_found")
    r = as_response(web.HTTPMethodNotAllowed("PUT", ["GET"]), REQUEST)
    assert (r.status, body(r)["error"], r.headers["Allow"]) == (405, "method_not_allowed", "GET")
    r = as_response(web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), REQUEST)
    assert (r.status, body(r)["field"]) == (413, "body")


def test_a_store_that_is_away_is_503_with_retry_after() -> None:
    r = as_response(RedisConnectionError("connection refused"), REQUEST)
    assert (r.status, body(r)["error"], r.headers["Retry-After"]) == (503, "unavailable", "1")
    assert "refused" not in json.dumps(body(r)), "internals stay in the log"
    # PostgreSQL failing over, out of connections, or not there at all.
    for exc in (
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("too many clients already"),
        asyncpg.InvalidCatalogNameError('database "buzzer" does not exist'),
        asyncpg.InvalidPasswordError("password authentication failed"),
    ):
        r = as_response(exc, REQUEST)
        assert (r.status, r.headers["Retry-After"]) == (503, "1"), exc
        assert "buzzer" not in json.dumps(body(r)) and "password" not in json.dumps(body(r))


def test_a_bug_is_a_json_500_without_details() -> None:
    r = as_response(RuntimeError("secret detail"), REQUEST)
    assert (r.status, body(r)) == (
        500,
        {"error": "internal", "message": "internal error", "field": None},
    )


def test_cancellation_and_our_own_responses_pass_through() -> None:
    with pytest.raises(asyncio.CancelledError):
        as_response(asyncio.CancelledError(), REQUEST)
    redirect = web.HTTPFound("/elsewhere")
    with pytest.raises(web.HTTPFound):
        as_response(redirect, REQUEST)


def vote_body(**fields: Any) -> bytes:
    return json.dumps({"option": "clap", "vote_id": VID, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (vote_body(count=0), "count"),
        (vote_body(count="7"), "count"),
        (vote_body(client_ts=-1), "client_ts"),
        (vote_body(option=""), "option"),
        (vote_body(option="x" * 65), "option"),
        (vote_body(vote_id="not-a-uuid"), "vote_id"),
        (json.dumps({"option": "clap"}).encode(), "vote_id"),
    ],
)
def test_a_wrong_field_is_400_naming_it(raw: bytes, field: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_body(raw, "application/json", VoteRequest)
    assert (info.value.status, info.value.body.error, info.value.body.field) == (
        400,
        "invalid_field",
        field,
    )


def test_malformed_json_and_wrong_media_type() -> None:
    with pytest.raises(ApiError) as info:
        decode_body(b"{", "application/json", VoteRequest)
    assert (info.value.status, info.value.body.field) == (400, "body")
    with pytest.raises(ApiError) as info:
        decode_body(vote_body(), "text/plain", VoteRequest)
    assert (info.value.status, info.value.body.field) == (415, "Content-Type")


def test_a_client_built_body_is_one_the_api_accepts() -> None:
    sent = VoteRequest(option="clap", vote_id=uuid.UUID(VID), count=3, client_ts=5)
    assert decode_body(msgspec.json.encode(sent), "application/json", VoteRequest) == sent
