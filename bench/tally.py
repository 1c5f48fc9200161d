"""votes per tally-consumer core, rows per PostgreSQL core, archived votes per core.

``buzzer bench tally`` measures the tiers behind Redis that ``bench cost`` had only
estimates for. Against a throwaway ``redis-server`` (AOF, ``appendfsync always``, pinned
to ``--redis-cpu``) and a throwaway PostgreSQL database (migrated, dropped afterwards),
each round fills the partitions' votes streams with ``--votes`` votes through
``vote_batch.lua`` as ingest appends them (pipelined), then drains them with the tally's
own code, one role at a time, each in a process of its own pinned to ``--tally-cpu``:

1. consumer: ``VotesConsumer`` (``apply.lua``) and the publisher, one task per
   partition as in the tally process, until every vote is applied;
2. writer: ``PgWriter`` copies the outbox the consumer left into PostgreSQL. It reads
   ``--writer-batch`` outbox entries per commit (default 1): the consumer wrote one
   entry per apply batch of up to 1,000 votes, and in production the writer commits
   about that many votes at a time (100,000 votes/s over 8 partitions at 20 commits/s
   each is 625 votes per commit), never a backlog of hundreds in one transaction;
3. archiver: ``Archiver`` copies every vote into ``vote_archive``.

Per role: wall time, the process's CPU over the drain, startup excluded (``/proc``:
the threads' ``schedstat`` run time, else ``stat`` utime + stime), Redis's CPU
(``INFO CPU``) and PostgreSQL's: the summed ``/proc`` CPU of the database's backends
(``pg_stat_activity``), so the server's background processes (WAL writer, checkpointer)
are left out. Rows are counted as the
planner counts them: each commit's upserted rows (totals and rate buckets) plus
``postgres_commit_rows`` for the commit itself, so ``postgres_rows_per_cpu_s`` replaces
the planner's estimate ``postgres_rows_per_vcpu_s`` directly.

Every figure is the median over ``--rounds`` rounds, with its spread. The profile goes to
``--out`` (lb/profiles/tally.json, read by ``bench cost``). The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.tools import jsonline
from bench.tools.pgdb import drop_database
from bench.tools.proc import cpu_seconds
from bench.tools.redisproc import redis_server
from bench.tools.rounds import summarise
from bench.tools.wrk import pinned

TALLY_PATH = Path(__file__).resolve().parents[1] / "lb" / "profiles" / "tally.json"
CALL = 100
"""Votes per vote_batch.lua call in the prefill (ingest coalesces about as many)."""
PIPELINE = 20
"""Script calls per pipeline in the prefill."""
STALL_S = 30.0
"""A role that makes no progress for this long is stopped and the round reported failed."""

# Figures of each round, by role: the key in the profile and how it is computed.
FIGURES: dict[str, str] = {
    "tally_votes_per_cpu_s": "consumer: votes applied per consumer-process CPU-second",
    "tally_votes_per_s": "consumer: votes applied per second of wall time",
    "redis_applied_per_cpu_s": "consumer: votes applied per Redis CPU-second (apply.lua)",
    "pgwriter_votes_per_cpu_s": "writer: votes written per writer-process CPU-second",
    "pgwriter_rows_per_cpu_s": "writer: rows per writer-process CPU-second",
    "postgres_rows_per_cpu_s": "writer: rows (upserts + commit cost) per PostgreSQL CPU-second",
    "postgres_commits_per_cpu_s": "writer: commits per PostgreSQL CPU-second",
    "postgres_votes_per_cpu_s": "writer: votes written per PostgreSQL CPU-second",
    "archiver_votes_per_cpu_s": "archiver: votes archived per archiver-process CPU-second",
    "postgres_archived_per_cpu_s": "archiver: votes archived per PostgreSQL CPU-second",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--votes", type=int, default=200_000, help="votes per round (default 200000)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--options", type=int, default=8, help="options of the poll voted on")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument(
        "--writer-batch",
        type=int,
        default=1,
        help="outbox entries the writer reads per commit (default 1: about 1,000 votes)",
    )
    p.add_argument("--tally-cpu", type=int, default=0, help="core of the tally process")
    p.add_argument("--redis-cpu", type=int, default=1, help="core of redis-server")
    p.add_argument("--database-url", help="PostgreSQL server URL (default: DATABASE_URL)")
    p.add_argument(
        "--out",
        type=jsonline.out_path,
        default=TALLY_PATH,
        help=f"where `bench cost` reads the figures (default {TALLY_PATH}; '' to skip)",
    )


# -- the parent: servers, database, prefill, rounds -----------------------------------------


def run(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        print("bench tally: redis-server not found (Debian package redis-server)")
        return 2
    if args.database_url:
        server = str(args.database_url)
    else:
        from services.common.settings import CommonSettings

        server = CommonSettings().database_url.get_secret_value()
    name = f"buzzer_bench_tally_{uuid.uuid4().hex[:8]}"
    dsn = server.rsplit("/", 1)[0] + "/" + name
    two = (os.cpu_count() or 1) > 1
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-bench-tally-"))
    rounds: list[dict[str, Any]] = []
    try:
        with redis_server(tmp, cpu=args.redis_cpu if two else None) as port:
            redis_url = f"redis://127.0.0.1:{port}/0"
            asyncio.run(_migrate(dsn))
            for rnd in range(args.rounds):
                r = _round(args, redis_url, dsn, rnd)
                rounds.append(r)
                print(
                    f"r{rnd} consumer {r['tally_votes_per_cpu_s']:>9,.0f} votes/CPU-s"
                    f" ({r['tally_votes_per_s']:,.0f}/s wall)"
                    f"  writer {r['pgwriter_votes_per_cpu_s']:>9,.0f} votes/CPU-s,"
                    f" postgres {r['postgres_rows_per_cpu_s']:>7,.0f} rows/CPU-s"
                    f"  archiver {r['archiver_votes_per_cpu_s']:>7,.0f} votes/CPU-s,"
                    f" postgres {r['postgres_archived_per_cpu_s']:>7,.0f}/CPU-s"
                    f"  {'exact' if r['exact'] else 'MISMATCH'}",
                    flush=True,
                )
    finally:
        asyncio.run(drop_database(server, name))
        shutil.rmtree(tmp, ignore_errors=True)

    result = summary(rounds, args)
    print()
    for key, what in FIGURES.items():
        s = summarise([r[key] for r in rounds])
        print(s.line(f"{what:<62}", ",.0f"))
    print(
        f"votes per writer commit: {result['votes_per_commit']:,.0f};"
        f" rows per commit: {result['rows_per_commit']:,.1f}"
        f" (+ {result['commit_rows']:g} for the commit)"
    )
    exact = all(r["exact"] for r in rounds)
    print(
        "every vote applied once, in PostgreSQL's totals and in the archive"
        if exact
        else "MISMATCH: see the rounds' counts in the JSON"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(jsonline.dumps(result, indent=2) + "\n")
        print(f"profile written to {args.out}")
    print(jsonline.dumps(result))
    return 0 if exact else 1


def summary(rounds: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The profile: each figure's median, its rounds' summary, and how it was measured."""
    from lb.planner import MEASURED_DEFAULTS

    out: dict[str, Any] = {
        "bench": "tally",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "votes": args.votes,
        "partitions": args.partitions,
        "options": args.options,
        "writer_batch": args.writer_batch,
        "rounds": len(rounds),
        "commit_rows": MEASURED_DEFAULTS.postgres_commit_rows,
        "basis": "per CPU-second of the role's process (pinned to one core), of redis-server"
        " (INFO CPU) or of the database's PostgreSQL backends (/proc); drained backlogs",
    }
    for key in FIGURES:
        s = summarise([r[key] for r in rounds])
        out[key] = round(s.median, 1)
        out[key + "_rounds"] = s.as_dict()
    out["votes_per_commit"] = round(
        summarise([r["votes"] / max(r["writer"]["commits"], 1) for r in rounds]).median, 1
    )
    out["rows_per_commit"] = round(
        summarise([r["writer"]["upserts"] / max(r["writer"]["commits"], 1) for r in rounds]).median,
        2,
    )
    out["exact"] = all(r["exact"] for r in rounds)
    out["round_details"] = rounds
    return out


async def _migrate(dsn: str) -> None:
    from services.common.db import migrate

    await migrate(dsn)


def _round(args: argparse.Namespace, redis_url: str, dsn: str, rnd: int) -> dict[str, Any]:
    prefix = f"benchtally{uuid.uuid4().hex[:6]}"
    poll = f"bench-{rnd}-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    taps = asyncio.run(
        _prefill(redis_url, dsn, prefix, args.partitions, poll, args.options, args.votes)
    )
    prefill_s = time.monotonic() - t0
    common = {
        "redis_url": redis_url,
        "dsn": dsn,
        "prefix": prefix,
        "partitions": args.partitions,
    }
    cpu = args.tally_cpu if (os.cpu_count() or 1) > 1 else None
    consumer = _role(cpu, {**common, "role": "consumer", "expect": args.votes})
    outbox = asyncio.run(_outbox_len(redis_url, prefix, args.partitions))
    writer = _role(cpu, {**common, "role": "writer", "expect": outbox, "batch": args.writer_batch})
    archiver = _role(cpu, {**common, "role": "archiver", "expect": args.votes})
    counted, archived = asyncio.run(_check(dsn, poll))
    n = args.votes
    rows = writer["upserts"] + writer["commits"] * _commit_rows()
    return {
        "votes": n,
        "taps": taps,
        "prefill_s": round(prefill_s, 2),
        "outbox_entries": outbox,
        "consumer": consumer,
        "writer": writer,
        "archiver": archiver,
        "pg_totals": counted,
        "pg_archived": archived,
        "exact": consumer["done"] == n and counted == taps and archived == n,
        "tally_votes_per_cpu_s": _per(consumer["done"], consumer["cpu_s"]),
        "tally_votes_per_s": _per(consumer["done"], consumer["wall_s"]),
        "redis_applied_per_cpu_s": _per(consumer["done"], consumer["redis_cpu_s"]),
        "pgwriter_votes_per_cpu_s": _per(n, writer["cpu_s"]),
        "pgwriter_rows_per_cpu_s": _per(rows, writer["cpu_s"]),
        "postgres_rows_per_cpu_s": _per(rows, writer["pg_cpu_s"]),
        "postgres_commits_per_cpu_s": _per(writer["commits"], writer["pg_cpu_s"]),
        "postgres_votes_per_cpu_s": _per(n, writer["pg_cpu_s"]),
        "archiver_votes_per_cpu_s": _per(archiver["done"], archiver["cpu_s"]),
        "postgres_archived_per_cpu_s": _per(archiver["done"], archiver["pg_cpu_s"]),
    }


def _per(n: float, seconds: float) -> float:
    # Where CPU is read in clock ticks (10 ms), a role may use less than one: reported
    # as 0, never as an infinite rate.
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _commit_rows() -> float:
    from lb.planner import MEASURED_DEFAULTS

    return MEASURED_DEFAULTS.postgres_commit_rows


def _role(cpu: int | None, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one role in a process of its own (pinned), and return what it measured."""
    argv = [sys.executable, "-m", "bench.tally", json.dumps(cfg)]
    if cpu is not None:
        argv = pinned(cpu, argv)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"bench tally {cfg['role']} failed (exit {proc.returncode}): {proc.stderr[-1500:]}"
        )
    out: dict[str, Any] = json.loads(lines[-1])
    return out


async def _prefill(
    redis_url: str,
    dsn: str,
    prefix: str,
    partitions: int,
    poll: str,
    options: int,
    votes: int,
) -> int:
    """Define and open the poll (PostgreSQL rows, Redis definition and state, as the admin
    API leaves them), then append ``votes`` votes through vote_batch.lua; returns the taps."""
    import asyncpg

    from services.common.messages import Keys, OptionDef, PollDef, VoteEntry
    from services.common.polls import open_poll_redis, publish_poll
    from services.common.redisconn import connect
    from services.common.scripts import (
        Scripts,
        VoteOutcome,
        VoteRules,
        decode_vote_batch,
        vote_batch_args,
        vote_call,
    )

    keys = Keys(prefix=prefix, partitions=partitions)
    opts = [OptionDef(key=f"o{i}", label=f"Option {i}") for i in range(options)]
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO shows(id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                "bench-show",
                "Bench show",
            )
            await conn.execute(
                "INSERT INTO polls(id, show_id, title, state, partitions, opened_at)"
                " VALUES ($1, $2, $3, 'open', $4, now())",
                poll,
                "bench-show",
                "Bench poll",
                partitions,
            )
            await conn.executemany(
                "INSERT INTO options(poll_id, key, label, position) VALUES ($1, $2, $3, $4)",
                [(poll, o.key, o.label, i) for i, o in enumerate(opts)],
            )
            await conn.executemany(
                "INSERT INTO totals(poll_id, option_key, count) VALUES ($1, $2, 0)",
                [(poll, o.key) for o in opts],
            )
    finally:
        await conn.close()
    redis = connect(redis_url)
    try:
        pdef = PollDef(
            id=poll,
            show_id="bench-show",
            title="Bench poll",
            options=opts,
            max_votes_per_device=None,
            max_count=1_000_000,
            state="open",
        )
        await publish_poll(redis, keys, pdef)
        await open_poll_redis(redis, keys, poll)
        scripts = Scripts.register(redis)
        rules = VoteRules()
        taps = 0
        pending: dict[int, list[Any]] = {p: [] for p in range(partitions)}
        calls: list[tuple[list[str], list[str | int]]] = []

        async def flush_calls() -> None:
            pipe = redis.pipeline(transaction=False)
            for ks, argv in calls:
                await scripts.vote_batch(keys=ks, args=argv, client=pipe)
            for reply in await pipe.execute():
                for result in decode_vote_batch(reply):
                    if result.outcome is not VoteOutcome.ACCEPTED:
                        raise RuntimeError(f"prefill vote refused: {result}")
            calls.clear()

        for i in range(votes):
            now = int(time.time() * 1000)
            device = uuid.uuid4().hex
            count = 1 + i % 3
            taps += count
            entry = VoteEntry(poll, f"o{i % options}", count, device, uuid.uuid4().hex, now, now)
            p = keys.partition_of(device)
            pending[p].append(vote_call(keys, p, entry, rules))
            if len(pending[p]) >= CALL:
                calls.append(vote_batch_args(keys, p, pending[p]))
                pending[p] = []
                if len(calls) >= PIPELINE:
                    await flush_calls()
        for p, left in pending.items():
            if left:
                calls.append(vote_batch_args(keys, p, left))
        if calls:
            await flush_calls()
        return taps
    finally:
        await redis.aclose()


async def _outbox_len(redis_url: str, prefix: str, partitions: int) -> int:
    from services.common.messages import Keys
    from services.common.redisconn import connect

    keys = Keys(prefix=prefix, partitions=partitions)
    redis = connect(redis_url)
    try:
        return sum([int(await redis.xlen(keys.applied(p))) for p in range(partitions)])
    finally:
        await redis.aclose()


async def _check(dsn: str, poll: str) -> tuple[int, int]:
    """(taps in PostgreSQL's totals, votes in the archive) of the round's poll."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        counted = await conn.fetchval(
            "SELECT coalesce(sum(count), 0) FROM totals WHERE poll_id = $1", poll
        )
        archived = await conn.fetchval("SELECT count(*) FROM vote_archive WHERE poll_id = $1", poll)
        return int(counted), int(archived)
    finally:
        await conn.close()


# -- the child: one role of the tally, measured ---------------------------------------------


def proc_cpu(pid: int | str = "self") -> float:
    """CPU-seconds of a process so far, from /proc: the nanosecond run time of its threads
    (``schedstat``) where the kernel keeps it, else utime + stime (``stat``). Ticks are
    10 ms, coarse for a writer that spends a tenth of a second on 200 commits."""
    base = Path(f"/proc/{pid}")
    if (base / "schedstat").exists():
        total = 0
        for task in (base / "task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
        return total / 1e9
    return cpu_seconds(pid)


async def _redis_cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _pg_cpu(pool: Any) -> dict[int, float]:
    """CPU-seconds of each backend of the pool's database (the role's connections)."""
    out: dict[int, float] = {}
    for row in await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    ):
        try:
            out[int(row["pid"])] = proc_cpu(int(row["pid"]))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone, or not this machine's: counted as nothing
    return out


async def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry
    from pydantic import SecretStr

    from services.common.db import LazyPool
    from services.common.redisconn import connect
    from services.common.scripts import Scripts
    from services.common.settings import TallySettings
    from services.tally.archiver import Archiver
    from services.tally.consumer import VotesConsumer
    from services.tally.metrics import Stats, TallyMetrics
    from services.tally.pgwriter import PgWriter
    from services.tally.publisher import Publisher
    from services.tally.store import CommitResult, Outboxed

    role: str = cfg["role"]
    settings = TallySettings(
        redis_url=cfg["redis_url"],
        database_url=SecretStr(cfg["dsn"]),
        key_prefix=cfg["prefix"],
        partitions=cfg["partitions"],
        consumer=f"bench-{role}",
        **({"batch_size": cfg["batch"]} if cfg.get("batch") else {}),
    )
    keys = settings.keys()
    redis = connect(settings.redis_url)
    # Every connection opened before the clock starts: the backends then exist to be
    # measured, and connecting is not charged to the writes.
    pg = LazyPool(
        settings.database_url.get_secret_value(), settings.pg_pool_size, settings.pg_pool_size
    )
    stats = Stats()
    metrics = TallyMetrics(CollectorRegistry())
    scripts = Scripts.register(redis)
    stop = asyncio.Event()
    counts = {"commits": 0, "upserts": 0}

    class CountingWriter(PgWriter):
        """The real writer; counts each commit's upserted rows as the planner does."""

        async def commit(self, p: int, entries: list[Outboxed]) -> CommitResult:
            result = await super().commit(p, entries)
            deltas = [d for e in entries for d in e.batch.deltas]
            counts["commits"] += 1
            counts["upserts"] += len({(d.poll, d.option) for d in deltas}) + len(
                {(d.poll, d.option, d.sec) for d in deltas}
            )
            return result

    tasks: list[Callable[[], Any]] = []
    progress: Callable[[], int]
    uses_pg = role != "consumer"
    if role == "consumer":
        publisher = Publisher(redis, keys, settings.publish_interval_ms, metrics, stats)
        loop: VotesConsumer | PgWriter | Archiver = VotesConsumer(
            redis, keys, scripts, settings, metrics, stats, publisher.mark
        )
        await redis.script_load(scripts.apply.script)
        tasks.append(lambda: publisher.run(stop))
        progress = lambda: stats.applied  # noqa: E731
    elif role == "writer":
        loop = CountingWriter(redis, keys, pg, settings, metrics, stats, _no_final)
        progress = lambda: stats.pg_entries  # noqa: E731
    elif role == "archiver":
        loop = Archiver(redis, keys, pg, settings, metrics, stats)
        progress = lambda: stats.archived  # noqa: E731
    else:
        raise ValueError(role)
    await loop.ensure_groups()
    pool = await pg.pool() if uses_pg else None
    expect = int(cfg["expect"])
    try:
        pg0 = await _pg_cpu(pool) if pool is not None else {}
        redis0 = await _redis_cpu(redis)
        cpu0 = proc_cpu()
        t0 = time.monotonic()
        running = [
            asyncio.create_task(loop.run_partition(p, stop)) for p in range(keys.partitions)
        ] + [asyncio.create_task(t()) for t in tasks]
        last, last_t = -1, t0
        while (done := progress()) < expect:
            now = time.monotonic()
            if done != last:
                last, last_t = done, now
            elif now - last_t > STALL_S:
                break
            await asyncio.sleep(0.005)
        wall = time.monotonic() - t0
        cpu = proc_cpu() - cpu0
        redis_cpu = await _redis_cpu(redis) - redis0
        pg1 = await _pg_cpu(pool) if pool is not None else {}
        pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
    finally:
        await pg.close()
        await redis.aclose()
    return {
        "role": role,
        "expect": expect,
        "done": progress(),
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 3),
        "redis_cpu_s": round(redis_cpu, 4),
        "pg_cpu_s": round(pg_cpu, 3),
        "pg_backends": len(pg1),
        **counts,
    }


async def _no_final(poll: str) -> None:
    """No poll closes in this bench: nothing is ever final."""


def _worker_main(argv: list[str]) -> int:
    import gc

    import uvloop

    # As the service runner sets the process up (services.common.runner.serve).
    uvloop.install()
    from services.common.runner import gc_thresholds

    gc.set_threshold(*gc_thresholds())
    print(jsonline.dumps(asyncio.run(_worker(json.loads(argv[0])))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
