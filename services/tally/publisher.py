"""Publishes each changed poll's live state at most every ``publish_interval_ms``.

A gate key per poll (SET NX PX) holds the limit across every tally process; a poll
whose gate is taken stays dirty and goes out on a later tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from redis.asyncio import Redis

from services.common.live import load_polldef, read_live
from services.common.messages import Keys, PollDef, encode_update
from services.common.polls import mark_final_redis
from services.tally.metrics import Stats, TallyMetrics
from services.tally.streams import sleep_or_stop

log = logging.getLogger("buzzer.tally.publisher")

UPDATES_MAXLEN = 10_000


class Publisher:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        interval_ms: int,
        metrics: TallyMetrics,
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.interval_ms = interval_ms
        self.metrics = metrics
        self.stats = stats
        self.dirty: set[str] = set()
        # Oldest ingest receipt (ms) among the votes counted since each poll's last
        # update: the start of the vote-to-screen delay the runbook alarms on.
        self.received: dict[str, int] = {}

    def mark(self, polls: Mapping[str, int | None]) -> None:
        """Polls changed by a batch, each with its oldest vote's receipt time (ms)."""
        self.dirty.update(polls)
        for poll, recv_ms in polls.items():
            if recv_ms is not None and recv_ms < self.received.get(poll, recv_ms + 1):
                self.received[poll] = recv_ms

    async def _gate(self, poll: str) -> bool:
        return bool(
            await self.redis.set(self.keys.publish_gate(poll), 1, nx=True, px=self.interval_ms)
        )

    async def _publish(self, pdef: PollDef) -> None:
        update = await read_live(self.redis, self.keys, pdef)
        await self.redis.xadd(
            self.keys.updates, {"d": encode_update(update)}, maxlen=UPDATES_MAXLEN, approximate=True
        )
        self.metrics.published.inc()
        self.stats.published += 1
        recv_ms = self.received.pop(pdef.id, None)
        if recv_ms is not None:
            self.metrics.vote_to_publish.observe(max(0.0, update.ts - recv_ms) / 1000)

    async def publish_due(self) -> None:
        """One tick: publish every dirty poll whose gate is free."""
        for poll in list(self.dirty):
            if not await self._gate(poll):
                continue
            self.dirty.discard(poll)
            pdef = await load_polldef(self.redis, self.keys, poll)
            if pdef is None:
                # Redis lost the definition; the reconciler rewrites it and the next
                # batch for the poll marks it dirty again.
                continue
            try:
                await self._publish(pdef)
            except Exception:
                self.dirty.add(poll)
                raise

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.interval_ms / 1000
        while not stop.is_set():
            try:
                await self.publish_due()
            except Exception:
                log.exception("publishing updates failed")
            await sleep_or_stop(stop, interval)

    async def flush(self, deadline: float) -> None:
        """Publish every dirty poll, waiting for gates held by other processes."""
        while self.dirty and time.monotonic() < deadline:
            await self.publish_due()
            if self.dirty:
                await asyncio.sleep(self.interval_ms / 4000)

    async def finalize(self, poll: str) -> None:
        """The poll's result was frozen: say so in its definition and publish at once."""
        pdef = await mark_final_redis(self.redis, self.keys, poll)
        if pdef is None:
            return
        deadline = time.monotonic() + 2 * self.interval_ms / 1000 + 1
        # Waiting for the gate keeps the per-poll limit; it is free within one interval.
        while not await self._gate(poll):
            if time.monotonic() > deadline:
                self.dirty.add(poll)
                return
            await asyncio.sleep(self.interval_ms / 4000)
        self.dirty.discard(poll)
        await self._publish(pdef)
        log.info("final result published", extra={"poll": poll})
