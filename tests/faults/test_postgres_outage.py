"""PostgreSQL unreachable while votes flow, without stopping the shared server: the
tally reaches PostgreSQL through a TCP proxy that the test cuts (open connections
reset, new ones refused) for the outage."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import PG_ADMIN_DSN, REDIS_URL
from tests.support import eventually
from tests.support.archive import archive_caught_up
from tests.support.faults import (
    TcpProxy,
    VoteLog,
    counted,
    env_flag,
    get_json,
    new_devices,
    open_poll,
    post_vote,
)
from tests.support.stack import RunningStack, local_stack

OUTAGE_S = env_flag("BUZZER_FAULT_PG_OUTAGE_S", 10.0)
"""The issue asked for 30 s: run that with ``BUZZER_FAULT_PG_OUTAGE_S=30``. The default
of 10 s is still twice the tally's claim-idle time and gives several samples of the live
counts moving while PostgreSQL stands still."""

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(OUTAGE_S) + 90)]

DATABASE = "buzzer_test_faults"
CLIENTS = 4


async def pg_total(dsn: str, poll: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(count), 0) FROM totals WHERE poll_id = $1", poll
            )
        )
    finally:
        await conn.close()


async def pg_counts(dsn: str, poll: str) -> Counter[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT option_key, count FROM totals WHERE poll_id = $1", poll)
        return Counter({r["option_key"]: int(r["count"]) for r in rows if r["count"]})
    finally:
        await conn.close()


async def scenario(rs: RunningStack, proxy: TcpProxy) -> None:
    base = rs.ingest_urls[0]
    tally = f"http://127.0.0.1:{rs.stack.tally_port}"
    async with aiohttp.ClientSession() as s:
        poll = await open_poll(s, rs)
        tokens = await new_devices(s, base, CLIENTS)
        st, ready = await get_json(s, f"{tally}/readyz")
        assert st == 200 and ready["status"] == "ok", ready

    log = VoteLog()
    stop = asyncio.Event()

    async def client(i: int) -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                vid = str(uuid.uuid4())
                for _ in range(1000):  # resend the same vote id until a 202
                    if (
                        await post_vote(
                            s, rs.ingest_urls[i % 2], poll, tokens[i], vid, log, option=f"o{i % 2}"
                        )
                        == 202
                    ):
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.02)  # a modest, steady flow

    tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]

    async def pg_moving() -> bool:
        return await pg_total(rs.dsn, poll) > 0

    await eventually(pg_moving, timeout=20)

    proxy.cut()
    cut_at = time.monotonic()
    async with aiohttp.ClientSession() as s:

        async def degraded() -> bool:
            st, body = await get_json(s, f"{tally}/readyz")
            return (
                st == 200
                and body["status"] == "degraded"
                and body["checks"]["postgres"].startswith("unavailable")
                and body["checks"]["redis"] == "ok"
            )

        await eventually(degraded, timeout=10)
        pg_at_cut = await pg_total(rs.dsn, poll)
        live_at_cut = await counted(REDIS_URL, rs.prefix, poll)
        samples = []
        while time.monotonic() - cut_at < OUTAGE_S:
            await asyncio.sleep(min(2.0, max(0.0, OUTAGE_S - (time.monotonic() - cut_at))))
            st, body = await get_json(s, f"{tally}/readyz")
            # Still ready for the load balancer, and it says what is degraded.
            assert st == 200 and body["status"] == "degraded", body
            assert body["checks"]["postgres"].startswith("unavailable"), body
            samples.append(
                (await counted(REDIS_URL, rs.prefix, poll), await pg_total(rs.dsn, poll))
            )
        # The live counts kept moving in Redis the whole time; PostgreSQL did not move.
        lives = [live for live, _ in samples]
        assert lives == sorted(lives) and lives[-1] > live_at_cut + 50, (live_at_cut, samples)
        assert len({live for live in lives}) >= max(2, len(lives) // 2), samples
        assert all(pg == pg_at_cut for _, pg in samples), (pg_at_cut, samples)
        # Votes were answered 202 throughout.
        assert log.statuses[202] > 0 and not [c for c in log.statuses if c >= 500], log.statuses

        proxy.restore()
        stop.set()
        await asyncio.gather(*tasks)

        async def ok_again() -> bool:
            st, body = await get_json(s, f"{tally}/readyz")
            return st == 200 and body["status"] == "ok"

        await eventually(ok_again, timeout=30)

    accepted = len(log.acked)

    async def caught_up() -> bool:
        live = await counted(REDIS_URL, rs.prefix, poll)
        return live == accepted and await pg_total(rs.dsn, poll) == live

    await eventually(caught_up, timeout=60)
    # Exactly, per option: PostgreSQL equals Redis equals the 202s.
    async with aiohttp.ClientSession() as s:
        st, live = await get_json(s, f"{base}/v1/polls/{poll}/tally")
    assert st == 200
    expected = Counter({k: v for k, v in live["counts"].items() if v})
    assert await pg_counts(rs.dsn, poll) == expected
    assert sum(expected.values()) == accepted


def test_postgres_unreachable_live_counts_move_and_totals_catch_up_exactly(tmp_path: Path) -> None:
    host_port = PG_ADMIN_DSN.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        with local_stack(
            tmp_path,
            database=DATABASE,
            ingest=2,
            extra_env={"BUZZER_DEVICE_RATE_PER_S": "100000"},
            # The processes reach PostgreSQL through the proxy the test cuts.
            database_url=lambda name: (
                PG_ADMIN_DSN.split("@", 1)[0] + f"@127.0.0.1:{proxy.port}/{name}"
            ),
        ) as rs:
            asyncio.run(scenario(rs, proxy))
            # The archive fell behind with the totals and caught up as exactly.
            asyncio.run(archive_caught_up(rs.dsn))
        assert proxy.connections > 0
