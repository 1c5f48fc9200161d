"""Trimming removes applied entries only: pending and undelivered ones always survive."""

from __future__ import annotations

import pytest

from services.common.messages import PG_GROUP, TALLY_GROUP
from services.tally.trimmer import forget_outbox_rows, snapshot, trim_stream
from tests.support.tally import (
    TallyEnv,
    cast_vote,
    create_poll,
    pg_counts,
    redis_counts,
)

pytestmark = pytest.mark.integration


async def _ids(env: TallyEnv, stream: str) -> list[bytes]:
    return [i for i, _ in await env.redis.xrange(stream)]


async def test_trim_keeps_pending_and_undelivered(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=2)
    a, b, c = (env.tally(consumer=n) for n in "abc")
    await a.consumer.ensure_groups()
    stream = env.keys.votes(0)
    for _ in range(40):
        await cast_vote(env, pdef.id, "opt0", partition=0)
    ids = await _ids(env, stream)
    first = await a.consumer.readers[0].read_new(10, None)  # 0-9
    middle = await b.consumer.readers[0].read_new(10, None)  # 10-19
    third = await c.consumer.readers[0].read_new(10, None)  # 20-29; 30-39 undelivered

    # b applies the middle; a's older entries are pending: nothing may go.
    await b.consumer.apply(0, middle)
    assert await trim_stream(env.redis, stream, TALLY_GROUP) == (0, _sid(ids[0]))
    assert await _ids(env, stream) == ids

    # a applies: everything before c's pending entries goes, c's stay.
    await a.consumer.apply(0, first)
    removed, safe = await trim_stream(env.redis, stream, TALLY_GROUP) or (0, (0, 0))
    assert removed == 20 and safe == _sid(ids[20])
    assert await _ids(env, stream) == ids[20:]

    # Nothing pending: trimmed up to the last delivered entry, undelivered ones stay.
    await c.consumer.apply(0, third)
    assert (await trim_stream(env.redis, stream, TALLY_GROUP) or (0,))[0] == 10
    assert await _ids(env, stream) == ids[30:]

    # The survivors are still applied afterwards, exactly.
    await a.consumer.apply(0, await a.consumer.readers[0].read_new(100, None))
    assert await redis_counts(env, pdef.id) == {"opt0": 40}


async def test_snapshot_of_missing_stream_or_group(env: TallyEnv) -> None:
    assert await snapshot(env.redis, env.keys.votes(3), TALLY_GROUP) is None
    assert await trim_stream(env.redis, env.keys.votes(3), TALLY_GROUP) is None
    await env.redis.xadd(env.keys.votes(3), {"t": "c", "poll": "x"})
    assert await trim_stream(env.redis, env.keys.votes(3), TALLY_GROUP) is None
    assert await env.redis.xlen(env.keys.votes(3)) == 1


async def test_trim_all_with_writer_keeps_unwritten_outbox(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    await tally.writer.ensure_groups()
    await tally.archiver.ensure_groups()
    for i in range(100):
        await cast_vote(env, pdef.id, f"opt{i % 8}")
    for p in range(env.keys.partitions):
        await tally.consumer.apply(p, await tally.consumer.readers[p].read_new(1000, None))
        # Votes go once both the tally and the archiver acknowledged them.
        await tally.archiver.handle(p, await tally.archiver.readers[p].read_new(1000, None))
    held = {p: await tally.writer.readers[p].read_new(1000, None) for p in range(4)}
    await tally.trimmer.trim_all()
    for p in range(env.keys.partitions):
        assert await env.redis.xlen(env.keys.votes(p)) == 0
        assert await env.redis.xlen(env.keys.applied(p)) == len(held[p])
    for p, entries in held.items():
        await tally.writer.process(p, entries)
    assert sum((await pg_counts(env, pdef.id)).values()) == 100
    assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 4
    await tally.trimmer.trim_all()
    assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 0
    for p in range(env.keys.partitions):
        assert await env.redis.xlen(env.keys.applied(p)) == 0
    assert await snapshot(env.redis, env.keys.applied(0), PG_GROUP) is not None


async def test_outbox_rows_compared_as_numbers(env: TallyEnv) -> None:
    tally = env.tally()
    rows = ["9-0", "10-9", "10-10", "100-0"]
    await env.pool.executemany(
        "INSERT INTO applied_outbox(partition, entry_id) VALUES (0, $1)", [(r,) for r in rows]
    )
    await forget_outbox_rows(tally.writer.pg, 0, (10, 10))
    left = await env.pool.fetch("SELECT entry_id FROM applied_outbox ORDER BY entry_id")
    assert [r["entry_id"] for r in left] == ["10-10", "100-0"]
    wm = await env.pool.fetchrow("SELECT ms, seq FROM outbox_watermark WHERE partition = 0")
    assert wm is not None and (wm["ms"], wm["seq"]) == (10, 10)
    await forget_outbox_rows(tally.writer.pg, 0, (5, 0))  # never lowered
    wm = await env.pool.fetchrow("SELECT ms, seq FROM outbox_watermark WHERE partition = 0")
    assert wm is not None and (wm["ms"], wm["seq"]) == (10, 10)


def _sid(raw: bytes) -> tuple[int, int]:
    ms, seq = raw.decode().split("-")
    return int(ms), int(seq)


async def test_idle_consumers_removed_only_without_pending(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=2)
    tally = env.tally(consumer="me", consumer_gc_idle_ms=0)
    await tally.consumer.ensure_groups()
    await tally.writer.ensure_groups()
    await cast_vote(env, pdef.id, "opt0", partition=0)
    await cast_vote(env, pdef.id, "opt1", partition=0)
    holder, idle = env.tally(consumer="holder"), env.tally(consumer="idle")
    assert len(await holder.consumer.readers[0].read_new(1, None)) == 1
    await idle.consumer.apply(0, await idle.consumer.readers[0].read_new(1, None))
    assert await tally.trimmer.gc_consumers() == 1
    names = {c["name"] for c in await env.redis.xinfo_consumers(env.keys.votes(0), TALLY_GROUP)}
    assert names == {b"holder"}
