"""The archive stays exact through the faults the totals survive: the archiving tally
SIGKILLed at random moments while votes flow, and PostgreSQL away for the outage.

The faults are driven by the machinery of ``tests/e2e/test_tally_crash.py`` and
``tests/faults/test_postgres_outage.py``; this module only adds the archive's checks.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from buzzer import audit
from services.common.messages import ARCHIVE_GROUP
from tests.e2e.test_tally_crash import Producer, TallyProcess, _close_and_check_final, _converged
from tests.faults import test_postgres_outage as outage
from tests.support import eventually
from tests.support.faults import TcpProxy
from tests.support.tally import PG_ADMIN_DSN, TallyEnv, create_poll, pending

pytestmark = pytest.mark.e2e


async def archive_counts(conn: asyncpg.Connection | asyncpg.Pool, poll: str) -> Counter[str]:
    rows = await conn.fetch(
        "SELECT option_key, sum(count) AS n FROM vote_archive WHERE poll_id = $1"
        " GROUP BY option_key",
        poll,
    )
    return Counter({r["option_key"]: int(r["n"]) for r in rows})


async def duplicated_votes(conn: asyncpg.Connection | asyncpg.Pool, poll: str) -> int:
    """Rows beyond one per (device, vote id): the producers never reuse a vote id for a
    new vote, and their retries are deduplicated by ingest, so each vote has one row."""
    return int(
        await conn.fetchval(
            "SELECT count(*) - count(DISTINCT (device, vote_id)) FROM vote_archive"
            " WHERE poll_id = $1",
            poll,
        )
    )


@pytest.fixture
async def tally_process(env: TallyEnv, tmp_path: Path) -> AsyncIterator[TallyProcess]:
    proc = TallyProcess(env, "archiver-crashy", tmp_path)
    try:
        yield proc
    finally:
        await proc.ensure_dead()


async def test_sigkill_at_random_moments_archive_exact(
    env: TallyEnv, tally_process: TallyProcess
) -> None:
    pdef = await create_poll(env)
    producer = Producer(env, pdef.id, 20_000)
    rng = random.Random()
    kills = 0
    await tally_process.start()

    async def chaos() -> None:
        nonlocal kills
        for _ in range(5):
            await asyncio.sleep(rng.uniform(0.8, 2.2))
            await tally_process.signal(signal.SIGKILL)
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await tally_process.start()

    await asyncio.gather(producer.run(), chaos())
    assert kills == 5 and producer.sent == 20_000

    async def archived() -> bool:
        for p in range(env.keys.partitions):
            if await pending(env, env.keys.votes(p), ARCHIVE_GROUP):
                return False
        return await archive_counts(env.pool, pdef.id) == producer.accepted

    await eventually(lambda: _converged(env, pdef.id, producer.accepted), timeout=40)
    await eventually(archived, timeout=40)
    assert await duplicated_votes(env.pool, pdef.id) == 0
    # Archive = frozen result = the accepted votes, and the recount agrees.
    await _close_and_check_final(env, pdef.id, producer.accepted)

    async def sealed() -> bool:
        digest = await env.pool.fetchval("SELECT archive_digest FROM polls WHERE id = $1", pdef.id)
        return digest is not None

    await eventually(sealed, timeout=20)
    out = io.StringIO()
    assert await audit.recount(env.dsn, pdef.id, out) == 0, out.getvalue()
    assert await tally_process.signal(signal.SIGTERM) == 0


@pytest.fixture
def outage_database() -> Iterator[str]:
    name = f"buzzer_test_archive_{uuid.uuid4().hex[:8]}"
    yield name

    async def drop() -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


@pytest.mark.timeout(int(outage.OUTAGE_S) + 120)
def test_postgres_outage_archive_exact_after_catch_up(tmp_path: Path, outage_database: str) -> None:
    host_port = PG_ADMIN_DSN.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        proxied = PG_ADMIN_DSN.split("@", 1)[0] + f"@127.0.0.1:{proxy.port}/{outage_database}"
        with outage.local_stack(
            tmp_path,
            database=outage_database,
            ingest=2,
            extra_env={"DATABASE_URL": proxied, "BUZZER_DEVICE_RATE_PER_S": "100000"},
        ) as rs:
            # The outage itself, and totals = live counts = the 202s after it.
            asyncio.run(outage.scenario(rs, proxy))
            asyncio.run(_archive_caught_up(rs.dsn))


async def _archive_caught_up(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        poll = await conn.fetchval("SELECT id FROM polls ORDER BY created_at DESC LIMIT 1")
        totals = Counter(
            {
                r["option_key"]: int(r["count"])
                for r in await conn.fetch(
                    "SELECT option_key, count FROM totals WHERE poll_id = $1 AND count > 0", poll
                )
            }
        )
        assert sum(totals.values()) > 0

        async def caught_up() -> bool:
            return await archive_counts(conn, poll) == totals

        await eventually(caught_up, timeout=60)
        assert await duplicated_votes(conn, poll) == 0
        rows = await conn.fetchval("SELECT count(*) FROM vote_archive WHERE poll_id = $1", poll)
        # The scenario's votes are one tap each: one row per accepted vote.
        assert rows == sum(totals.values()), json.dumps(totals)
    finally:
        await conn.close()
