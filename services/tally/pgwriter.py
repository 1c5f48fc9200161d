"""Copies the outbox of applied deltas into PostgreSQL, each outbox entry exactly once.

The outbox entry's id is inserted into ``applied_outbox`` in the same transaction
as its deltas; a redelivered entry finds its row and adds nothing. Entries are
acknowledged only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import msgspec
from redis.asyncio import Redis

from services.common.db import create_pool
from services.common.messages import PG_GROUP, AppliedBatch, Keys, decode_applied
from services.common.settings import TallySettings
from services.tally.metrics import Stats, TallyMetrics
from services.tally.streams import Entry, GroupReader, StreamId, is_nogroup, parse_id, sleep_or_stop

log = logging.getLogger("buzzer.tally.pgwriter")

STREAM = "applied"
RETRY_S = 0.1
ERROR_BACKOFF_S = 0.5
OUTBOX_LOCK = 0x42757A
"""Advisory lock namespace (with the partition): writers share it, the trimmer excludes them."""


class Pg:
    """The asyncpg pool, created on first use, so that the process starts and keeps
    applying to Redis while PostgreSQL is down; readiness reports it."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await create_pool(self._dsn, self._size)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


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


class PgWriter:
    """Writes every partition's outbox to PostgreSQL; one task per partition.

    :param redis: client
    :param keys: key names
    :param pg: the pool holder
    :param settings: batch size, claim idle time, timeouts
    :param metrics: Prometheus metrics
    :param stats: counts for the shutdown summary
    :param on_final: called after the commit that froze a poll's result
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        pg: Pg,
        settings: TallySettings,
        metrics: TallyMetrics,
        stats: Stats,
        on_final: Callable[[str], Awaitable[None]],
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.pg = pg
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self.on_final = on_final
        self.readers = [
            GroupReader(redis, keys.applied(p), PG_GROUP, settings.consumer)
            for p in range(keys.partitions)
        ]
        self._retry = [False] * keys.partitions

    async def ensure_groups(self) -> None:
        for r in self.readers:
            await r.ensure()

    async def process(self, p: int, entries: list[Entry]) -> CommitResult:
        """Commit what can be committed, then acknowledge it. Raises if PostgreSQL fails."""
        reader = self.readers[p]
        decoded: list[Outboxed] = []
        drop: list[bytes] = []
        for entry_id, fields in entries:
            try:
                decoded.append(Outboxed(entry_id, parse_id(entry_id), decode_applied(fields[b"d"])))
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                if fields:
                    log.error(
                        "undecodable outbox entry, acknowledged without effect",
                        extra={"partition": p, "entry_id": entry_id.decode()},
                    )
                drop.append(entry_id)
        if drop:
            await reader.ack(drop)
            self.metrics.dropped.labels(STREAM).inc(len(drop))
            self.stats.dropped += len(drop)
        ready, deferred = await self._ordered(p, decoded)
        if deferred:
            self._retry[p] = True
            self.metrics.deferred.labels(STREAM).inc(len(deferred))
            self.stats.pg_deferred += len(deferred)
        if not ready:
            return CommitResult(0, [])
        result = await self.commit(p, ready)
        await reader.ack([d.id for d in ready])
        for poll in result.finalized:
            try:
                await self.on_final(poll)
            except Exception:
                # PostgreSQL holds the truth; the reconciler brings Redis in line later.
                log.exception("publishing a final result failed", extra={"poll": poll})
        return result

    async def _ordered(
        self, p: int, decoded: list[Outboxed]
    ) -> tuple[list[Outboxed], list[Outboxed]]:
        """Split off entries carrying a close while an earlier outbox entry is pending
        elsewhere: the close may finalize the poll, so every earlier delta must be in
        PostgreSQL first (in an earlier commit or in this one)."""
        ready: list[Outboxed] = []
        ready_ids: set[bytes] = set()
        deferred: list[Outboxed] = []
        for d in decoded:
            if d.batch.closes:
                earlier = await self.redis.xpending_range(
                    self.keys.applied(p),
                    PG_GROUP,
                    min="-",
                    max=f"({d.id.decode()}",
                    count=len(ready) + 1,
                )
                if any(e["message_id"] not in ready_ids for e in earlier):
                    deferred.append(d)
                    log.info(
                        "outbox close deferred: earlier entries still pending",
                        extra={"partition": p, "entry_id": d.id.decode(), "polls": d.batch.closes},
                    )
                    continue
            ready.append(d)
            ready_ids.add(d.id)
        return ready, deferred

    async def commit(self, p: int, entries: list[Outboxed]) -> CommitResult:
        """One transaction: dedupe by entry id, add the new deltas, record closes, finalize."""
        start = time.perf_counter()
        async with asyncio.timeout(self.settings.pg_timeout_s):
            pool = await self.pg.pool()
            async with pool.acquire() as conn, conn.transaction():
                result = await self._commit(conn, p, entries)
        self.metrics.pg_latency.observe(time.perf_counter() - start)
        self.metrics.batch_size.labels(STREAM).observe(len(entries))
        self.stats.pg_batches += 1
        self.stats.pg_entries += result.fresh
        if result.finalized:
            self.metrics.finalized.inc(len(result.finalized))
            self.stats.finalized += len(result.finalized)
        return result

    async def _commit(
        self, conn: asyncpg.Connection, p: int, entries: list[Outboxed]
    ) -> CommitResult:
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
            if await self._close_partition(conn, poll, p):
                finalized.append(poll)
        return CommitResult(len(fresh), finalized)

    async def _close_partition(self, conn: asyncpg.Connection, poll: str, p: int) -> bool:
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
        if closed < (row["partitions"] or self.keys.partitions):
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

    async def recover(self, p: int) -> None:
        """Re-process this writer's own pending entries, then claim those of dead writers."""
        self._retry[p] = False
        async for page, claimed, dropped in self.readers[p].recover(
            self.settings.batch_size, self.settings.claim_idle_ms
        ):
            if claimed or dropped:
                self.metrics.recovered(self.stats, STREAM, p, len(page) if claimed else 0, dropped)
            if page:
                await self.process(p, page)

    async def run_partition(self, p: int, stop: asyncio.Event) -> None:
        reader = self.readers[p]
        last_recover = 0.0
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now - last_recover >= self.settings.recover_interval_s or (
                    self._retry[p] and now - last_recover >= RETRY_S
                ):
                    last_recover = now
                    await self.recover(p)
                entries = await reader.read_new(self.settings.batch_size, self.settings.block_ms)
                if entries:
                    await self.process(p, entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_nogroup(exc):
                    log.warning("outbox group missing, recreating", extra={"partition": p})
                    try:
                        await reader.ensure()
                    except Exception:
                        log.exception("recreating outbox group failed")
                    continue
                # Whatever was read stays pending and is retried through recovery, so
                # an outage of PostgreSQL costs latency, not votes.
                self._retry[p] = True
                self.metrics.pg_errors.inc()
                self.stats.pg_errors += 1
                log.warning(
                    "outbox write failed, will retry",
                    extra={"partition": p, "error": f"{type(exc).__name__}: {exc}"[:300]},
                )
                await sleep_or_stop(stop, ERROR_BACKOFF_S)
                if self._retry[p]:
                    # Keep the pending list bounded while PostgreSQL is away: retry it
                    # before taking anything new.
                    last_recover = 0.0

    async def flush(self, p: int) -> None:
        """Drain what the stopped consumers left in the outbox, then our own pending."""
        reader = self.readers[p]
        while entries := await reader.read_new(self.settings.batch_size, None):
            await self.process(p, entries)
        async for page in reader.own_pending(self.settings.batch_size):
            await self.process(p, page)
