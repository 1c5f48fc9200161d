"""Reads each partition's votes stream as the ``tally`` group and applies it exactly once.

Counting happens in ``apply.lua``: an entry counts only in the call whose XACK
removes it from the pending list, so re-reading, claiming or concurrently holding
an entry is always safe. This module only decides what to feed the script and when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.messages import TALLY_GROUP, CloseEntry, Keys, VoteEntry, decode_entry
from services.common.scripts import Scripts
from services.common.settings import TallySettings
from services.tally.metrics import Stats, TallyMetrics
from services.tally.streams import Entry, GroupReader, is_nogroup, sleep_or_stop

log = logging.getLogger("buzzer.tally.consumer")

STREAM = "votes"
DEFERRED_RETRY_S = 0.1
ERROR_BACKOFF_S = 0.5


@dataclass(frozen=True, slots=True)
class ApplyCall:
    keys: list[str]
    args: list[str | int]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    closes: int
    deferred: list[bytes]


def build_apply_call(
    keys: Keys, p: int, entries: list[tuple[bytes, VoteEntry | CloseEntry]], sec_ttl: int
) -> ApplyCall:
    """KEYS and ARGV for ``apply.lua``, in the layout its header documents."""
    klist: list[str] = [keys.votes(p), keys.applied(p)]
    poll_idx: dict[str, int] = {}
    sec_idx: dict[tuple[str, int], int] = {}

    def poll_index(poll: str) -> int:
        if poll not in poll_idx:
            poll_idx[poll] = len(klist) + 1
            klist.extend((keys.counts(p, poll), keys.version(p, poll), keys.closed(p, poll)))
        return poll_idx[poll]

    args: list[str | int] = [TALLY_GROUP, len(entries), sec_ttl]
    for entry_id, e in entries:
        ci = poll_index(e.poll)
        if isinstance(e, VoteEntry):
            sec = e.recv_ts // 1000
            if (e.poll, sec) not in sec_idx:
                klist.append(keys.second(p, e.poll, sec))
                sec_idx[(e.poll, sec)] = len(klist)
            args += [
                entry_id.decode(),
                "v",
                e.poll,
                e.option,
                e.count,
                sec,
                ci,
                sec_idx[(e.poll, sec)],
            ]
        else:
            args += [entry_id.decode(), "c", e.poll, "", 0, 0, ci, 0]
    return ApplyCall(klist, args)


class VotesConsumer:
    """Applies every partition's votes stream; one task per partition.

    :param redis: client for the partitions' slots
    :param keys: key names
    :param scripts: the registered Lua scripts
    :param settings: batch size, block time, claim idle time, recovery interval
    :param metrics: Prometheus metrics
    :param stats: counts for the shutdown summary
    :param on_touched: called with the polls of every batch that changed a counter
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        settings: TallySettings,
        metrics: TallyMetrics,
        stats: Stats,
        on_touched: Callable[[Iterable[str]], None],
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self.on_touched = on_touched
        self.readers = [
            GroupReader(redis, keys.votes(p), TALLY_GROUP, settings.consumer)
            for p in range(keys.partitions)
        ]
        self._deferred = [False] * keys.partitions

    async def ensure_groups(self) -> None:
        for r in self.readers:
            await r.ensure()

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
        call = build_apply_call(self.keys, p, decoded, self.settings.sec_ttl_s)
        applied, closes, deferred = await self.scripts.apply(
            keys=call.keys, args=call.args, client=self.redis
        )
        applied, closes = int(applied), int(closes)
        deferred = list(deferred)
        self.metrics.batch_size.labels(STREAM).observe(len(entries))
        self.metrics.applied.inc(applied)
        self.stats.batches += 1
        self.stats.applied += applied
        self.stats.closes += closes
        if deferred:
            self._deferred[p] = True
            self.metrics.deferred.labels(STREAM).inc(len(deferred))
            self.stats.deferred += len(deferred)
            log.info(
                "close marker deferred: earlier entries still pending",
                extra={"partition": p, "entry_ids": [d.decode() for d in deferred]},
            )
        if applied or closes:
            self.on_touched({e.poll for _, e in decoded})
        return ApplyResult(applied, closes, deferred)

    async def recover(self, p: int) -> int:
        """Re-apply this consumer's own pending entries, then claim those of dead consumers."""
        self._deferred[p] = False
        applied = 0
        async for page, claimed, dropped in self.readers[p].recover(
            self.settings.batch_size, self.settings.claim_idle_ms
        ):
            if claimed or dropped:
                self.metrics.recovered(self.stats, STREAM, p, len(page) if claimed else 0, dropped)
            if page:
                applied += (await self.apply(p, page)).applied
        return applied

    async def run_partition(self, p: int, stop: asyncio.Event) -> None:
        """Read, apply, repeat until ``stop``; the batch in hand is always finished."""
        reader = self.readers[p]
        last_recover = 0.0
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now - last_recover >= self.settings.recover_interval_s or (
                    self._deferred[p] and now - last_recover >= DEFERRED_RETRY_S
                ):
                    last_recover = now
                    await self.recover(p)
                entries = await reader.read_new(self.settings.batch_size, self.settings.block_ms)
                if entries:
                    await self.apply(p, entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_nogroup(exc):
                    log.warning("consumer group missing, recreating", extra={"partition": p})
                    await _quietly(reader.ensure())
                    continue
                log.exception("vote consumer error, retrying", extra={"partition": p})
                await sleep_or_stop(stop, ERROR_BACKOFF_S)
        # Entries read in the last turn are applied already; this picks up anything a
        # failed turn left behind, so a graceful stop leaves nothing pending of ours
        # except close markers still waiting for other consumers.
        try:
            await self.recover_own(p)
        except Exception:
            log.exception("final recovery failed", extra={"partition": p})

    async def recover_own(self, p: int) -> None:
        async for page in self.readers[p].own_pending(self.settings.batch_size):
            await self.apply(p, page)


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception:
        log.exception("recreating consumer group failed")
