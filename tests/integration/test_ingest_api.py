"""The public vote API against real Redis and PostgreSQL: every answer, status and body."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from redis.exceptions import ResponseError

from services.common.messages import TALLY_GROUP, Keys, VoteEntry
from services.common.scripts import (
    Scripts,
    VoteOutcome,
    VoteResult,
    VoteRules,
    decode_vote_batch,
    vote_batch_args,
    vote_batch_source,
    vote_call,
)
from services.ingest.app import create_app
from services.ingest.keys import SCRIPTS
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def make_client(aiohttp_client: Any, settings: Any) -> TestClient:
    return await aiohttp_client(create_app(settings))


async def new_poll(
    client: TestClient, *, options: int = 3, open_: bool = True, **rules: Any
) -> dict[str, Any]:
    r = await client.post("/v1/admin/shows", json={"name": "Saturday night"}, headers=ADMIN)
    assert r.status == 201, await r.text()
    show = await r.json()
    body = {
        "show_id": show["id"],
        "title": "Favourite act",
        "options": [{"key": f"o{i}", "label": f"Act {i}"} for i in range(options)],
        **rules,
    }
    r = await client.post("/v1/admin/polls", json=body, headers=ADMIN)
    assert r.status == 201, await r.text()
    poll = await r.json()
    if open_:
        r = await client.post(f"/v1/admin/polls/{poll['id']}/open", headers=ADMIN)
        assert r.status == 200, await r.text()
        poll = await r.json()
    return poll


async def device(client: TestClient) -> dict[str, str]:
    r = await client.post("/v1/devices")
    assert r.status == 201
    data = await r.json()
    return {"Authorization": f"Bearer {data['token']}"}


# Fixed, not random: cases of a parametrize carry it in their test ids, which every
# pytest process must collect alike (pytest-xdist).
A_VOTE_ID = "5d2e7a0c-8f3b-4c61-b7e9-2a4d6c8e0f13"


def vote(option: str = "o0", **extra: Any) -> dict[str, Any]:
    return {"option": option, "vote_id": str(uuid.uuid4()), **extra}


async def expect_error(resp: Any, status: int, error: str, field: str | None) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == error, body
    assert body["field"] == field, body
    assert body["message"]
    return body


async def stream_entries(redis: Any, keys: Keys) -> list[VoteEntry]:
    out = []
    for p in range(keys.partitions):
        for _, fields in await redis.xrange(keys.votes(p)):
            if fields[b"t"] == b"v":
                out.append(VoteEntry.from_fields(fields))
    return out


async def test_vote_is_appended_and_retry_answers_the_same(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, keys: Keys
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, max_votes_per_device=None, max_count=100)
    dev = await device(client)
    body = vote("o1", count=7, client_ts=1_700_000_000_000)
    r1 = await client.post(f"/v1/polls/{poll['id']}/votes", json=body, headers=dev)
    assert r1.status == 202
    assert await r1.json() == {"vote_id": body["vote_id"], "accepted": 7}
    assert "Idempotent-Replayed" not in r1.headers
    r2 = await client.post(f"/v1/polls/{poll['id']}/votes", json=body, headers=dev)
    assert r2.status == 202
    assert await r2.json() == {"vote_id": body["vote_id"], "accepted": 7}
    assert r2.headers["Idempotent-Replayed"] == "true"
    entries = await stream_entries(redis, keys)
    assert len(entries) == 1
    e = entries[0]
    assert (e.poll, e.option, e.count, e.vote_id, e.client_ts) == (
        poll["id"],
        "o1",
        7,
        body["vote_id"],
        1_700_000_000_000,
    )
    assert abs(e.recv_ts - time.time() * 1000) < 60_000


async def test_vote_id_reused_for_another_vote(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, max_votes_per_device=None, max_count=10)
    dev = await device(client)
    body = vote("o1")
    assert (
        await client.post(f"/v1/polls/{poll['id']}/votes", json=body, headers=dev)
    ).status == 202
    body["option"] = "o2"
    r = await client.post(f"/v1/polls/{poll['id']}/votes", json=body, headers=dev)
    await expect_error(r, 422, "vote_id_reused", "vote_id")


async def test_a_redis_that_lost_its_scripts_still_takes_the_vote(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, keys: Keys
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, max_votes_per_device=None, max_count=10)
    dev = await device(client)
    # As after a Redis restart, without touching the shared server: a hash it never saw.
    client.server.app[SCRIPTS].vote_batch.sha = "0" * 40
    body = vote("o1", count=2)
    r = await client.post(f"/v1/polls/{poll['id']}/votes", json=body, headers=dev)
    assert r.status == 202, await r.text()
    assert await r.json() == {"vote_id": body["vote_id"], "accepted": 2}
    assert [e.vote_id for e in await stream_entries(redis, keys)] == [body["vote_id"]]


async def test_a_vote_call_out_of_step_with_the_script_is_refused_whole(
    redis: Any, keys: Keys
) -> None:
    scripts = Scripts.register(redis)
    await redis.set(keys.state(0, "p1"), "open")
    e = VoteEntry("p1", "o1", 1, "d1", str(uuid.uuid4()), 0, 0)
    ks, args = vote_batch_args(keys, 0, [vote_call(keys, 0, e, VoteRules())])
    assert decode_vote_batch(await scripts.vote_batch(keys=ks, args=args, client=redis)) == [
        VoteResult(VoteOutcome.ACCEPTED, accepted=1)
    ]
    # A call one value short: refused whole, nothing appended.
    e2 = VoteEntry("p1", "o1", 1, "d1", str(uuid.uuid4()), 0, 0)
    e3 = VoteEntry("p1", "o2", 1, "d2", str(uuid.uuid4()), 0, 0)
    ks, args = vote_batch_args(keys, 0, [vote_call(keys, 0, e, VoteRules()) for e in (e2, e3)])
    with pytest.raises(ResponseError, match="out of step"):
        await scripts.vote_batch(keys=ks, args=args[:-1], client=redis)
    # A vote naming a rule set the call does not carry: refused whole too, even though
    # the vote before it is valid.
    bad = [*args[:-8], 2, *args[-7:]]
    with pytest.raises(ResponseError, match="vote 2 names no rule set"):
        await scripts.vote_batch(keys=ks, args=bad, client=redis)
    # A script whose layout lacks a name it needs refuses every call.
    lacking = redis.register_script(vote_batch_source().replace("'max_votes', ", "", 1))
    with pytest.raises(ResponseError, match="no rule max_votes"):
        await lacking(keys=ks, args=args, client=redis)
    assert await redis.xlen(keys.votes(0)) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"option": "o0", "vote_id": "not-a-uuid"}, "vote_id"),
        ({"option": "o0", "vote_id": A_VOTE_ID, "count": "7"}, "count"),
        ({"option": "o0", "vote_id": A_VOTE_ID, "count": 0}, "count"),
        ({"option": 3, "vote_id": A_VOTE_ID}, "option"),
        ({"vote_id": A_VOTE_ID}, "option"),
        ({"option": "o0"}, "vote_id"),
        ({"option": "o0", "vote_id": A_VOTE_ID, "client_ts": -5}, "client_ts"),
    ],
)
async def test_wrong_types_are_400_naming_the_field(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, payload: Any, field: str
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client)
    r = await client.post(
        f"/v1/polls/{poll['id']}/votes", json=payload, headers=await device(client)
    )
    await expect_error(r, 400, "invalid_field", field)


async def test_malformed_json_and_media_type_and_size(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client)
    dev = await device(client)
    url = f"/v1/polls/{poll['id']}/votes"
    r = await client.post(
        url, data=b'{"option": "o0",', headers={**dev, "Content-Type": "application/json"}
    )
    await expect_error(r, 400, "malformed_json", "body")
    r = await client.post(url, data=b"option=o0", headers={**dev, "Content-Type": "text/plain"})
    await expect_error(r, 415, "unsupported_media_type", "Content-Type")
    big = b'{"option": "o0", "pad": "' + b"x" * 10_000 + b'"}'
    r = await client.post(url, data=big, headers={**dev, "Content-Type": "application/json"})
    await expect_error(r, 413, "body_too_large", "body")


async def test_tokens_missing_forged_expired_wrong_audience(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client)
    url = f"/v1/polls/{poll['id']}/votes"
    r = await client.post(url, json=vote())
    body = await expect_error(r, 401, "unauthorized", "Authorization")
    assert "missing" in body["message"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")

    good = (await (await client.post("/v1/devices")).json())["token"]
    header = jwt.get_unverified_header(good)
    now = int(time.time())
    cases = {
        "signature": jwt.encode(
            {"sub": "d1", "aud": "buzzer-vote", "exp": now + 60},
            "forged-key-" * 4,
            algorithm="HS256",
            headers=header,
        ),
        "expired": jwt.encode(
            {"sub": "d1", "aud": "buzzer-vote", "exp": now - 1},
            TOKEN_SECRET,
            algorithm="HS256",
            headers=header,
        ),
        "audience": jwt.encode(
            {"sub": "d1", "aud": "admin", "exp": now + 60},
            TOKEN_SECRET,
            algorithm="HS256",
            headers=header,
        ),
        "malformed": "abc.def",
        "unknown key": jwt.encode(
            {"sub": "d1", "aud": "buzzer-vote", "exp": now + 60},
            "x" * 40,
            algorithm="HS256",
            headers={"kid": "deadbeef"},
        ),
    }
    for word, token in cases.items():
        r = await client.post(url, json=vote(), headers={"Authorization": f"Bearer {token}"})
        body = await expect_error(r, 401, "unauthorized", "Authorization")
        assert word in body["message"], (word, body)


async def test_unknown_poll_and_option_are_404(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client)
    dev = await device(client)
    r = await client.post("/v1/polls/nope/votes", json=vote(), headers=dev)
    await expect_error(r, 404, "poll_not_found", "poll")
    r = await client.post(f"/v1/polls/{poll['id']}/votes", json=vote("o9"), headers=dev)
    await expect_error(r, 404, "option_not_found", "option")
    r = await client.get("/v1/polls/nope")
    await expect_error(r, 404, "poll_not_found", "poll")
    r = await client.get("/v1/nothing-here")
    await expect_error(r, 404, "not_found", None)
    # Unmatched requests are still counted, under one label (not one per path).
    metrics = await (await client.get("/metrics")).text()
    assert 'method="GET",route="unmatched",service="ingest",status="404"' in metrics


async def test_a_known_path_with_another_method_is_a_json_405_with_allow(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    r = await client.delete("/v1/polls/p1/votes")
    await expect_error(r, 405, "method_not_allowed", None)
    assert r.headers["Allow"] == "POST"
    r = await client.put("/v1/admin/polls")
    await expect_error(r, 405, "method_not_allowed", None)
    assert set(r.headers["Allow"].split(",")) == {"GET", "POST"}
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_poll_not_open_is_409_before_and_after(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, keys: Keys
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, open_=False, max_votes_per_device=None)
    dev = await device(client)
    url = f"/v1/polls/{poll['id']}/votes"
    r = await client.post(url, json=vote(), headers=dev)
    body = await expect_error(r, 409, "poll_not_open", "poll")
    assert "draft" in body["message"]
    await client.post(f"/v1/admin/polls/{poll['id']}/open", headers=ADMIN)
    before = vote()
    assert (await client.post(url, json=before, headers=dev)).status == 202
    r = await client.post(f"/v1/admin/polls/{poll['id']}/close", headers=ADMIN)
    assert (await r.json())["state"] == "closed"
    r = await client.post(url, json=vote(), headers=dev)
    body = await expect_error(r, 409, "poll_not_open", "poll")
    assert "closed" in body["message"]
    # A retry of a vote accepted before the close still gets its original answer.
    r = await client.post(url, json=before, headers=dev)
    assert r.status == 202
    # Every partition got its close marker, after the accepted vote.
    markers = 0
    for p in range(keys.partitions):
        kinds = [f[b"t"] for _, f in await redis.xrange(keys.votes(p))]
        assert kinds.count(b"c") == 1
        assert kinds[-1] == b"c"
        markers += 1
    assert markers == keys.partitions


async def test_rules_count_cap_and_one_vote_are_422(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    clap = await new_poll(client, max_votes_per_device=None, max_count=100)
    dev = await device(client)
    r = await client.post(f"/v1/polls/{clap['id']}/votes", json=vote(count=101), headers=dev)
    await expect_error(r, 422, "count_over_cap", "count")
    classic = await new_poll(client)  # one vote per device, no batching
    r = await client.post(f"/v1/polls/{classic['id']}/votes", json=vote(count=2), headers=dev)
    await expect_error(r, 422, "count_over_cap", "count")
    assert (
        await client.post(f"/v1/polls/{classic['id']}/votes", json=vote("o1"), headers=dev)
    ).status == 202
    r = await client.post(f"/v1/polls/{classic['id']}/votes", json=vote("o2"), headers=dev)
    await expect_error(r, 422, "vote_limit", "vote_id")
    other = await device(client)
    assert (
        await client.post(f"/v1/polls/{classic['id']}/votes", json=vote("o2"), headers=other)
    ).status == 202


async def test_one_vote_poll_holds_under_a_concurrent_burst(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, keys: Keys
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    classic = await new_poll(client)
    dev = await device(client)
    url = f"/v1/polls/{classic['id']}/votes"
    rs = await asyncio.gather(
        *(client.post(url, json=vote(f"o{i % 3}"), headers=dev) for i in range(30))
    )
    statuses = sorted(r.status for r in rs)
    assert statuses.count(202) == 1, statuses
    assert len(await stream_entries(redis, keys)) == 1


async def test_device_over_its_rate_gets_429(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    settings = ingest_settings.model_copy(update={"device_rate_per_s": 3})
    client = await make_client(aiohttp_client, settings)
    poll = await new_poll(client, max_votes_per_device=None)
    dev = await device(client)
    url = f"/v1/polls/{poll['id']}/votes"
    statuses = [(await client.post(url, json=vote(), headers=dev)).status for _ in range(3)]
    assert statuses == [202, 202, 202]
    r = await client.post(url, json=vote(), headers=dev)
    await expect_error(r, 429, "rate_limited", "Authorization")
    assert 1 <= int(r.headers["Retry-After"]) <= 2


async def test_backlog_over_bound_gets_503_with_retry_after(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, keys: Keys
) -> None:
    settings = ingest_settings.model_copy(update={"max_backlog": 2})
    client = await make_client(aiohttp_client, settings)
    poll = await new_poll(client, max_votes_per_device=None)
    for p in range(keys.partitions):
        await redis.xgroup_create(keys.votes(p), TALLY_GROUP, id="0", mkstream=True)
    dev = await device(client)
    url = f"/v1/polls/{poll['id']}/votes"
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = await client.post(url, json=vote(), headers=dev)
        statuses.append(r.status)
        if r.status == 503:
            await expect_error(r, 503, "unavailable", None)
            assert r.headers["Retry-After"] == "1"
            break
        await asyncio.sleep(0.05)
    assert statuses[-1] == 503, statuses
    # Only votes Redis took were acknowledged: none of the 503s reached the stream.
    assert statuses.count(202) == len(await stream_entries(redis, keys))


async def test_redis_away_gets_503_not_a_hang(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    good = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(good, max_votes_per_device=None)
    dev = await device(good)
    # A settings copy pointing at a port nothing listens on; the poll definition is
    # already cached by nobody, so the miss itself must also fail cleanly.
    away = ingest_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    client = await make_client(aiohttp_client, away)
    r = await client.post(f"/v1/polls/{poll['id']}/votes", json=vote(), headers=dev)
    await expect_error(r, 503, "unavailable", None)
    assert r.headers["Retry-After"] == "1"
    r = await client.get("/readyz")
    assert r.status == 503
    assert (await r.json())["checks"]["redis"].startswith("unavailable")


async def test_admin_needs_the_admin_token(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    r = await client.get("/v1/admin/shows")
    await expect_error(r, 401, "unauthorized", "Authorization")
    r = await client.get("/v1/admin/shows", headers={"Authorization": "Bearer wrong"})
    body = await expect_error(r, 401, "unauthorized", "Authorization")
    assert ADMIN_TOKEN not in await r.text()
    assert "wrong" not in body["message"]
    dev = await device(client)
    r = await client.post("/v1/admin/shows", json={"name": "x"}, headers=dev)
    await expect_error(r, 401, "unauthorized", "Authorization")


async def test_admin_validation(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    show = await (await client.post("/v1/admin/shows", json={"name": "s"}, headers=ADMIN)).json()
    one = [{"key": "a", "label": "A"}]
    r = await client.post(
        "/v1/admin/polls", json={"show_id": show["id"], "title": "t", "options": one}, headers=ADMIN
    )
    await expect_error(r, 400, "invalid_field", "options")
    dup = [{"key": "a", "label": "A"}, {"key": "a", "label": "B"}]
    r = await client.post(
        "/v1/admin/polls", json={"show_id": show["id"], "title": "t", "options": dup}, headers=ADMIN
    )
    await expect_error(r, 422, "duplicate_option", "options")
    bad = [{"key": "A B", "label": "A"}, {"key": "b", "label": "B"}]
    r = await client.post(
        "/v1/admin/polls", json={"show_id": show["id"], "title": "t", "options": bad}, headers=ADMIN
    )
    await expect_error(r, 400, "invalid_field", "options[0].key")
    two = [{"key": "a", "label": "A"}, {"key": "b", "label": "B"}]
    r = await client.post(
        "/v1/admin/polls", json={"show_id": "nope", "title": "t", "options": two}, headers=ADMIN
    )
    await expect_error(r, 404, "show_not_found", "show_id")
    r = await client.post("/v1/admin/polls/nope/open", headers=ADMIN)
    await expect_error(r, 404, "poll_not_found", "poll")


async def test_poll_and_tally_reads(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, options=2)
    r = await client.get(f"/v1/polls/{poll['id']}")
    got = await r.json()
    assert got["state"] == "open"
    assert [o["key"] for o in got["options"]] == ["o0", "o1"]
    r = await client.get(f"/v1/polls/{poll['id']}/tally")
    t = await r.json()
    assert t["counts"] == {"o0": 0, "o1": 0}
    assert t["total"] == 0
    assert t["version"] == 0
    assert t["final"] is False


async def test_result_exports(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, options=2)
    await pg.execute(
        "UPDATE totals SET count = 3 WHERE poll_id = $1 AND option_key = 'o1'", poll["id"]
    )
    r = await client.get(f"/v1/admin/polls/{poll['id']}/result.json", headers=ADMIN)
    res = await r.json()
    assert res["counts"] == {"o0": 0, "o1": 3}
    assert res["total"] == 3
    assert res["final"] is False
    r = await client.get(f"/v1/admin/polls/{poll['id']}/result.csv", headers=ADMIN)
    assert r.content_type == "text/csv"
    lines = (await r.text()).strip().splitlines()
    assert lines[0] == "poll_id,option_key,label,count,share,final,archive_digest"
    assert lines[2] == f"{poll['id']},o1,Act 1,3,1.000000,false,"


async def test_openapi_matches_the_routes(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    app = create_app(ingest_settings)
    client = await aiohttp_client(app)
    doc = await (await client.get("/v1/openapi.json")).json()
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        # The catch-all (any method, any path) only answers the JSON 404/405.
        if route.resource is not None and route.method not in ("HEAD", "*")
    }
    assert documented == served
    schemas = doc["components"]["schemas"]
    assert {"VoteRequest", "VoteAccepted", "ErrorBody", "TallyUpdate"} <= set(schemas)


async def test_health_ready_metrics_and_headers(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    assert (await client.get("/healthz")).status == 200
    r = await client.get("/readyz")
    assert r.status == 200, await r.text()
    assert (await r.json())["checks"] == {"redis": "ok", "postgres": "ok"}
    r = await client.get("/metrics")
    text = await r.text()
    assert "buzzer_http_requests_total" in text
    assert "buzzer_ingest_backlog" in text
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_postgres_away_degrades_but_votes_flow(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    good = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(good, max_votes_per_device=None)
    away = ingest_settings.model_copy(
        update={"database_url": SecretStr("postgresql://postgres@127.0.0.1:1/none")}
    )
    client = await make_client(aiohttp_client, away)
    r = await client.get("/readyz")
    assert r.status == 200
    body = await r.json()
    assert body["status"] == "degraded"
    assert body["checks"]["postgres"].startswith("unavailable")
    r = await client.post(
        f"/v1/polls/{poll['id']}/votes", json=vote(), headers=await device(client)
    )
    assert r.status == 202


async def test_a_body_that_arrives_after_the_headers_is_waited_for(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, keys: Keys
) -> None:
    # The vote path reads a body that came with its headers in place (body_now), and
    # awaits one still on its way: a slow phone's vote, or one over the limit, is no
    # different from a fast one.
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client)
    dev = await device(client)
    body = json.dumps(vote("o1")).encode()

    async def trickle(data: bytes, step: int) -> AsyncIterator[bytes]:
        for i in range(0, len(data), step):
            await asyncio.sleep(0.02)
            yield data[i : i + step]

    headers = {**dev, "Content-Type": "application/json"}
    url = f"/v1/polls/{poll['id']}/votes"
    r = await client.post(url, data=trickle(body, 16), headers=headers)
    assert r.status == 202, await r.text()
    assert [e.vote_id for e in await stream_entries(redis, keys)] == [json.loads(body)["vote_id"]]
    big = b'{"option": "o0", "pad": "' + b"x" * 10_000 + b'"}'
    r = await client.post(url, data=trickle(big, 1024), headers=headers)
    await expect_error(r, 413, "body_too_large", "body")


@pytest.mark.parametrize(
    ("authorization", "content_type", "status"),
    [
        # As apps send them: the vote path's fast paths.
        ("Bearer {t}", "application/json", 202),
        # Any other spelling is read as before, by the full parsers.
        ("bearer {t}", "application/json", 202),
        ("Bearer   {t}", "application/json; charset=utf-8", 202),
        ("BEARER {t}", "Application/JSON", 202),
        ("Bearer\t{t}", "application/json", 401),
        ("Bearer ", "application/json", 401),
        ("Basic {t}", "application/json", 401),
        ("Bearer {t}", "application/jsonx", 415),
        ("Bearer {t}", "text/plain; a=application/json", 415),
    ],
)
async def test_a_vote_reads_its_headers_however_they_are_spelled(
    aiohttp_client: Any,
    ingest_settings: Any,
    pg: Any,
    redis: Any,
    authorization: str,
    content_type: str,
    status: int,
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, max_votes_per_device=None)
    token = (await device(client))["Authorization"].removeprefix("Bearer ")
    r = await client.post(
        f"/v1/polls/{poll['id']}/votes",
        data=json.dumps(vote("o1")),
        headers={"Authorization": authorization.format(t=token), "Content-Type": content_type},
    )
    assert r.status == status, await r.text()
    if status == 401:
        assert (await r.json())["field"] == "Authorization"
    elif status == 415:
        assert (await r.json())["field"] == "Content-Type"
