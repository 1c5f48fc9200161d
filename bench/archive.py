"""archived votes/s on one core vs bare COPY, and vs one ingest core's rate.

``buzzer bench archive`` appends ``--votes`` votes to the partitions' streams (as ingest
does, without the HTTP part), then times, in this one process pinned to core 0:
(a) the ceiling: the same rows COPYed in the same batches into an unindexed temporary
table; (b) the archiver (``services/tally/archiver.py``) reading the streams as its
consumer group and archiving every vote (staging COPY, ``ON CONFLICT DO NOTHING`` into
the partitioned, indexed ``vote_archive``, acknowledgement). Then it checks that the
archive holds every vote once. With ``--ingest-seconds`` > 0 it first runs
``buzzer bench ingest`` for one core's vote rate, the rate one archiver core must keep
up with. Everything runs in a database and key prefix of its own, removed afterwards.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.tools import jsonline
from bench.tools.pgdb import drop_database

BATCH = 1000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--votes", type=int, default=50_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--ingest-seconds",
        type=float,
        default=4,
        help="length of the bench ingest run giving one ingest core's rate (0: skip it)",
    )
    p.add_argument("--database-url", help="PostgreSQL server URL (default: DATABASE_URL)")


def _ingest_rate(seconds: float) -> float | None:
    if seconds <= 0:
        return None
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "buzzer",
            "bench",
            "ingest",
            "--seconds",
            str(seconds),
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=seconds * 4 + 120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode not in (0, 1) or not lines:
        print(f"bench ingest failed: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    return float(json.loads(lines[-1])["vote_rps"])


def run(args: argparse.Namespace) -> int:
    ingest_rps = _ingest_rate(args.ingest_seconds)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {0})  # one archiver core
    if args.database_url:
        server = str(args.database_url)
    else:
        from services.common.settings import CommonSettings

        server = CommonSettings().database_url.get_secret_value()
    result = asyncio.run(_bench(server, args.votes, args.partitions))
    result["ingest_vote_rps"] = ingest_rps
    keeps_up = ingest_rps is None or result["archived_per_s"] >= ingest_rps
    result["keeps_up_with_ingest"] = keeps_up if ingest_rps is not None else None
    print(f"COPY into an unindexed temp table (ceiling): {result['copy_per_s']:.0f} rows/s")
    print(f"archiver, one core:                          {result['archived_per_s']:.0f} votes/s")
    print(f"ratio archiver/ceiling: {result['ratio']:.3f}")
    if ingest_rps is not None:
        print(
            f"one ingest core: {ingest_rps:.0f} votes/s -> "
            f"{'the archive keeps up' if keeps_up else 'THE ARCHIVE FALLS BEHIND'}"
        )
    print(
        f"archived {result['archived']} of {result['votes']} votes"
        f" -> {'exact' if result['exact'] else 'MISMATCH'}"
    )
    print(jsonline.dumps({"bench": "archive", **result}))
    return 0 if result["exact"] and keeps_up else 1


async def _bench(server: str, votes: int, partitions: int) -> dict[str, Any]:
    import asyncpg
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry
    from pydantic import SecretStr

    from services.common.archive import ARCHIVE_COLUMNS, ArchivedVote
    from services.common.db import LazyPool, migrate
    from services.common.messages import Keys, VoteEntry
    from services.common.settings import TallySettings
    from services.tally.archiver import Archiver
    from services.tally.metrics import Stats, TallyMetrics

    name = f"buzzer_bench_archive_{uuid.uuid4().hex[:8]}"
    dsn = server.rsplit("/", 1)[0] + "/" + name
    settings = TallySettings(
        database_url=SecretStr(dsn),
        key_prefix=f"bench{uuid.uuid4().hex[:8]}",
        partitions=partitions,
        consumer="bench",
        batch_size=BATCH,
    )
    keys: Keys = settings.keys()
    redis = aioredis.from_url(settings.redis_url)
    await migrate(dsn)
    pg = LazyPool(dsn, partitions)
    try:
        poll = "bench-poll"
        now = int(time.time() * 1000)
        by_partition: dict[int, list[ArchivedVote]] = {p: [] for p in range(partitions)}
        for i in range(0, votes, BATCH):
            pipe = redis.pipeline(transaction=False)
            for j in range(i, min(votes, i + BATCH)):
                device = uuid.uuid4().hex
                entry = VoteEntry(poll, f"o{j % 8}", 1 + j % 3, device, str(uuid.uuid4()), now, now)
                pipe.xadd(keys.votes(keys.partition_of(device)), entry.to_fields())  # type: ignore[arg-type]
                by_partition[keys.partition_of(device)].append(
                    ArchivedVote(
                        poll,
                        entry.vote_id,
                        device,
                        entry.option,
                        entry.count,
                        now,
                        now,
                        keys.partition_of(device),
                        f"{now}-{j}",
                    )
                )
            await pipe.execute()

        # The ceiling: the same rows, the same batches, COPY alone.
        pool = await pg.pool()
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TEMP TABLE ceiling (poll_id text, device text, vote_id text,"
                " stream_id text, option_key text, count integer, client_ts bigint,"
                " recv_ts bigint, partition integer, row_hash bytea)"
            )
            start = time.perf_counter()
            for rows in by_partition.values():
                for i in range(0, len(rows), BATCH):
                    async with conn.transaction():
                        await conn.copy_records_to_table(
                            "ceiling",
                            records=[v.record() for v in rows[i : i + BATCH]],
                            columns=ARCHIVE_COLUMNS,
                        )
            copy_s = time.perf_counter() - start

        archiver = Archiver(redis, keys, pg, settings, TallyMetrics(CollectorRegistry()), Stats())
        await archiver.ensure_groups()

        async def drain(p: int) -> int:
            done = 0
            while entries := await archiver.readers[p].read_new(BATCH, None):
                done += await archiver.handle(p, entries)
            return done

        # One task per partition, as in the tally process: the event loop (one core)
        # overlaps the partitions' round trips to Redis and PostgreSQL.
        start = time.perf_counter()
        archived = sum(await asyncio.gather(*(drain(p) for p in range(partitions))))
        archive_s = time.perf_counter() - start
        conn2: asyncpg.Connection
        async with pool.acquire() as conn2:
            rows_in = int(await conn2.fetchval("SELECT count(*) FROM vote_archive"))
            distinct = int(
                await conn2.fetchval("SELECT count(DISTINCT (device, vote_id)) FROM vote_archive")
            )
        copy_rate = votes / copy_s if copy_s else 0.0
        archive_rate = votes / archive_s if archive_s else 0.0
        return {
            "votes": votes,
            "archived": archived,
            "exact": archived == rows_in == distinct == votes,
            "copy_per_s": round(copy_rate, 1),
            "archived_per_s": round(archive_rate, 1),
            "ratio": round(archive_rate / copy_rate, 3) if copy_rate else 0.0,
            "batch": BATCH,
        }
    finally:
        await pg.close()
        batch = [k async for k in redis.scan_iter(match=f"{keys.prefix}:*", count=1000)]
        if batch:
            await redis.delete(*batch)
        await redis.aclose()
        await drop_database(server, name)
