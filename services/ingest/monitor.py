"""Poll definitions and the stream backlog, refreshed off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis

from services.common.live import load_polldef
from services.common.messages import ARCHIVE_GROUP, TALLY_GROUP, Keys, PollDef
from services.common.redisconn import REDIS_AWAY

log = logging.getLogger("buzzer.ingest")


class Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = Missing.MISSING
"""Not in the cache, or stale: :meth:`PollCache.get` loads it."""


class PollCache:
    """Poll definitions by id, kept ``ttl`` seconds (misses too, so unknown ids are cheap).

    Options and rules never change once a poll exists; the state that must be exact
    (open or closed) is checked by the vote script in Redis, not here.
    """

    def __init__(self, redis: Redis, keys: Keys, ttl: float) -> None:
        self._redis, self._keys, self._ttl = redis, keys, ttl
        self._entries: dict[str, tuple[float, PollDef | None]] = {}
        self._loading: dict[str, asyncio.Future[PollDef | None]] = {}

    def cached(self, poll: str) -> PollDef | None | Missing:
        """The poll's definition (None: no such poll) while it is fresh, else ``MISSING``.
        Without a coroutine: nearly every vote finds its poll here (see :meth:`get`)."""
        hit = self._entries.get(poll)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return MISSING

    async def get(self, poll: str) -> PollDef | None:
        hit = self.cached(poll)
        if hit is not MISSING:
            return hit
        now = time.monotonic()
        # One load per id however many requests miss at once.
        pending = self._loading.get(poll)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[PollDef | None] = asyncio.get_running_loop().create_future()
        self._loading[poll] = fut
        try:
            pdef = await load_polldef(self._redis, self._keys, poll)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the waiters re-raise it
            raise
        else:
            fut.set_result(pdef)
        finally:
            del self._loading[poll]
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[poll] = (now + self._ttl, pdef)
        return pdef


_GROUPS = frozenset(g for name in (TALLY_GROUP, ARCHIVE_GROUP) for g in (name, name.encode()))


class BacklogMonitor:
    """Entries appended but not yet applied by the tally or not yet archived, over all
    partitions: either keeps the stream from being trimmed, so the bound counts the
    slower of the two on each partition."""

    def __init__(self, redis: Redis, keys: Keys, interval: float = 0.25) -> None:
        self._redis, self._keys, self._interval = redis, keys, interval
        self.backlog = 0
        self.redis_ok = True

    async def refresh(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for p in range(self._keys.partitions):
            pipe.xinfo_groups(self._keys.votes(p))
        replies = await pipe.execute(raise_on_error=False)
        total = 0
        for groups in replies:
            if isinstance(groups, Exception):
                continue  # no stream yet: nothing waiting
            # The stream holds what the slowest group still needs, not the sum.
            total += max(
                (
                    int(g.get("lag") or 0) + int(g.get("pending") or 0)
                    for g in groups
                    if g.get("name") in _GROUPS
                ),
                default=0,
            )
        self.backlog = total

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
                self.redis_ok = True
            except REDIS_AWAY as exc:
                if self.redis_ok:
                    log.warning("redis unavailable", extra={"error": str(exc)})
                self.redis_ok = False
            await asyncio.sleep(self._interval)

    @contextlib.asynccontextmanager
    async def running(
        self, watch: Callable[[asyncio.Task[None]], object] = lambda task: task
    ) -> AsyncIterator[BacklogMonitor]:
        """Refresh in the background while in the block; ``watch`` is given the task
        (Observability.essential)."""
        task = asyncio.create_task(self.run(), name="ingest-backlog")
        watch(task)
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
