"""The load test's audit against real Redis and PostgreSQL, and its rate curves.

No locust here: the audit runs in the parent process, and locust (gevent) never enters
the pytest process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import redis as redis_sync

from loadtest.audit import Clients, audit, drain
from loadtest.cli import parse_duration
from loadtest.plan import PROBE, Plan, PollPlan, offered, show_units
from services.common.archive import (
    ARCHIVE_COLUMNS,
    ArchivedVote,
    digest_of,
    ensure_partition,
    partition_table,
)
from services.common.messages import Keys
from tests.conftest import REDIS_URL
from tests.support.tally import migrated_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database("buzzer_test_loadtest") as url:
        yield url


@pytest.fixture
def setup(dsn: str) -> Iterator[tuple[Plan, Keys, str]]:
    prefix = f"lt{uuid.uuid4().hex[:10]}"
    keys = Keys(prefix=prefix, partitions=4)
    poll = PollPlan(
        id=f"p{uuid.uuid4().hex[:10]}",
        title="t",
        kind="buzz",
        options=["clap", "boo", PROBE],
        max_count=10,
        open_at=0,
        close_at=1,
    )
    plan = Plan(
        host="http://127.0.0.1:9",
        ws_host="ws://127.0.0.1:9",
        admin_token="x",
        profile="show",
        duration_s=10,
        scale=1,
        user_rate=2,
        viewers=2,
        out_dir="/tmp",
        polls=[poll],
    )
    asyncio.run(_pg_poll(dsn, poll, {"clap": 7, "boo": 3, PROBE: 2}))
    r = redis_sync.Redis.from_url(REDIS_URL)
    r.hset(keys.counts(0, poll.id), mapping={"clap": 4, "boo": 3})
    r.hset(keys.counts(2, poll.id), mapping={"clap": 3, PROBE: 2})
    try:
        yield plan, keys, prefix
    finally:
        for k in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(k)
        r.close()
        asyncio.run(_pg_drop(dsn, poll.id))


async def _pg_poll(dsn: str, poll: PollPlan, totals: dict[str, int]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO shows(id, name) VALUES ($1, 'lt')", poll.id)
        await conn.execute(
            "INSERT INTO polls(id, show_id, title, state, final) VALUES ($1, $1, 't', 'closed', true)",
            poll.id,
        )
        for i, opt in enumerate(poll.options):
            await conn.execute(
                "INSERT INTO options(poll_id, key, label, position) VALUES ($1, $2, $2, $3)",
                poll.id,
                opt,
                i,
            )
            await conn.execute(
                "INSERT INTO totals(poll_id, option_key, count) VALUES ($1, $2, $3)",
                poll.id,
                opt,
                totals[opt],
            )
        # The archive holds the same votes, one row per option, and the digest is sealed
        # with the result, as the tally's archiver and sealer leave a closed poll.
        await ensure_partition(conn, poll.id)
        votes = [
            ArchivedVote(poll.id, str(uuid.uuid4()), f"d{i}", opt, n, 0, 0, 0, f"1-{i}")
            for i, (opt, n) in enumerate(totals.items())
        ]
        await conn.copy_records_to_table(
            "vote_archive", records=[v.record() for v in votes], columns=ARCHIVE_COLUMNS
        )
        async with conn.transaction():
            digest, _, _ = await digest_of(conn, poll.id)
        await conn.execute("UPDATE polls SET archive_digest = $2 WHERE id = $1", poll.id, digest)
    finally:
        await conn.close()


async def _pg_drop(dsn: str, poll: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{partition_table(poll)}"')
        await conn.execute("DELETE FROM polls WHERE id = $1", poll)
        await conn.execute("DELETE FROM shows WHERE id = $1", poll)
    finally:
        await conn.close()


def _clients(poll: str, accepted: dict[str, int], seen: list[dict[str, int]]) -> Clients:
    viewers: list[dict[str, Any]] = [
        {"kind": "viewer", "polls": {poll: {"counts": c, "final": True, "regressions": 0}}}
        for c in seen
    ]
    return Clients(accepted={poll: accepted}, viewers=viewers, processes=1)


def test_exact_counts_pass(setup: tuple[Plan, Keys, str], dsn: str) -> None:
    plan, keys, prefix = setup
    poll = plan.polls[0].id
    server, settled = drain(plan, REDIS_URL, dsn, prefix, keys.partitions, timeout=5)
    assert settled
    want = {"clap": 7, "boo": 3, PROBE: 2}
    result = audit(plan, _clients(poll, want, [want, want]), server, settled)
    assert result.ok, result.problems
    assert [r["ok"] for r in result.table] == [True, True, True]


def test_every_difference_is_reported_exactly(setup: tuple[Plan, Keys, str], dsn: str) -> None:
    plan, keys, prefix = setup
    poll = plan.polls[0].id
    r = redis_sync.Redis.from_url(REDIS_URL)
    r.hincrby(keys.counts(2, poll), "clap", -1)  # a vote removed behind the system's back
    r.close()
    server, settled = drain(plan, REDIS_URL, dsn, prefix, keys.partitions, timeout=5)
    want = {"clap": 7, "boo": 3, PROBE: 2}
    clients = _clients(poll, {**want, "boo": 4}, [want, {**want, PROBE: 1}])
    clients.unresolved = [{"poll": poll, "option": "clap", "count": 1, "vote_id": "v"}]
    result = audit(plan, clients, server, settled)
    assert not result.ok
    assert (
        f"poll {poll} option clap: clients accepted 7, redis -1 (relative to the clients)"
        in result.problems
    )
    assert (
        f"poll {poll} option boo: clients accepted 4, redis -1; postgres -1; archive -1; viewers -1"
        " (relative to the clients)"
    ) in result.problems
    assert (
        f"poll {poll} option {PROBE}: clients accepted 2, viewers -1, +0 (relative to the clients)"
        in result.problems
    )
    assert "1 votes never got a definite answer" in result.problems
    line = next(ln for ln in result.lines if " clap " in ln)
    assert line.split()[2:5] == ["7", "6", "7"] and "MISMATCH redis -1" in line


def test_a_tampered_archive_fails_the_audit(setup: tuple[Plan, Keys, str], dsn: str) -> None:
    plan, keys, prefix = setup
    poll = plan.polls[0].id
    asyncio.run(_tamper(dsn, poll))
    server, settled = drain(plan, REDIS_URL, dsn, prefix, keys.partitions, timeout=2)
    want = {"clap": 7, "boo": 3, PROBE: 2}
    result = audit(plan, _clients(poll, want, [want]), server, settled)
    assert not result.ok
    assert (
        f"poll {poll} option boo: clients accepted 3, archive +1 (relative to the clients)"
        in result.problems
    )
    assert f"poll {poll}: the recount's digest differs from the sealed one" in result.problems
    assert f"poll {poll}: 1 archived rows no longer match their hash" in result.problems


async def _tamper(dsn: str, poll: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE vote_archive SET count = count + 1 WHERE poll_id = $1 AND option_key = 'boo'",
            poll,
        )
    finally:
        await conn.close()


def test_rate_curves() -> None:
    assert show_units(0.05) == 1 and show_units(0.4) == 3 and show_units(0.6) == 10
    assert show_units(0.95) == 0
    assert 1 < show_units(0.8) < 3
    assert offered("show", 0.6, 0.5) == 150
    assert offered("rate:700", 0.5, 1) == 700 and offered("rate:700", 0.95, 1) == 0
    assert offered("step", 0.0, 1) == 30 and offered("step", 0.89, 1) == 270
    assert (
        parse_duration("3m") == 180 and parse_duration("1m30s") == 90 and parse_duration("45") == 45
    )
