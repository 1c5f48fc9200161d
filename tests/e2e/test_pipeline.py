"""End to end: thousands of votes from concurrent HTTP clients into two ingest processes,
mixed with retries and bad requests; the tally's Redis counters, the PostgreSQL
totals and GET /tally all equal the 202s per option, exactly; closing freezes it, and
the vote archive, its recount and the frozen result all equal the 202s too.

The issue asked for 20,000 votes: run that figure with
``BUZZER_TEST_PIPELINE_VOTES=20000``. The default of 5,000 exercises the same paths
(both ingest processes, every partition, many tally batches, every kind of bad request
and retry) in about a quarter of the time."""

from __future__ import annotations

import asyncio
import io
import os
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from buzzer import audit
from services.common.messages import Keys
from services.common.redisconn import connect
from tests.conftest import REDIS_URL
from tests.support import eventually
from tests.support.stack import RunningStack, api, create_open_poll, local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

VOTES = int(os.environ.get("BUZZER_TEST_PIPELINE_VOTES", "5000"))
DEVICES = 1_000
CONCURRENCY = 96


async def redis_counts(
    prefix: str, poll: str, partitions: int = 4, url: str = REDIS_URL
) -> Counter[str]:
    keys = Keys(prefix=prefix, partitions=partitions)
    client = connect(url)
    try:
        total: Counter[str] = Counter()
        for p in range(partitions):
            for k, v in (await client.hgetall(keys.counts(p, poll))).items():
                total[k.decode()] += int(v)
        return total
    finally:
        await client.aclose()


async def pg_totals(dsn: str, poll: str) -> tuple[Counter[str], bool]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT option_key, count FROM totals WHERE poll_id = $1", poll)
        final = await conn.fetchval("SELECT final FROM polls WHERE id = $1", poll)
        return Counter({r["option_key"]: int(r["count"]) for r in rows if r["count"]}), bool(final)
    finally:
        await conn.close()


async def archive_of(dsn: str, poll: str) -> tuple[Counter[str], str | None]:
    """The poll's votes per option in the vote archive, and the digest frozen with it."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT option_key, sum(count) AS n FROM vote_archive WHERE poll_id = $1"
            " GROUP BY option_key",
            poll,
        )
        digest = await conn.fetchval("SELECT archive_digest FROM polls WHERE id = $1", poll)
        return Counter({r["option_key"]: int(r["n"]) for r in rows}), digest
    finally:
        await conn.close()


async def drive(urls: list[str], poll: str, tokens: list[str]) -> tuple[Counter[str], Counter[int]]:
    """Send VOTES votes; returns accepted counts per option and every status seen."""
    rng = random.Random(7)
    accepted: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    sent_ok: list[dict[str, Any]] = []
    queue: asyncio.Queue[tuple[str, dict[str, Any], dict[str, str], str]] = asyncio.Queue()
    for i in range(VOTES):
        token = tokens[i % len(tokens)]
        body = {
            "option": f"o{rng.randrange(8)}",
            "count": rng.randint(1, 5),
            "vote_id": str(uuid.uuid4()),
        }
        queue.put_nowait(("vote", body, {"Authorization": f"Bearer {token}"}, urls[i % len(urls)]))
        if i % 25 == 0:  # bad requests, mixed in: none of them may count
            bad = rng.choice(
                [
                    ({**body, "option": "nope", "vote_id": str(uuid.uuid4())}, 404),
                    ({**body, "count": "three", "vote_id": str(uuid.uuid4())}, 400),
                    ({**body, "count": 101, "vote_id": str(uuid.uuid4())}, 422),
                ]
            )
            queue.put_nowait(
                (
                    "bad:" + str(bad[1]),
                    bad[0],
                    {"Authorization": f"Bearer {token}"},
                    urls[i % len(urls)],
                )
            )
        if i % 40 == 0:
            queue.put_nowait(("bad:401", body, {}, urls[i % len(urls)]))

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                kind, body, headers, url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            for _attempt in range(50):
                async with session.post(
                    f"{url}/v1/polls/{poll}/votes", json=body, headers=headers
                ) as r:
                    statuses[r.status] += 1
                    data = await r.json()
                    if r.status in (429, 503):  # retry the same vote id, as the app does
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")) / 10)
                        continue
                    break
            if kind == "vote":
                assert r.status == 202, (r.status, data)
                assert data == {"vote_id": body["vote_id"], "accepted": body["count"]}
                if r.headers.get("Idempotent-Replayed") != "true":
                    accepted[body["option"]] += data["accepted"]
                sent_ok.append(dict(body, _headers=headers, _url=url))
                # Some clients lost the answer and retry: same vote id, same answer.
                if len(sent_ok) % 10 == 0:
                    queue.put_nowait(("retry", body, headers, url))
            elif kind == "retry":
                assert r.status == 202, (r.status, data)
                assert r.headers.get("Idempotent-Replayed") == "true"
                assert data == {"vote_id": body["vote_id"], "accepted": body["count"]}
            else:
                assert r.status == int(kind.split(":")[1]), (kind, r.status, data)

    conn = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return accepted, statuses


async def run_pipeline(rs: RunningStack) -> None:
    if True:
        async with aiohttp.ClientSession() as session:
            poll = await create_open_poll(session, rs)
            tokens = []
            for _ in range(DEVICES):
                tokens.append(
                    (await api(session, "POST", f"{rs.ingest_urls[0]}/v1/devices", expect=201))[
                        "token"
                    ]
                )
        accepted, statuses = await drive(rs.ingest_urls, poll["id"], tokens)
        assert sum(accepted.values()) > VOTES  # counts of 1..5 per vote
        assert statuses[400] and statuses[401] and statuses[404] and statuses[422]
        expected_total = sum(accepted.values())

        tally_url = f"{rs.ingest_urls[1]}/v1/polls/{poll['id']}/tally"
        async with aiohttp.ClientSession() as session:

            async def live_total_reached() -> bool:
                t = await api(session, "GET", tally_url)
                return bool(t["total"] >= expected_total)

            await eventually(live_total_reached, timeout=60)
            tally = await api(session, "GET", tally_url)
            assert Counter({k: v for k, v in tally["counts"].items() if v}) == accepted
            assert await redis_counts(rs.prefix, poll["id"], url=rs.env["REDIS_URL"]) == accepted

            await api(
                session,
                "POST",
                f"{rs.ingest_urls[0]}/v1/admin/polls/{poll['id']}/close",
                headers=rs.admin_headers,
            )

            async def final_in_pg() -> bool:
                return (await pg_totals(rs.dsn, poll["id"]))[1]

            await eventually(final_in_pg, timeout=60)
            totals, final = await pg_totals(rs.dsn, poll["id"])
            assert final
            assert totals == accepted
            result = await api(
                session,
                "GET",
                f"{rs.ingest_urls[0]}/v1/admin/polls/{poll['id']}/result.json",
                headers=rs.admin_headers,
            )
            assert result["final"] is True
            assert result["total"] == expected_total
            tally = await api(session, "GET", tally_url)
            assert tally["final"] is True and tally["state"] == "closed"
            assert tally["total"] == expected_total

            # The archive = the recount = the frozen result = the 202s, and the digest
            # frozen with the result is the one the result JSON shows.
            async def sealed() -> bool:
                return (await archive_of(rs.dsn, poll["id"]))[1] is not None

            await eventually(sealed, timeout=60)
            archived, digest = await archive_of(rs.dsn, poll["id"])
            assert archived == accepted
            out = io.StringIO()
            assert await audit.recount(rs.dsn, poll["id"], out) == 0, out.getvalue()
            assert f"digest of the archive: {digest}" in out.getvalue()
            result = await api(
                session,
                "GET",
                f"{rs.ingest_urls[0]}/v1/admin/polls/{poll['id']}/result.json",
                headers=rs.admin_headers,
            )
            assert result["archive_digest"] == digest


def test_votes_from_concurrent_clients_are_counted_exactly(tmp_path: Path) -> None:
    with local_stack(tmp_path, database="buzzer_test_e2e", ingest=2) as rs:
        asyncio.run(run_pipeline(rs))
