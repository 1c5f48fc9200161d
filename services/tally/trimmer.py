"""Trims applied entries from the streams and reports lag and pending per partition.

An entry may go once it was delivered to every group that reads it and acknowledged.
``trim.lua`` reads the groups' positions and trims in one step on one node: positions
read from a primary just before it died must never decide a trim on its promoted
replica, which holds the entries but not yet their deliveries and acknowledgements.

Below the outbox's first remaining entry, PostgreSQL forgets the writer's dedupe rows:
those entries can no longer be delivered. With replica acknowledgement the trim must
first reach a replica (``WAIT``), or a failover would bring back entries whose rows
were forgotten, and the writer would count them twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common.db import LazyPool
from services.common.messages import (
    ARCHIVE_GROUP,
    PG_GROUP,
    TALLY_GROUP,
    Keys,
    StreamId,
    parse_id,
)
from services.common.redisconn import ReplicasBehind, wait_replicas
from services.common.scripts import Scripts, trim_stream
from services.common.settings import TallySettings
from services.tally.metrics import Stats, TallyMetrics
from services.tally.store import forget_below
from services.tally.streams import sleep_or_stop

log = logging.getLogger("buzzer.tally.trimmer")

GC_INTERVAL_S = 60.0

# Atomic, so a consumer that comes back between the check and the delete cannot lose
# the entries it just read: a consumer with anything pending is never deleted.
_DELCONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    pending: int
    lag: int | None


async def snapshot(redis: Redis, stream: str, group: str) -> GroupSnapshot | None:
    """The group's pending count and lag at one instant; None if it has none."""
    pipe = redis.pipeline(transaction=True)
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, group)
    try:
        groups, pend = await pipe.execute()
    except ResponseError:
        return None  # no stream or no group yet
    for g in groups:
        name = g["name"]
        if (name.decode() if isinstance(name, bytes) else name) != group:
            continue
        lag = g.get("lag")
        return GroupSnapshot(
            pending=int(pend["pending"]),
            lag=int(lag) if lag is not None else None,
        )
    return None


async def forget_outbox_rows(pg: LazyPool, p: int, below: StreamId) -> str:
    """Forget the dedupe rows of outbox entries below ``below``: they were trimmed and
    can no longer be delivered (``store.forget_below``)."""
    pool = await pg.pool()
    async with pool.acquire() as conn, conn.transaction():
        return await forget_below(conn, p, below)


class Trimmer:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        pg: LazyPool,
        settings: TallySettings,
        metrics: TallyMetrics,
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.pg = pg
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self._watermark: dict[int, StreamId] = {}
        self._gc = redis.register_script(_DELCONSUMER)

    def streams(self) -> list[tuple[str, int, str, str]]:
        """(kind, partition, stream, group) of every group the tally reads."""
        out = []
        for p in range(self.keys.partitions):
            out.append(("votes", p, self.keys.votes(p), TALLY_GROUP))
            out.append(("archive", p, self.keys.votes(p), ARCHIVE_GROUP))
            out.append(("applied", p, self.keys.applied(p), PG_GROUP))
        return out

    def trimmed(self) -> list[tuple[str, int, str, tuple[str, ...]]]:
        """(kind, partition, stream, groups) of every stream the tally trims: a votes
        entry goes once both the tally and the archiver acknowledged it."""
        out: list[tuple[str, int, str, tuple[str, ...]]] = []
        for p in range(self.keys.partitions):
            out.append(("votes", p, self.keys.votes(p), (TALLY_GROUP, ARCHIVE_GROUP)))
            out.append(("applied", p, self.keys.applied(p), (PG_GROUP,)))
        return out

    async def update_gauges(self) -> None:
        for kind, p, stream, group in self.streams():
            snap = await snapshot(self.redis, stream, group)
            if snap is None:
                continue
            self.metrics.pending.labels(kind, str(p)).set(snap.pending)
            if snap.lag is not None:
                self.metrics.lag.labels(kind, str(p)).set(snap.lag)

    async def trim_all(self) -> int:
        total = 0
        for kind, p, stream, groups in self.trimmed():
            result = await trim_stream(self.redis, self.scripts, stream, groups)
            if result is None:
                continue
            total += result.removed
            if result.removed:
                self.metrics.trimmed.labels(kind).inc(result.removed)
            if kind == "applied":
                below = result.first or result.safe
                if below > self._watermark.get(p, (0, 0)):
                    await self._forget(p, stream, below)
        self.stats.trimmed += total
        return total

    async def _forget(self, p: int, stream: str, below: StreamId) -> None:
        """Forget partition ``p``'s outbox dedupe rows below ``below``, the outbox's first
        entry after a trim, once no failover can bring back an entry below it."""
        try:
            if self.settings.ack_replicas:
                await wait_replicas(
                    self.redis, stream, self.settings.ack_replicas, self.settings.ack_timeout_ms
                )
                # The replica now holds everything the node that answers for the stream
                # had done. Had a failover come between the trim and the WAIT, that node
                # may lack the trim: its first entry says what is really gone.
                first = await self.redis.xrange(stream, count=1)
                if first and first[0][0]:
                    below = min(below, parse_id(first[0][0]))
            await forget_outbox_rows(self.pg, p, below)
        except ReplicasBehind as exc:
            # Rows wait for the next round; the streams keep being trimmed.
            log.info(
                "outbox rows kept: trim not yet on a replica",
                extra={"partition": p, "error": str(exc)},
            )
        except Exception as exc:
            log.warning(
                "forgetting outbox rows failed",
                extra={"partition": p, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
        else:
            self._watermark[p] = max(below, self._watermark.get(p, (0, 0)))

    async def gc_consumers(self) -> int:
        removed = 0
        for _, _, stream, group in self.streams():
            try:
                consumers = await self.redis.xinfo_consumers(stream, group)
            except ResponseError:
                continue
            for c in consumers:
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name == self.settings.consumer or int(c["pending"]) > 0:
                    continue
                if int(c["idle"]) < self.settings.consumer_gc_idle_ms:
                    continue
                removed += int(await self._gc(keys=[stream], args=[group, name], client=self.redis))
        if removed:
            log.info("removed idle consumers", extra={"consumers": removed})
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        last_trim = last_gc = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            try:
                await self.update_gauges()
                if now - last_trim >= self.settings.trim_interval_s:
                    last_trim = now
                    await self.trim_all()
                if now - last_gc >= GC_INTERVAL_S:
                    last_gc = now
                    await self.gc_consumers()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "trim or metrics round failed",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            await sleep_or_stop(stop, self.settings.metrics_interval_s)
