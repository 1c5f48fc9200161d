"""Figures for the operator console: viewers over all push processes, ingest rate, tally lag.

Viewers: every push process writes ``{n, ts}`` under its own field of one hash every
``viewers_interval_s``. Redis 7.0 has no per-field expiry, so readers skip fields older
than a few intervals (a crashed process stops counting within seconds) and delete them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common.messages import TALLY_GROUP, Keys

log = logging.getLogger("buzzer.push")

STALE_AFTER_INTERVALS = 3


def viewers_key(keys: Keys) -> str:
    return f"{keys.prefix}:viewers"


class ViewerEntry(msgspec.Struct, frozen=True):
    n: int
    ts: float


_viewer_decoder = msgspec.json.Decoder(ViewerEntry)


async def report_viewers(
    redis: Redis, keys: Keys, instance: str, n: int, interval_s: float, now: float | None = None
) -> int:
    """Record this process's count and return the total over live processes."""
    t = time.time() if now is None else now
    key = viewers_key(keys)
    pipe = redis.pipeline(transaction=False)
    pipe.hset(key, instance, msgspec.json.encode(ViewerEntry(n=n, ts=t)))
    # If every push process dies the hash goes away by itself.
    pipe.pexpire(key, int(interval_s * 1000 * STALE_AFTER_INTERVALS * 10))
    pipe.hgetall(key)
    replies = await pipe.execute()
    fields: dict[bytes, bytes] = replies[2]
    return await _sum_fresh(redis, key, fields, interval_s, t)


async def read_viewers(
    redis: Redis, keys: Keys, interval_s: float, now: float | None = None
) -> int:
    key = viewers_key(keys)
    fields: Any = await redis.hgetall(key)
    return await _sum_fresh(redis, key, fields, interval_s, time.time() if now is None else now)


async def _sum_fresh(
    redis: Redis, key: str, fields: dict[bytes, bytes], interval_s: float, now: float
) -> int:
    total = 0
    stale: list[bytes] = []
    for name, raw in fields.items():
        try:
            entry = _viewer_decoder.decode(raw)
        except msgspec.DecodeError:
            stale.append(name)
            continue
        if now - entry.ts > interval_s * STALE_AFTER_INTERVALS:
            stale.append(name)
        else:
            total += entry.n
    if stale:
        await redis.hdel(key, *stale)
    return total


async def remove_viewers(redis: Redis, keys: Keys, instance: str) -> None:
    await redis.hdel(viewers_key(keys), instance)


@dataclass(slots=True)
class ViewerCount:
    """Viewers over every push process, as last reported to Redis by this one."""

    total: int = 0


@dataclass(frozen=True, slots=True)
class StreamSample:
    at: float
    added: int


class OpsReader:
    """Ingest rate from ``entries-added`` deltas of the votes streams, and the tally's lag.

    Samples are kept for a few seconds so that a console polling every second gets a
    rate over the last ~5 s; the first call takes two samples half a second apart.
    """

    def __init__(self, redis: Redis, keys: Keys, window_s: float = 5.0) -> None:
        self.redis = redis
        self.keys = keys
        self.window = window_s
        self.samples: deque[StreamSample] = deque()
        self._lock = asyncio.Lock()

    async def _streams(self) -> tuple[int, int | None, int]:
        """(entries added, lag, pending) summed over partitions; lag None if unknown."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.xinfo_stream(self.keys.votes(p))
            pipe.xinfo_groups(self.keys.votes(p))
        replies = await pipe.execute(raise_on_error=False)
        added = pending = 0
        lag: int | None = 0
        for i in range(self.keys.partitions):
            info, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(info, ResponseError):
                continue  # no stream yet on this partition
            if isinstance(info, Exception):
                raise info
            added += int(info.get("entries-added") or 0)
            if isinstance(groups, Exception):
                continue
            for g in groups:
                if _s(g.get("name")) != TALLY_GROUP:
                    continue
                pending += int(g.get("pending") or 0)
                glag = g.get("lag")
                if glag is None or lag is None:
                    lag = None
                else:
                    lag += int(glag)
        return added, lag, pending

    async def read(self) -> dict[str, object]:
        async with self._lock:
            added, lag, pending = await self._streams()
            now = time.monotonic()
            if not self.samples or now - self.samples[-1].at > self.window * 2:
                self.samples.clear()
                self.samples.append(StreamSample(now, added))
                await asyncio.sleep(0.5)
                added, lag, pending = await self._streams()
                now = time.monotonic()
            self.samples.append(StreamSample(now, added))
            while len(self.samples) > 2 and now - self.samples[1].at >= self.window:
                self.samples.popleft()
            first = self.samples[0]
            span = now - first.at
            rate = max(0, added - first.added) / span if span > 0 else 0.0
        return {
            "ingest_rate": round(rate, 1),
            "ingest_window_s": round(span, 2),
            "votes_appended": added,
            "tally_lag": lag,
            "tally_pending": pending,
            "tally_backlog": None if lag is None else lag + pending,
        }


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
