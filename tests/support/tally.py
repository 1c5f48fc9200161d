"""Helpers for the tally tests: their own database, a key prefix per test, polls, votes.

Everything runs against the real Redis and PostgreSQL. Each tally test module gets
its own database ``buzzer_test_tally_<random>`` (created, migrated, dropped) and each
test keys under a random prefix, so they never touch ``buzzer`` or another suite's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bench.tools.tally import accept_votes
from services.common.db import LazyPool, create_pool, migrate
from services.common.messages import Keys, OptionDef, PollDef, VoteEntry
from services.common.polls import open_poll_redis, publish_poll
from services.common.redisconn import connect
from services.common.scripts import Scripts, VoteOutcome, VoteRules
from services.common.settings import TallySettings
from services.tally.metrics import TallyMetrics
from services.tally.service import Tally
from tests.support import delete_prefix

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TALLY_DB = "buzzer_test_tally"

TABLES = (
    "applied_outbox, vote_archive, archive_partition_closed, outbox_watermark, poll_partition_closed, rate_buckets, totals,"
    " options, polls, shows"
)


@contextlib.contextmanager
def migrated_database(base: str) -> Iterator[str]:
    """The DSN of a migrated database named ``base`` plus a suffix unique to this call,
    dropped afterwards.

    Unique per call, so that two runs of the suite at once (CI and a developer, or two
    engineers) never truncate or drop each other's tables, and a test never depends on
    a database another test happened to make first.
    """
    name = f"{base}_{uuid.uuid4().hex[:8]}"
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        asyncio.run(migrate(dsn))
        yield dsn
    finally:
        asyncio.run(_drop_database(name))


def tally_database() -> Iterator[str]:
    """Body of a module-scoped fixture: a migrated database of the module's own."""
    with migrated_database(TALLY_DB) as dsn:
        yield dsn


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass
class TallyEnv:
    redis: aioredis.Redis
    pool: asyncpg.Pool
    keys: Keys
    scripts: Scripts
    dsn: str
    redis_url: str = REDIS_URL
    _pgs: list[LazyPool] = field(default_factory=list)

    def settings(self, **overrides: Any) -> TallySettings:
        values: dict[str, Any] = {
            "redis_url": self.redis_url,
            "database_url": SecretStr(self.dsn),
            "key_prefix": self.keys.prefix,
            "partitions": self.keys.partitions,
            "consumer": "c-" + uuid.uuid4().hex[:6],
            "block_ms": 10,
        }
        values.update(overrides)
        return TallySettings(**values)

    def tally(self, redis: aioredis.Redis | None = None, **overrides: Any) -> Tally:
        """A tally whose parts the test drives by hand (not started); ``redis``: another
        server for it to talk to (a promoted replica, say) than this env's."""
        settings = self.settings(**overrides)
        pg = LazyPool(settings.database_url.get_secret_value(), 2)
        self._pgs.append(pg)
        return Tally(redis or self.redis, pg, settings, TallyMetrics(CollectorRegistry()))

    def env_vars(self, **overrides: str) -> dict[str, str]:
        """Environment of a tally subprocess on this env's keys and database."""
        env = dict(os.environ)
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "DATABASE_URL": self.dsn,
                "BUZZER_KEY_PREFIX": self.keys.prefix,
                "BUZZER_PARTITIONS": str(self.keys.partitions),
                "BUZZER_LOG_LEVEL": "INFO",
            }
        )
        env.update(overrides)
        return env


@asynccontextmanager
async def tally_env(
    dsn: str, partitions: int = 4, redis_url: str = REDIS_URL
) -> AsyncIterator[TallyEnv]:
    """Keys of its own on ``redis_url`` (one server or a cluster) and a truncated database."""
    keys = Keys(prefix=f"t{uuid.uuid4().hex[:8]}", partitions=partitions)
    redis = connect(redis_url)
    pool = await create_pool(dsn, 4)
    await pool.execute(f"TRUNCATE {TABLES} CASCADE")
    env = TallyEnv(redis, pool, keys, Scripts.register(redis), dsn, redis_url)
    try:
        yield env
    finally:
        for pg in env._pgs:
            await pg.close()
        await delete_prefix(redis, keys.prefix)
        await redis.aclose()
        await pool.close()


async def create_poll(
    env: TallyEnv,
    options: int = 8,
    max_votes: int | None = None,
    max_count: int = 100,
) -> PollDef:
    """An open poll, as the admin API leaves it: rows in PostgreSQL, definition and state in Redis."""
    poll_id = f"poll-{uuid.uuid4().hex[:8]}"
    show_id = f"show-{uuid.uuid4().hex[:8]}"
    opts = [OptionDef(key=f"opt{i}", label=f"Option {i}") for i in range(options)]
    async with env.pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO shows(id, name) VALUES ($1, $2)", show_id, "Test show")
        await conn.execute(
            "INSERT INTO polls(id, show_id, title, state, max_votes_per_device, max_count,"
            " partitions, opened_at) VALUES ($1, $2, $3, 'open', $4, $5, $6, now())",
            poll_id,
            show_id,
            "Test poll",
            max_votes,
            max_count,
            env.keys.partitions,
        )
        await conn.executemany(
            "INSERT INTO options(poll_id, key, label, position) VALUES ($1, $2, $3, $4)",
            [(poll_id, o.key, o.label, i) for i, o in enumerate(opts)],
        )
    pdef = PollDef(
        id=poll_id,
        show_id=show_id,
        title="Test poll",
        options=opts,
        max_votes_per_device=max_votes,
        max_count=max_count,
        state="open",
    )
    await publish_poll(env.redis, env.keys, pdef)
    await open_poll_redis(env.redis, env.keys, poll_id)
    return pdef


async def close_poll_pg(env: TallyEnv, poll_id: str) -> None:
    await env.pool.execute(
        "UPDATE polls SET state = 'closed', closed_at = now() WHERE id = $1", poll_id
    )


async def cast_vote(
    env: TallyEnv,
    poll: str,
    option: str,
    count: int = 1,
    device: str | None = None,
    vote_id: str | None = None,
    partition: int | None = None,
    recv_ts: int | None = None,
) -> int:
    """Append a vote the way ingest does (vote_batch.lua). Returns the votes newly accepted."""
    device = device or uuid.uuid4().hex
    vote_id = vote_id or str(uuid.uuid4())
    p = env.keys.partition_of(device) if partition is None else partition
    entry = VoteEntry(
        poll=poll,
        option=option,
        count=count,
        device=device,
        vote_id=vote_id,
        client_ts=0,
        recv_ts=int(time.time() * 1000) if recv_ts is None else recv_ts,
    )
    rules = VoteRules(dedupe_ttl_s=3600)
    [result] = await accept_votes(env.redis, env.scripts, env.keys, p, [(entry, rules)])
    if result.outcome is VoteOutcome.ACCEPTED:
        return result.accepted
    if result.outcome is VoteOutcome.REPLAYED:
        return 0
    # Negative: the HTTP status ingest answers for a refused vote.
    return -429 if result.outcome is VoteOutcome.RATE_LIMITED else -409


async def counted_and_written(env: TallyEnv, tally: Tally, poll: str, votes: int) -> None:
    """Cast ``votes`` votes over 8 options, then apply them and write the outbox to
    PostgreSQL by hand, every partition (the streams are left for the trimmer)."""
    for part in (tally.consumer, tally.writer, tally.archiver):
        await part.ensure_groups()
    for i in range(votes):
        await cast_vote(env, poll, f"opt{i % 8}")
    for p in range(env.keys.partitions):
        await tally.consumer.apply(p, await tally.consumer.readers[p].read_new(1000, None))
        await tally.writer.process(p, await tally.writer.readers[p].read_new(1000, None))


@asynccontextmanager
async def promoted_copy(
    env: TallyEnv, stream: str, group: str, db: int = 9
) -> AsyncIterator[aioredis.Redis]:
    """A replica just promoted, behind in deliveries: another database of the same
    server standing for another node, holding every entry of ``stream`` but none of
    their deliveries and acknowledgements in ``group``. Removed afterwards."""
    promoted = aioredis.from_url(urlsplit(REDIS_URL)._replace(path=f"/{db}").geturl())
    try:
        for entry_id, fields in await env.redis.xrange(stream):
            await promoted.xadd(stream, fields, id=entry_id)
        await promoted.xgroup_create(stream, group, id="0", mkstream=True)
        yield promoted
    finally:
        await delete_prefix(promoted, env.keys.prefix)
        await promoted.aclose()


async def redis_counts(env: TallyEnv, poll: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in range(env.keys.partitions):
        for k, v in (await env.redis.hgetall(env.keys.counts(p, poll))).items():
            out[k.decode()] = out.get(k.decode(), 0) + int(v)
    return out


async def pg_counts(env: TallyEnv, poll: str) -> dict[str, int]:
    rows = await env.pool.fetch(
        "SELECT option_key, count FROM totals WHERE poll_id = $1 AND count > 0", poll
    )
    return {r["option_key"]: int(r["count"]) for r in rows}


async def pending(env: TallyEnv, stream: str, group: str) -> int:
    try:
        return int((await env.redis.xpending(stream, group))["pending"])
    except aioredis.ResponseError:
        return 0


def without_zeros(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}
