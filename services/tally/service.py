"""The tally's parts wired together, with the order in which they start and stop."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from services.common.db import LazyPool
from services.common.messages import TALLY_GROUP
from services.common.scripts import Scripts
from services.common.settings import TallySettings
from services.tally.archiver import Archiver, Sealer
from services.tally.consumer import VotesConsumer
from services.tally.metrics import Stats, TallyMetrics
from services.tally.pgwriter import PgWriter
from services.tally.publisher import Publisher
from services.tally.reconciler import Reconciler
from services.tally.trimmer import Trimmer

log = logging.getLogger("buzzer.tally")


class Tally:
    """Consumers, PostgreSQL writers, archivers, publisher, trimmer, reconciler and the
    archive's sealer of one process.

    :param redis: client for every partition
    :param pg: PostgreSQL pool holder
    :param settings: the process settings
    :param metrics: Prometheus metrics, registered with the app's registry
    """

    def __init__(
        self, redis: Redis, pg: LazyPool, settings: TallySettings, metrics: TallyMetrics
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = settings.keys()
        self.scripts = Scripts.register(redis)
        self.stats = Stats()
        self.publisher = Publisher(
            redis, self.keys, settings.publish_interval_ms, metrics, self.stats
        )
        self.consumer = VotesConsumer(
            redis, self.keys, self.scripts, settings, metrics, self.stats, self.publisher.mark
        )
        self.sealer = Sealer(
            pg, self.keys.partitions, settings.recover_interval_s, settings.pg_timeout_s * 10
        )
        self.writer = PgWriter(redis, self.keys, pg, settings, metrics, self.stats, self._on_final)
        self.archiver = Archiver(
            redis, self.keys, pg, settings, metrics, self.stats, self.sealer.poke
        )
        self.trimmer = Trimmer(redis, self.keys, self.scripts, pg, settings, metrics, self.stats)
        self.reconciler = Reconciler(
            redis,
            self.keys,
            pg,
            self.scripts,
            settings.reconcile_interval_s,
            self.publisher.finalize,
        )
        self._stop_reading = asyncio.Event()
        self._stop_writing = asyncio.Event()
        self._stop_aux = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.Task[None]] = []
        self._aux: list[asyncio.Task[None]] = []
        self._started = 0.0

    async def start(self) -> None:
        await self.consumer.ensure_groups()
        await self.writer.ensure_groups()
        # Created before anything is trimmed: the trimmer keeps every vote the archive
        # group has not acknowledged.
        await self.archiver.ensure_groups()
        self._started = time.monotonic()
        n = self.keys.partitions
        self._readers = [
            asyncio.create_task(
                self.consumer.run_partition(p, self._stop_reading), name=f"votes-{p}"
            )
            for p in range(n)
        ]
        self._writers = [
            asyncio.create_task(
                self.writer.run_partition(p, self._stop_writing), name=f"pgwriter-{p}"
            )
            for p in range(n)
        ] + [
            asyncio.create_task(
                self.archiver.run_partition(p, self._stop_writing), name=f"archiver-{p}"
            )
            for p in range(n)
        ]
        self._aux = [
            asyncio.create_task(self.publisher.run(self._stop_aux), name="publisher"),
            asyncio.create_task(self.trimmer.run(self._stop_aux), name="trimmer"),
            asyncio.create_task(self.reconciler.run(self._stop_aux), name="reconciler"),
            asyncio.create_task(self.sealer.run(self._stop_aux), name="sealer"),
        ]
        log.info(
            "tally started",
            extra={"consumer": self.settings.consumer, "partitions": n, "prefix": self.keys.prefix},
        )

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Every task :meth:`start` made; each runs until :meth:`stop`."""
        return [*self._readers, *self._writers, *self._aux]

    async def stop(self) -> None:
        """Stop reading, finish the batches in hand, flush PostgreSQL and updates, log once."""
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self._stop_reading.set()
        await _join(self._readers, deadline)
        self._stop_writing.set()
        await _join(self._writers, deadline)
        for p in range(self.keys.partitions):
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.writer.flush(p)
            except Exception as exc:
                # Left pending: the next process, or a claimer, writes it.
                log.warning(
                    "outbox flush incomplete",
                    extra={"partition": p, "error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.archiver.flush(p)
            except Exception as exc:
                # Left pending: the next process, or a claimer, archives it.
                log.warning(
                    "archive flush incomplete",
                    extra={"partition": p, "error": f"{type(exc).__name__}: {exc}"[:300]},
                )
        self._stop_aux.set()
        self.sealer.poke()
        await _join(self._aux, deadline)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.publisher.flush(deadline)
        except Exception:
            log.warning("final publish incomplete", extra={"dirty": sorted(self.publisher.dirty)})
        log.info(
            "tally stopped",
            extra={
                **self.stats.as_dict(),
                "consumer": self.settings.consumer,
                "pending_left": await self._own_pending(),
                "uptime_s": round(time.monotonic() - self._started, 3),
            },
        )

    async def _on_final(self, poll: str) -> None:
        self.sealer.poke()
        await self.publisher.finalize(poll)

    async def _own_pending(self) -> int | None:
        try:
            total = 0
            for p in range(self.keys.partitions):
                summary = await self.redis.xpending(self.keys.votes(p), TALLY_GROUP)
                for c in summary["consumers"]:
                    name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                    if name == self.settings.consumer:
                        total += int(c["pending"])
            return total
        except Exception:
            return None


async def _join(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for t in late:
        t.cancel()
    for t in tasks:
        try:
            await t
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("tally task failed", extra={"task": t.get_name()})
