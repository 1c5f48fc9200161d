"""Checks of the vote archive shared by the fault tests."""

from __future__ import annotations

import json
from collections import Counter

import asyncpg

from tests.support import eventually


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


async def archive_caught_up(dsn: str) -> None:
    """After an outage scenario: the newest poll's archive equals its totals, with one
    row per accepted vote and none twice."""
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
