"""Copies the outbox of applied deltas into PostgreSQL, each outbox entry exactly once.

The outbox entry's id is inserted into ``applied_outbox`` in the same transaction
as its deltas (the SQL is in ``store``); a redelivered entry finds its row and adds
nothing. Entries are acknowledged only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from services.common.db import LazyPool
from services.common.messages import PG_GROUP, Keys, decode_applied, parse_id
from services.common.redisconn import wait_replicas
from services.common.settings import TallySettings
from services.tally.metrics import Stats, TallyMetrics
from services.tally.store import CommitResult, Outboxed, apply_outbox
from services.tally.streams import Entry, GroupLoop

log = logging.getLogger("buzzer.tally.pgwriter")

STREAM = "applied"


class PgWriter(GroupLoop):
    """Writes every partition's outbox to PostgreSQL; one task per partition.

    :param redis: client
    :param keys: key names
    :param pg: the pool holder
    :param settings: batch size, claim idle time, timeouts
    :param metrics: Prometheus metrics
    :param stats: counts for the shutdown summary
    :param on_final: called after the commit that froze a poll's result
    """

    stream_label = STREAM

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        pg: LazyPool,
        settings: TallySettings,
        metrics: TallyMetrics,
        stats: Stats,
        on_final: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(redis, keys, keys.applied, PG_GROUP, settings, metrics, stats)
        self.pg = pg
        self.on_final = on_final
        self.ack_replicas = settings.ack_replicas
        self.ack_timeout_ms = settings.ack_timeout_ms

    async def handle(self, p: int, entries: list[Entry]) -> int:
        return (await self.process(p, entries)).fresh

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
            self.retry_soon(p)
            self.metrics.deferred.labels(STREAM).inc(len(deferred))
            self.stats.pg_deferred += len(deferred)
        if not ready:
            return CommitResult(0, [])
        if self.ack_replicas:
            # An outbox entry only the primary held would be lost in a failover and
            # applied again under a new id: PostgreSQL must not have it first.
            await wait_replicas(
                self.redis, self.keys.applied(p), self.ack_replicas, self.ack_timeout_ms
            )
            ready = await self._held(p, ready)
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

    async def _held(self, p: int, ready: list[Outboxed]) -> list[Outboxed]:
        """The entries still pending to this writer on the node that answered the WAIT.

        Had a failover come between the read and the WAIT, the WAIT confirmed the
        promoted node, which may lack entries read from the dead one; those are applied
        again there under new ids, so committing them would count them twice."""
        reader = self.readers[p]
        pipe = self.redis.pipeline(transaction=False)
        for d in ready:
            pipe.xpending_range(
                reader.stream,
                reader.group,
                min=d.id,
                max=d.id,
                count=1,
                consumername=reader.consumer,
            )
        held = [d for d, rows in zip(ready, await pipe.execute(), strict=True) if rows]
        if len(held) < len(ready):
            # Claimed by another writer meanwhile, or lost with a failed primary.
            log.info(
                "outbox entries no longer pending to this writer, not committed",
                extra={"partition": p, "entries": len(ready) - len(held)},
            )
        return held

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
            if d.batch.closes and not await self.readers[p].only_batch_before(d.id, ready_ids):
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
                result = await apply_outbox(conn, p, entries, self.keys.partitions)
        self.metrics.pg_latency.observe(time.perf_counter() - start)
        self.metrics.batch_size.labels(STREAM).observe(len(entries))
        self.stats.pg_batches += 1
        self.stats.pg_entries += result.fresh
        if result.finalized:
            self.metrics.finalized.inc(len(result.finalized))
            self.stats.finalized += len(result.finalized)
        return result

    def on_error(self, p: int, exc: Exception) -> None:
        # Whatever was read stays pending and is retried through recovery, so an outage
        # of PostgreSQL costs latency, not votes; retrying it before anything new keeps
        # the pending list bounded meanwhile.
        self.retry_soon(p)
        self.metrics.pg_errors.inc()
        self.stats.pg_errors += 1
        log.warning(
            "outbox write failed, will retry",
            extra={"partition": p, "error": f"{type(exc).__name__}: {exc}"[:300]},
        )

    async def flush(self, p: int) -> None:
        """Drain what the stopped consumers left in the outbox, then our own pending."""
        reader = self.readers[p]
        while entries := await reader.read_new(self.settings.batch_size, None):
            await self.process(p, entries)
        await self.drain_own(p)
