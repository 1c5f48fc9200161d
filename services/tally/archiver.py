"""Archives every accepted vote in PostgreSQL exactly once, from each partition's votes
stream as its own consumer group (``archiver``).

A batch is copied (COPY) into a temporary staging table and moved into
``vote_archive`` with ``ON CONFLICT DO NOTHING`` on (poll, device, vote id, stream id),
so a redelivered entry finds its row and adds nothing; entries are acknowledged only
after the commit. A close marker is stored (``archive_partition_closed``) only once
every earlier entry of its partition is archived. The :class:`Sealer` stores the poll's
digest with its frozen result once both are complete (``services.common.archive.seal``),
in a transaction of its own: hashing a large poll's archive must never hold up, or time
out, the writer's or the archiver's commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from services.common.archive import ARCHIVE_COLUMNS, ArchivedVote, ensure_partition, seal
from services.common.db import LazyPool
from services.common.messages import ARCHIVE_GROUP, CloseEntry, Keys, decode_entry
from services.common.settings import TallySettings
from services.tally.metrics import Stats, TallyMetrics
from services.tally.streams import Entry, GroupLoop, sleep_or_stop

log = logging.getLogger("buzzer.tally.archiver")

STREAM = "archive"

# ON COMMIT DELETE ROWS: the staging table lives as long as the pooled connection and
# is empty at the start of every transaction.
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS archive_stage ("
    ' poll_id text COLLATE "C", device text COLLATE "C", vote_id text COLLATE "C",'
    ' stream_id text COLLATE "C", option_key text, count integer, client_ts bigint,'
    " recv_ts bigint, partition integer, row_hash bytea) ON COMMIT DELETE ROWS"
)
_COLS = ", ".join(ARCHIVE_COLUMNS)
_MOVE = (
    f"INSERT INTO vote_archive ({_COLS}) SELECT {_COLS} FROM archive_stage ON CONFLICT DO NOTHING"
)


class Archiver(GroupLoop):
    """Archives every partition's votes; one task per partition.

    :param redis: client
    :param keys: key names
    :param pg: the pool holder
    :param settings: batch size, claim idle time, timeouts
    :param metrics: Prometheus metrics
    :param stats: counts for the shutdown summary
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
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(redis, keys, keys.votes, ARCHIVE_GROUP, settings, metrics, stats)
        self.pg = pg
        self.on_close = on_close
        self._partitions: set[str] = set()
        """Polls whose archive partition this process knows to exist."""

    async def handle(self, p: int, entries: list[Entry]) -> int:
        reader = self.readers[p]
        votes: list[ArchivedVote] = []
        closes: list[tuple[bytes, str]] = []
        drop: list[bytes] = []
        for entry_id, fields in entries:
            try:
                entry = decode_entry(fields)
            except (KeyError, ValueError, UnicodeDecodeError):
                if fields:
                    log.error(
                        "undecodable vote entry, acknowledged without archiving",
                        extra={"partition": p, "entry_id": entry_id.decode()},
                    )
                drop.append(entry_id)
                continue
            if isinstance(entry, CloseEntry):
                closes.append((entry_id, entry.poll))
                continue
            votes.append(
                ArchivedVote(
                    entry.poll,
                    entry.vote_id,
                    entry.device,
                    entry.option,
                    entry.count,
                    entry.client_ts,
                    entry.recv_ts,
                    p,
                    entry_id.decode(),
                )
            )
        if drop:
            await reader.ack(drop)
            self.metrics.dropped.labels(STREAM).inc(len(drop))
            self.stats.dropped += len(drop)
        in_batch = {v.stream_id.encode() for v in votes}
        ready_closes: list[tuple[bytes, str]] = []
        for entry_id, poll in closes:
            if not await reader.only_batch_before(entry_id, in_batch):
                # The close completes this partition's archive of the poll: every vote
                # before it must be in PostgreSQL first, in this commit or an earlier one.
                self.retry_soon(p)
                self.metrics.deferred.labels(STREAM).inc()
                log.info(
                    "archive close deferred: earlier entries still pending",
                    extra={"partition": p, "entry_id": entry_id.decode(), "poll": poll},
                )
                continue
            ready_closes.append((entry_id, poll))
            in_batch.add(entry_id)
        if not votes and not ready_closes:
            return 0
        fresh = await self.commit(p, votes, [poll for _, poll in ready_closes])
        await reader.ack([v.stream_id for v in votes] + [i.decode() for i, _ in ready_closes])
        return fresh

    async def commit(self, p: int, votes: list[ArchivedVote], closes: list[str]) -> int:
        """One transaction: stage by COPY, move what is new, record closes, seal digests.
        Returns the votes newly archived."""
        start = time.perf_counter()
        async with asyncio.timeout(self.settings.pg_timeout_s):
            pool = await self.pg.pool()
            async with pool.acquire() as conn:
                for poll in {v.poll for v in votes} - self._partitions:
                    await ensure_partition(conn, poll)
                    self._partitions.add(poll)
                async with conn.transaction():
                    fresh = 0
                    if votes:
                        await conn.execute(_STAGE)
                        await conn.copy_records_to_table(
                            "archive_stage",
                            records=[v.record() for v in votes],
                            columns=ARCHIVE_COLUMNS,
                        )
                        status = await conn.execute(_MOVE)
                        fresh = int(status.rsplit(" ", 1)[-1])
                    for poll in sorted(closes):
                        await conn.execute(
                            "INSERT INTO archive_partition_closed(poll_id, partition)"
                            " VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            poll,
                            p,
                        )
        if closes:
            self.on_close()
        self.metrics.batch_size.labels(STREAM).observe(len(votes) + len(closes))
        self.stats.archived += fresh
        log.debug(
            "archived",
            extra={"partition": p, "votes": fresh, "s": round(time.perf_counter() - start, 4)},
        )
        return fresh

    def on_error(self, p: int, exc: Exception) -> None:
        # What was read stays pending and comes back through recovery: an outage of
        # PostgreSQL delays the archive, and the backlog bound keeps the streams finite.
        self.retry_soon(p)
        self.stats.archive_errors += 1
        log.warning(
            "archive write failed, will retry",
            extra={"partition": p, "error": f"{type(exc).__name__}: {exc}"[:300]},
        )

    async def flush(self, p: int) -> None:
        """Archive what is already delivered to us before the process stops."""
        await self.drain_own(p)


class Sealer:
    """Stores the digest of every poll whose result is frozen and whose archive is
    complete; woken by a freeze or an archive close, and every ``interval_s`` anyway (so
    a process that died between a commit and its seal is made good by any other).

    :param pg: the pool holder
    :param partitions: the fallback count of partitions for polls opened without one
    :param interval_s: the longest wait between two looks
    :param timeout_s: upper bound on hashing one poll's archive
    """

    def __init__(self, pg: LazyPool, partitions: int, interval_s: float, timeout_s: float) -> None:
        self.pg = pg
        self.partitions = partitions
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Look now: a result was frozen, an archive closed, or the process is stopping."""
        self._wake.set()

    async def seal_pending(self) -> list[str]:
        """Seal what can be sealed now; the polls sealed by this call."""
        pool = await self.pg.pool()
        # Only the polls whose every archive partition is closed: a poll frozen before
        # the archive existed (migration 0004) never will be, and is not worth a
        # transaction on every look. ``seal`` checks again under the poll's lock.
        polls = await pool.fetch(
            "SELECT id FROM polls p WHERE final AND archive_digest IS NULL"
            " AND (SELECT count(*) FROM archive_partition_closed c WHERE c.poll_id = p.id)"
            " >= coalesce(p.partitions, $1) ORDER BY id",
            self.partitions,
        )
        sealed = []
        for row in polls:
            async with (
                asyncio.timeout(self.timeout_s),
                pool.acquire() as conn,
                conn.transaction(),
            ):
                digest = await seal(conn, row["id"], self.partitions)
            if digest:
                log.info("archive digest sealed", extra={"poll": row["id"], "digest": digest})
                sealed.append(row["id"])
        return sealed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.seal_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "sealing archive digests failed, will retry",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            # Woken early by a freeze, an archive close or the stop (see ``poke``).
            await sleep_or_stop(self._wake, self.interval_s)
