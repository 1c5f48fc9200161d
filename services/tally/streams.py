"""Consumer-group plumbing and the one stream loop shared by the vote consumer, the
PostgreSQL writer and the archiver."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common.messages import Keys, parse_id
from services.common.settings import TallySettings
from services.tally.metrics import Stats, TallyMetrics

log = logging.getLogger("buzzer.tally.streams")

Fields = dict[bytes, bytes]
Entry = tuple[bytes, Fields]
"""(id, fields); fields are empty for an entry deleted from the stream while pending."""


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def is_nogroup(exc: BaseException) -> bool:
    # The group vanishes when Redis restarts empty; the loops recreate it and go on.
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _entries(resp: Any) -> list[Entry]:
    """Normalize XREADGROUP's reply for one stream (redis-py shapes differ by protocol)."""
    if not resp:
        return []
    streams = resp.values() if isinstance(resp, dict) else (entries for _, entries in resp)
    out: list[Entry] = []
    for entries in streams:
        for entry_id, fields in entries or []:
            if entry_id is not None:
                out.append((entry_id, fields or {}))
    return out


@dataclass(frozen=True, slots=True)
class GroupReader:
    """One consumer's view of one stream in one group.

    :param redis: client
    :param stream: stream key
    :param group: consumer group
    :param consumer: this consumer's name in the group
    """

    redis: Redis
    stream: str
    group: str
    consumer: str

    async def ensure(self) -> None:
        await ensure_group(self.redis, self.stream, self.group)

    async def read_new(self, count: int, block_ms: int | None) -> list[Entry]:
        resp = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return _entries(resp)

    async def own_pending(self, count: int) -> AsyncIterator[list[Entry]]:
        """This consumer's pending entries, page by page, oldest first."""
        after: bytes | str = "0"
        while True:
            page = _entries(
                await self.redis.xreadgroup(
                    self.group, self.consumer, {self.stream: after}, count=count
                )
            )
            if not page:
                return
            yield page
            after = page[-1][0]

    async def claim(
        self, min_idle_ms: int, count: int
    ) -> AsyncIterator[tuple[list[Entry], list[bytes]]]:
        """Take over entries pending longer than ``min_idle_ms`` under any consumer.

        Yields (claimed entries, ids of claimed entries deleted from the stream).
        """
        cursor: bytes | str = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start_id=cursor, count=count
            )
            cursor = reply[0]
            claimed = [(i, f or {}) for i, f in reply[1] if i is not None]
            deleted = list(reply[2]) if len(reply) > 2 else []
            if claimed or deleted:
                yield claimed, deleted
            if parse_id(cursor) == (0, 0):
                return

    async def recover(
        self, count: int, min_idle_ms: int
    ) -> AsyncIterator[tuple[list[Entry], bool, int]]:
        """What to process again, page by page: this consumer's own pending entries, then
        the entries of consumers idle longer than ``min_idle_ms``, claimed for this one.

        Yields (entries, claimed, dropped): ``dropped`` counts claimed ids whose entries
        were deleted from the stream; they are acknowledged here (XAUTOCLAIM already
        removed them from the pending list on Redis 7; the ack covers servers that don't).
        """
        async for page in self.own_pending(count):
            yield page, False, 0
        async for claimed, deleted in self.claim(min_idle_ms, count):
            if deleted:
                await self.ack(deleted)
            yield claimed, True, len(deleted)

    async def only_batch_before(self, entry_id: bytes, in_batch: set[bytes]) -> bool:
        """Whether a close marker may complete its partition now: ``entry_id`` is pending
        to this consumer on the node that answers, and every earlier entry pending there
        is in ``in_batch`` (committed together with it).

        The marker itself is asked for too, so that the answer comes from a node that
        saw its delivery: a promoted replica behind in deliveries shows earlier entries
        as unread, not pending, and would let the close through before them."""
        rows = await self.redis.xpending_range(
            self.stream, self.group, min="-", max=entry_id, count=len(in_batch) + 2
        )
        if not rows:
            return False
        *earlier, last = rows
        consumer = last["consumer"]
        if isinstance(consumer, bytes):
            consumer = consumer.decode()
        return (
            last["message_id"] == entry_id
            and consumer == self.consumer
            and all(e["message_id"] in in_batch for e in earlier)
        )

    async def ack(self, ids: list[bytes] | list[str]) -> int:
        if not ids:
            return 0
        return int(await self.redis.xack(self.stream, self.group, *ids))


class GroupLoop(abc.ABC):
    """The one loop of a consumer group over every partition's stream, shared by the vote
    consumer, the PostgreSQL writer and the archiver: per partition, recover (own pending,
    then claims via XAUTOCLAIM), read new entries, hand them to :meth:`handle`, repeat.

    Acknowledging is :meth:`handle`'s job, and only after the effect is durable
    (``apply.lua`` acks as it counts; the writer acks after the commit), so whatever a
    failed or interrupted turn held stays pending and comes back through recovery.

    :param redis: client for the partitions' streams
    :param keys: key names; one reader per partition, in :attr:`readers` (tests may swap
        one for a faulty reader)
    :param stream: the stream of a partition (``keys.votes``, ``keys.applied``)
    :param group: the consumer group; the consumer is ``settings.consumer``
    :param settings: batch size, block time, claim idle time, recovery interval
    :param metrics: Prometheus metrics
    :param stats: counts for the shutdown summary
    """

    stream_label: ClassVar[str]
    """The metrics label of the stream."""
    retry_s: ClassVar[float] = 0.1
    """Earliest recovery after a turn asked for a retry."""
    error_backoff_s: ClassVar[float] = 0.5

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        stream: Callable[[int], str],
        group: str,
        settings: TallySettings,
        metrics: TallyMetrics,
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.readers = [
            GroupReader(redis, stream(p), group, settings.consumer) for p in range(keys.partitions)
        ]
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self._retry = [False] * keys.partitions

    async def ensure_groups(self) -> None:
        for r in self.readers:
            await r.ensure()

    def retry_soon(self, p: int) -> None:
        """Recover partition ``p`` after :attr:`retry_s` rather than the full interval:
        something is pending that a later turn can finish (a deferred close, a failed write)."""
        self._retry[p] = True

    @abc.abstractmethod
    async def handle(self, p: int, entries: list[Entry]) -> int:
        """Process and acknowledge what can be; safe for any entries, any number of times.
        Returns how many entries took effect."""

    def on_error(self, p: int, exc: Exception) -> None:
        """A turn failed (not a missing group); what was read stays pending."""
        log.exception("stream loop error, retrying", extra={"partition": p})

    async def recover(self, p: int) -> int:
        """Re-process this consumer's own pending entries, then claim those of dead ones."""
        self._retry[p] = False
        done = 0
        async for page, claimed, dropped in self.readers[p].recover(
            self.settings.batch_size, self.settings.claim_idle_ms
        ):
            if claimed or dropped:
                self.metrics.recovered(
                    self.stats, self.stream_label, p, len(page) if claimed else 0, dropped
                )
            if page:
                done += await self.handle(p, page)
        return done

    async def run_partition(self, p: int, stop: asyncio.Event) -> None:
        """Read, handle, repeat until ``stop``; the batch in hand is always finished."""
        last_recover = 0.0
        while not stop.is_set():
            reader = self.readers[p]
            try:
                now = time.monotonic()
                if now - last_recover >= self.settings.recover_interval_s or (
                    self._retry[p] and now - last_recover >= self.retry_s
                ):
                    last_recover = now
                    await self.recover(p)
                entries = await reader.read_new(self.settings.batch_size, self.settings.block_ms)
                if entries:
                    await self.handle(p, entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_nogroup(exc):
                    log.warning(
                        "consumer group missing, recreating",
                        extra={"partition": p, "stream": reader.stream, "group": reader.group},
                    )
                    try:
                        await reader.ensure()
                    except Exception:
                        log.exception("recreating consumer group failed")
                    continue
                self.on_error(p, exc)
                await sleep_or_stop(stop, self.error_backoff_s)
                if self._retry[p]:
                    # Keep our pending list bounded while the failure lasts: retry it
                    # before taking anything new.
                    last_recover = 0.0

    async def drain_own(self, p: int) -> None:
        """Process this consumer's own pending entries (no claims, no new entries)."""
        async for page in self.readers[p].own_pending(self.settings.batch_size):
            await self.handle(p, page)
