"""The PostgreSQL writer applies every outbox entry once, whatever is redelivered."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import msgspec
import pytest

from services.common.messages import PG_GROUP, AppliedBatch, Delta, decode_applied, parse_id
from services.common.scripts import trim_stream
from services.tally.service import Tally
from services.tally.store import Outboxed
from services.tally.streams import GroupReader
from tests.support.tally import (
    TallyEnv,
    cast_vote,
    create_poll,
    pending,
    pg_counts,
    redis_counts,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True, slots=True)
class CrashBeforeAck(GroupReader):
    """A reader whose process dies right after the PostgreSQL commit."""

    async def ack(self, ids: list[bytes] | list[str]) -> int:
        raise ConnectionError("killed between commit and ack")


async def _votes_applied(env: TallyEnv, tally: Tally, poll: str, n: int) -> Counter[str]:
    expected: Counter[str] = Counter()
    rng = random.Random(n)
    for _ in range(n):
        opt, cnt = f"opt{rng.randrange(8)}", rng.randint(1, 3)
        expected[opt] += await cast_vote(env, poll, opt, cnt)
    await tally.consumer.ensure_groups()
    await tally.writer.ensure_groups()
    for p in range(env.keys.partitions):
        # Several small batches, so the outbox holds several entries per partition.
        while entries := await tally.consumer.readers[p].read_new(40, None):
            await tally.consumer.apply(p, entries)
    assert await redis_counts(env, poll) == dict(expected)
    return expected


async def test_redelivered_outbox_entry_applied_once(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    first = env.tally(consumer="w")
    expected = await _votes_applied(env, first, pdef.id, 400)
    for p in range(env.keys.partitions):
        r = first.writer.readers[p]
        first.writer.readers[p] = CrashBeforeAck(r.redis, r.stream, r.group, r.consumer)
        entries = await r.read_new(1000, None)
        assert entries
        with pytest.raises(ConnectionError):
            await first.writer.process(p, entries)
    # Committed, not acknowledged: PostgreSQL already has everything...
    assert await pg_counts(env, pdef.id) == dict(expected)
    # ...and the restarted writer (same name: its own pending list) adds nothing.
    restarted = env.tally(consumer="w")
    for p in range(env.keys.partitions):
        await restarted.writer.recover(p)
        assert await pending(env, env.keys.applied(p), PG_GROUP) == 0
    assert await pg_counts(env, pdef.id) == dict(expected)
    rates = await env.pool.fetchval(
        "SELECT sum(count) FROM rate_buckets WHERE poll_id = $1", pdef.id
    )
    assert rates == sum(expected.values())


async def test_claimed_outbox_entries_applied_once(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    dead = env.tally(consumer="dead")
    expected = await _votes_applied(env, dead, pdef.id, 300)
    for p in range(env.keys.partitions):
        r = dead.writer.readers[p]
        dead.writer.readers[p] = CrashBeforeAck(r.redis, r.stream, r.group, r.consumer)
        entries = await r.read_new(1000, None)
        # Half committed before the crash, half only read.
        with pytest.raises(ConnectionError):
            await dead.writer.process(p, entries[: len(entries) // 2 + 1])
    heir = env.tally(consumer="heir", claim_idle_ms=100)
    await asyncio.sleep(0.15)  # past the claim threshold
    for p in range(env.keys.partitions):
        await heir.writer.recover(p)
        assert await pending(env, env.keys.applied(p), PG_GROUP) == 0
    assert await pg_counts(env, pdef.id) == dict(expected)


async def test_stale_holder_after_trim_cannot_double_count(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    tally = env.tally()
    expected = await _votes_applied(env, tally, pdef.id, 200)
    stale: dict[int, list[Outboxed]] = {}
    for p in range(env.keys.partitions):
        entries = await tally.writer.readers[p].read_new(1000, None)
        stale[p] = [Outboxed(i, parse_id(i), decode_applied(f[b"d"])) for i, f in entries]
        await tally.writer.process(p, entries)
    await tally.trimmer.trim_all()
    for p in range(env.keys.partitions):
        assert await env.redis.xlen(env.keys.applied(p)) == 0
    assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 0
    # A holder that read the entries long ago commits them now: the watermark stops it.
    for p, outboxed in stale.items():
        assert (await tally.writer.commit(p, outboxed)).fresh == 0
    assert await pg_counts(env, pdef.id) == dict(expected)


async def test_unknown_option_is_skipped_not_fatal(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    tally = env.tally()
    await tally.writer.ensure_groups()
    batch = AppliedBatch(
        deltas=[
            Delta(pdef.id, "opt1", 100, 5),
            Delta(pdef.id, "nope", 100, 7),
            Delta("no-such-poll", "opt1", 100, 9),
        ],
        closes=["no-such-poll"],
    )
    await env.redis.xadd(env.keys.applied(2), {"d": msgspec.json.encode(batch)})
    await env.redis.xadd(env.keys.applied(2), {"d": b"not json"})
    entries = await tally.writer.readers[2].read_new(10, None)
    await tally.writer.process(2, entries)
    assert await pg_counts(env, pdef.id) == {"opt1": 5}
    assert await pending(env, env.keys.applied(2), PG_GROUP) == 0


async def test_postgres_down_leaves_entries_pending(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    tally = env.tally(consumer="w")
    expected = await _votes_applied(env, tally, pdef.id, 100)
    broken = env.tally(consumer="w", database_url="postgresql://postgres@127.0.0.1:1/nope")
    for p in range(env.keys.partitions):
        entries = await broken.writer.readers[p].read_new(1000, None)
        with pytest.raises(OSError):
            await broken.writer.process(p, entries)
    assert sum([await pending(env, env.keys.applied(p), PG_GROUP) for p in range(4)]) > 0
    for p in range(env.keys.partitions):
        await tally.writer.recover(p)
    assert await pg_counts(env, pdef.id) == dict(expected)


async def test_trim_never_passes_pending_outbox(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    tally = env.tally()
    await _votes_applied(env, tally, pdef.id, 100)
    entries = await tally.writer.readers[0].read_new(1000, None)
    result = await trim_stream(env.redis, env.scripts, env.keys.applied(0), [PG_GROUP])
    assert result is not None
    assert result.removed == 0
    assert await env.redis.xlen(env.keys.applied(0)) == len(entries)
