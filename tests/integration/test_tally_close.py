"""Closing a poll: earlier votes count, the close waits for them, the result freezes once."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from services.common.live import load_polldef
from services.common.messages import PG_GROUP, TALLY_GROUP, decode_update
from services.common.polls import close_poll_redis
from services.tally.service import Tally
from tests.support.tally import (
    TallyEnv,
    cast_vote,
    close_poll_pg,
    create_poll,
    pending,
    pg_counts,
    redis_counts,
)

pytestmark = pytest.mark.integration


async def _drain(env: TallyEnv, tally: Tally) -> None:
    """Apply and write everything there is, as the running loops would."""
    for p in range(env.keys.partitions):
        await tally.consumer.recover(p)
        while entries := await tally.consumer.readers[p].read_new(1000, None):
            await tally.consumer.apply(p, entries)
    for p in range(env.keys.partitions):
        await tally.writer.recover(p)
        while entries := await tally.writer.readers[p].read_new(1000, None):
            await tally.writer.process(p, entries)


async def _final(env: TallyEnv, poll: str) -> tuple[bool, dict[str, object] | None]:
    row = await env.pool.fetchrow("SELECT final, final_result FROM polls WHERE id = $1", poll)
    assert row is not None
    return row["final"], json.loads(row["final_result"]) if row["final_result"] else None


async def test_votes_before_close_count_later_refused(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=3)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    await tally.writer.ensure_groups()
    expected: Counter[str] = Counter()
    for i in range(60):
        expected[f"opt{i % 3}"] += await cast_vote(env, pdef.id, f"opt{i % 3}", 2)
    await close_poll_pg(env, pdef.id)
    assert await close_poll_redis(env.redis, env.keys, env.scripts, pdef.id) == 4
    assert await cast_vote(env, pdef.id, "opt0") == -409
    await _drain(env, tally)
    assert await redis_counts(env, pdef.id) == dict(expected)
    assert await pg_counts(env, pdef.id) == dict(expected)
    final, result = await _final(env, pdef.id)
    assert final
    assert result == {"counts": dict(expected), "total": sum(expected.values())}
    loaded = await load_polldef(env.redis, env.keys, pdef.id)
    assert loaded is not None and loaded.final and loaded.state == "closed"
    updates = [decode_update(f[b"d"]) for _, f in await env.redis.xrange(env.keys.updates)]
    assert updates and updates[-1].final and updates[-1].counts == dict(expected)


async def test_close_deferred_while_earlier_votes_pending(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=2)
    a, b = env.tally(consumer="a"), env.tally(consumer="b")
    await a.consumer.ensure_groups()
    for _ in range(5):
        await cast_vote(env, pdef.id, "opt1", partition=0)
    held = await a.consumer.readers[0].read_new(100, None)
    assert len(held) == 5
    await close_poll_redis(env.redis, env.keys, env.scripts, pdef.id)
    close_batch = await b.consumer.readers[0].read_new(100, None)
    result = await b.consumer.apply(0, close_batch)
    assert result.closes == 0 and result.deferred == [close_batch[0][0]]
    assert await env.redis.get(env.keys.closed(0, pdef.id)) is None
    assert await pending(env, env.keys.votes(0), TALLY_GROUP) == 6
    assert (await a.consumer.apply(0, held)).applied == 5
    await b.consumer.recover(0)
    assert await env.redis.get(env.keys.closed(0, pdef.id)) == b"1"
    assert await pending(env, env.keys.votes(0), TALLY_GROUP) == 0


async def test_outbox_close_deferred_while_earlier_outbox_pending(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=2)
    w1, w2 = env.tally(consumer="w1"), env.tally(consumer="w2")
    await w1.consumer.ensure_groups()
    await w1.writer.ensure_groups()
    for _ in range(7):
        await cast_vote(env, pdef.id, "opt0", partition=1)
    await w1.consumer.apply(1, await w1.consumer.readers[1].read_new(100, None))
    votes_entry = await w1.writer.readers[1].read_new(100, None)
    assert len(votes_entry) == 1
    await close_poll_pg(env, pdef.id)
    await close_poll_redis(env.redis, env.keys, env.scripts, pdef.id)
    await _drain(env, w2)  # applies every close; writes all but w1's held entry
    closed = await env.pool.fetchval(
        "SELECT count(*) FROM poll_partition_closed WHERE poll_id = $1", pdef.id
    )
    assert closed == 3  # partition 1's close waits for w1
    assert (await _final(env, pdef.id))[0] is False
    assert await pending(env, env.keys.applied(1), PG_GROUP) == 2
    await w1.writer.process(1, votes_entry)
    await w2.writer.recover(1)
    final, result = await _final(env, pdef.id)
    assert final and result == {"counts": {"opt0": 7, "opt1": 0}, "total": 7}


async def test_final_only_when_every_partition_closed(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=4)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    await tally.writer.ensure_groups()
    expected: Counter[str] = Counter()
    for i in range(80):
        expected[f"opt{i % 4}"] += await cast_vote(env, pdef.id, f"opt{i % 4}")
    await close_poll_pg(env, pdef.id)
    for p in range(3):  # an admin close that died before the last partition
        await env.scripts.close(
            keys=[env.keys.state(p, pdef.id), env.keys.votes(p)], args=[pdef.id], client=env.redis
        )
    await _drain(env, tally)
    assert (await _final(env, pdef.id))[0] is False
    # The reconciler notices PostgreSQL says closed and finishes the close.
    assert (await tally.reconciler.reconcile()).closes_run == 1
    await _drain(env, tally)
    final, result = await _final(env, pdef.id)
    assert final and result == {"counts": dict(expected), "total": 80}
    # Frozen: re-running every stage changes nothing.
    await _drain(env, tally)
    assert (await _final(env, pdef.id))[1] == result


async def test_reconciler_restores_lost_redis_state(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=2)
    tally = env.tally()
    await env.redis.delete(
        env.keys.poll_def(pdef.id), *[env.keys.state(p, pdef.id) for p in range(4)]
    )
    result = await tally.reconciler.reconcile()
    assert result.defs_written == 1 and result.states_written == 4
    loaded = await load_polldef(env.redis, env.keys, pdef.id)
    assert loaded == pdef
    assert await cast_vote(env, pdef.id, "opt1") == 1
    assert not (await tally.reconciler.reconcile()).changed()
