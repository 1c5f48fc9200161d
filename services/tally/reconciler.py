"""Brings Redis back in line with PostgreSQL, the record of every poll's state.

Covers Redis restarting empty (definitions and state keys rewritten), a crash in the
middle of an admin close (the missing close markers appended), and a crash between
freezing a result and marking the definition final. Every write is conditional, so
any number of tally processes may run it at once and a racing admin call wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.db import LazyPool
from services.common.messages import Keys, OptionDef, PollDef, decode_polldef, encode_polldef
from services.common.scripts import Scripts, close_partition
from services.tally.streams import sleep_or_stop

log = logging.getLogger("buzzer.tally.reconciler")


@dataclass
class ReconcileResult:
    defs_written: int = 0
    states_written: int = 0
    closes_run: int = 0
    finals_marked: int = 0

    def changed(self) -> bool:
        return bool(
            self.defs_written or self.states_written or self.closes_run or self.finals_marked
        )


class Reconciler:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        pg: LazyPool,
        scripts: Scripts,
        interval_s: float,
        on_final: Callable[[str], Awaitable[None]],
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.pg = pg
        self.scripts = scripts
        self.interval_s = interval_s
        self.on_final = on_final

    async def _load(self) -> list[PollDef]:
        pool = await self.pg.pool()
        async with pool.acquire() as conn:
            polls = await conn.fetch(
                "SELECT id, show_id, title, state, max_votes_per_device, max_count, final,"
                " max_votes_per_account"
                " FROM polls WHERE state IN ('open', 'closed')"
                " AND (NOT final OR finalized_at > now() - interval '1 day')"
            )
            options = await conn.fetch(
                "SELECT poll_id, key, label FROM options WHERE poll_id = ANY($1::text[])"
                " ORDER BY poll_id, position",
                [r["id"] for r in polls],
            )
        by_poll: dict[str, list[OptionDef]] = {}
        for o in options:
            by_poll.setdefault(o["poll_id"], []).append(OptionDef(key=o["key"], label=o["label"]))
        return [
            PollDef(
                id=r["id"],
                show_id=r["show_id"],
                title=r["title"],
                options=by_poll.get(r["id"], []),
                max_votes_per_device=r["max_votes_per_device"],
                max_count=r["max_count"],
                state=r["state"],
                final=r["final"],
                max_votes_per_account=r["max_votes_per_account"],
            )
            for r in polls
        ]

    async def reconcile(self) -> ReconcileResult:
        result = ReconcileResult()
        pdefs = await self._load()
        if not pdefs:
            return result
        n = self.keys.partitions
        pipe = self.redis.pipeline(transaction=False)
        for pdef in pdefs:
            pipe.get(self.keys.poll_def(pdef.id))
            for p in range(n):
                pipe.get(self.keys.state(p, pdef.id))
        replies = await pipe.execute()
        for i, pdef in enumerate(pdefs):
            raw = replies[i * (n + 1)]
            states = replies[i * (n + 1) + 1 : (i + 1) * (n + 1)]
            await self._one(pdef, raw, states, result)
        if result.changed():
            log.info("redis reconciled with postgres", extra=vars(result))
        return result

    async def _one(
        self, pdef: PollDef, raw: bytes | None, states: list[bytes | None], result: ReconcileResult
    ) -> None:
        keys = self.keys
        if raw is None:
            if await self.redis.set(keys.poll_def(pdef.id), encode_polldef(pdef), nx=True):
                result.defs_written += 1
            await self.redis.sadd(keys.polls_index, pdef.id)
        elif pdef.final and not decode_polldef(raw).final:
            await self.on_final(pdef.id)
            result.finals_marked += 1
        for p, st in enumerate(states):
            if pdef.state == "closed" and not pdef.final:
                if st != b"closed":
                    # The admin close stopped before this partition: close it now, with
                    # its marker, so the poll can still be finalized.
                    result.closes_run += await close_partition(
                        self.redis, self.scripts, keys, p, pdef.id
                    )
            elif st is None and await self.redis.set(keys.state(p, pdef.id), pdef.state, nx=True):
                result.states_written += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "reconciliation round failed",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            await sleep_or_stop(stop, self.interval_s)
