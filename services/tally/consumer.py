"""Reads each partition's votes stream as the ``tally`` group and applies it exactly once.

Counting happens in ``apply.lua``: an entry counts only in the call whose XACK
removes it from the pending list, so re-reading, claiming or concurrently holding
an entry is always safe. This module only decides what to feed the script; when is
decided by ``streams.GroupLoop``, the loop shared with the PostgreSQL writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from redis.asyncio import Redis

from services.common.messages import TALLY_GROUP, CloseEntry, Keys, VoteEntry, decode_entry
from services.common.scripts import ApplyResult, Scripts, apply_args, decode_apply
from services.common.settings import TallySettings
from services.tally.metrics import Stats, TallyMetrics
from services.tally.streams import Entry, GroupLoop

log = logging.getLogger("buzzer.tally.consumer")

STREAM = "votes"


class VotesConsumer(GroupLoop):
    """Applies every partition's votes stream; one task per partition.

    :param redis: client for the partitions' slots
    :param keys: key names
    :param scripts: the registered Lua scripts
    :param settings: batch size, block time, claim idle time, recovery interval
    :param metrics: Prometheus metrics
    :param stats: counts for the shutdown summary
    :param on_touched: called with the polls of every batch that changed a counter,
        each with its oldest vote's receipt time (ms; None for close markers only)
    """

    stream_label = STREAM

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        settings: TallySettings,
        metrics: TallyMetrics,
        stats: Stats,
        on_touched: Callable[[Mapping[str, int | None]], None],
    ) -> None:
        super().__init__(redis, keys, keys.votes, TALLY_GROUP, settings, metrics, stats)
        self.scripts = scripts
        self.on_touched = on_touched

    async def handle(self, p: int, entries: list[Entry]) -> int:
        return (await self.apply(p, entries)).applied

    async def apply(self, p: int, entries: list[Entry]) -> ApplyResult:
        """Apply one batch through the script; safe for any entries, any number of times."""
        reader = self.readers[p]
        decoded: list[tuple[bytes, VoteEntry | CloseEntry]] = []
        drop: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:
                drop.append(entry_id)
                continue
            try:
                decoded.append((entry_id, decode_entry(fields)))
            except (KeyError, ValueError, UnicodeDecodeError):
                log.error(
                    "undecodable vote entry, acknowledged without effect",
                    extra={
                        "partition": p,
                        "entry_id": entry_id.decode(),
                        "fields": repr(fields)[:200],
                    },
                )
                drop.append(entry_id)
        if drop:
            # Deleted or malformed entries can never be counted; leaving them pending
            # would only hold back close markers and trimming forever.
            await reader.ack(drop)
            self.metrics.dropped.labels(STREAM).inc(len(drop))
            self.stats.dropped += len(drop)
        if not decoded:
            return ApplyResult(0, 0, [])
        ks, args = apply_args(self.keys, p, decoded, self.settings.sec_ttl_s)
        applied, closes, deferred = decode_apply(
            await self.scripts.apply(keys=ks, args=args, client=self.redis)
        )
        self.metrics.batch_size.labels(STREAM).observe(len(entries))
        self.metrics.applied.inc(applied)
        self.stats.batches += 1
        self.stats.applied += applied
        self.stats.closes += closes
        if deferred:
            self.retry_soon(p)
            self.metrics.deferred.labels(STREAM).inc(len(deferred))
            self.stats.deferred += len(deferred)
            log.info(
                "close marker deferred: earlier entries still pending",
                extra={"partition": p, "entry_ids": [d.decode() for d in deferred]},
            )
        if applied or closes:
            # Each poll with its oldest vote's receipt: the publisher measures vote-to-screen.
            touched: dict[str, int | None] = dict.fromkeys(e.poll for _, e in decoded)
            for _, e in decoded:
                if isinstance(e, VoteEntry):
                    old = touched[e.poll]
                    touched[e.poll] = e.recv_ts if old is None else min(old, e.recv_ts)
            self.on_touched(touched)
        return ApplyResult(applied, closes, deferred)

    def on_error(self, p: int, exc: Exception) -> None:
        log.exception("vote consumer error, retrying", extra={"partition": p})

    async def run_partition(self, p: int, stop: asyncio.Event) -> None:
        await super().run_partition(p, stop)
        # Entries read in the last turn are applied already; this picks up anything a
        # failed turn left behind, so a graceful stop leaves nothing pending of ours
        # except close markers still waiting for other consumers.
        try:
            await self.drain_own(p)
        except Exception:
            log.exception("final recovery failed", extra={"partition": p})
