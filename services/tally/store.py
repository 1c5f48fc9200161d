"""The PostgreSQL side of the outbox: every statement the writer and the trimmer run.

Exactly once (docs/tally.md, sections 4 and 5): an outbox entry's id goes into
``applied_outbox`` in the same transaction as its deltas, so a redelivered entry
finds its row and adds nothing; ``outbox_watermark`` keeps an entry whose row was
forgotten after the trim from being applied again. Writers take the partition's
advisory lock shared, the trimmer exclusively, so the two never interleave.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import asyncpg

from services.common.messages import AppliedBatch, StreamId

log = logging.getLogger("buzzer.tally.store")

OUTBOX_LOCK = 0x42757A
"""Advisory lock namespace (with the partition): writers share it, the trimmer excludes them."""


@dataclass(frozen=True, slots=True)
class Outboxed:
    id: bytes
    sid: StreamId
    batch: AppliedBatch


@dataclass(frozen=True, slots=True)
class CommitResult:
    fresh: int
    """Outbox entries applied by this transaction (the others were applied before)."""
    finalized: list[str]


async def apply_outbox(
    conn: asyncpg.Connection, p: int, entries: list[Outboxed], partitions: int
) -> CommitResult:
    """Inside the caller's transaction: dedupe by entry id, add the new deltas, record
    closes, freeze the result of polls whose every partition closed.

    :param partitions: the fallback count of partitions for polls opened without one
    """
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", OUTBOX_LOCK, p)
    wm = await conn.fetchrow("SELECT ms, seq FROM outbox_watermark WHERE partition = $1", p)
    # Below the watermark every entry was applied, acknowledged and trimmed, and its
    # row may be gone: such an entry can only come from a stale holder.
    floor: StreamId = (wm["ms"], wm["seq"]) if wm else (0, 0)
    candidates = [d for d in entries if d.sid >= floor]
    if not candidates:
        return CommitResult(0, [])
    rows = await conn.fetch(
        "INSERT INTO applied_outbox(partition, entry_id) SELECT $1, unnest($2::text[])"
        " ON CONFLICT DO NOTHING RETURNING entry_id",
        p,
        [d.id.decode() for d in candidates],
    )
    new_ids = {r["entry_id"] for r in rows}
    fresh = [d for d in candidates if d.id.decode() in new_ids]
    if not fresh:
        return CommitResult(0, [])

    totals: dict[tuple[str, str], int] = defaultdict(int)
    buckets: dict[tuple[str, str, int], int] = defaultdict(int)
    closes: set[str] = set()
    for d in fresh:
        for delta in d.batch.deltas:
            totals[(delta.poll, delta.option)] += delta.count
            buckets[(delta.poll, delta.option, delta.sec)] += delta.count
        closes.update(d.batch.closes)
    polls = sorted({poll for poll, _ in totals} | closes)
    known_rows = await conn.fetch(
        "SELECT poll_id, key FROM options WHERE poll_id = ANY($1::text[])", polls
    )
    known = {(r["poll_id"], r["key"]) for r in known_rows}
    known_polls = {poll for poll, _ in known}
    unknown = sorted(k for k in totals if k not in known)
    if unknown:
        # Ingest validates against the poll definition, so this means a poll was
        # deleted under live votes; nothing can be counted for it.
        log.warning(
            "deltas for unknown poll options skipped",
            extra={"partition": p, "options": [f"{a}/{b}" for a, b in unknown][:20]},
        )
    # Sorted, so that writers of different partitions lock shared rows in one order.
    t_rows = sorted((k, v) for k, v in totals.items() if k in known)
    if t_rows:
        await conn.execute(
            "INSERT INTO totals(poll_id, option_key, count)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])"
            " ON CONFLICT (poll_id, option_key) DO UPDATE SET count = totals.count + EXCLUDED.count",
            [k[0] for k, _ in t_rows],
            [k[1] for k, _ in t_rows],
            [v for _, v in t_rows],
        )
    b_rows = sorted((k, v) for k, v in buckets.items() if (k[0], k[1]) in known)
    if b_rows:
        await conn.execute(
            "INSERT INTO rate_buckets(poll_id, option_key, second, count)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])"
            " ON CONFLICT (poll_id, option_key, second)"
            " DO UPDATE SET count = rate_buckets.count + EXCLUDED.count",
            [k[0] for k, _ in b_rows],
            [k[1] for k, _ in b_rows],
            [k[2] for k, _ in b_rows],
            [v for _, v in b_rows],
        )
    finalized: list[str] = []
    for poll in sorted(closes):
        if poll not in known_polls:
            log.warning("close for unknown poll skipped", extra={"partition": p, "poll": poll})
            continue
        if await close_partition(conn, poll, p, partitions):
            finalized.append(poll)
    return CommitResult(len(fresh), finalized)


async def close_partition(conn: asyncpg.Connection, poll: str, p: int, partitions: int) -> bool:
    """Record this partition's close; freeze the result once every partition closed.

    The poll row lock serializes the last two partitions' closes, so one of them
    always sees the other's row and the count reaches ``partitions``.
    """
    row = await conn.fetchrow(
        "SELECT partitions, final FROM polls WHERE id = $1 FOR NO KEY UPDATE", poll
    )
    await conn.execute(
        "INSERT INTO poll_partition_closed(poll_id, partition) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING",
        poll,
        p,
    )
    if row is None or row["final"]:
        return False
    closed = await conn.fetchval(
        "SELECT count(*) FROM poll_partition_closed WHERE poll_id = $1", poll
    )
    if closed < (row["partitions"] or partitions):
        return False
    status = await conn.execute(
        "UPDATE polls SET final = true, finalized_at = now(), final_result = ("
        "  SELECT jsonb_build_object("
        "    'counts', coalesce(jsonb_object_agg(o.key, coalesce(t.count, 0)), '{}'::jsonb),"
        "    'total', coalesce(sum(t.count), 0))"
        "  FROM options o LEFT JOIN totals t ON t.poll_id = o.poll_id AND t.option_key = o.key"
        "  WHERE o.poll_id = $1)"
        " WHERE id = $1 AND NOT final",
        poll,
    )
    if status.endswith(" 1"):
        log.info("poll result frozen", extra={"poll": poll, "partitions": closed})
        return True
    return False


async def forget_below(conn: asyncpg.Connection, p: int, below: StreamId) -> str:
    """Inside the caller's transaction: delete dedupe rows of outbox entries below
    ``below`` and raise the watermark (never lower it).

    Under the exclusive advisory lock no write transaction of the partition is
    running, and the ones after it see the new watermark and skip those ids.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", OUTBOX_LOCK, p)
    await conn.execute(
        "INSERT INTO outbox_watermark(partition, ms, seq) VALUES ($1, $2, $3)"
        " ON CONFLICT (partition) DO UPDATE SET ms = EXCLUDED.ms, seq = EXCLUDED.seq"
        " WHERE (outbox_watermark.ms, outbox_watermark.seq) < (EXCLUDED.ms, EXCLUDED.seq)",
        p,
        below[0],
        below[1],
    )
    # Ids compared as (ms, seq) numbers: as text "9-0" sorts after "10-0".
    status: str = await conn.execute(
        "DELETE FROM applied_outbox WHERE partition = $1 AND"
        " (split_part(entry_id, '-', 1)::bigint, split_part(entry_id, '-', 2)::bigint)"
        " < ($2::bigint, $3::bigint)",
        p,
        below[0],
        below[1],
    )
    return status
