"""Trimming removes applied entries only: pending and undelivered ones always survive."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from services.common.messages import PG_GROUP, TALLY_GROUP
from services.common.scripts import trim_stream
from services.tally.trimmer import forget_outbox_rows, snapshot
from tests.support.tally import (
    TallyEnv,
    cast_vote,
    counted_and_written,
    create_poll,
    pg_counts,
    promoted_copy,
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
    result = await trim_stream(env.redis, env.scripts, stream, [TALLY_GROUP])
    assert result == (0, _sid(ids[0]), _sid(ids[0]))
    assert await _ids(env, stream) == ids

    # a applies: everything before c's pending entries goes, c's stay.
    await a.consumer.apply(0, first)
    result = await trim_stream(env.redis, env.scripts, stream, [TALLY_GROUP])
    assert result == (20, _sid(ids[20]), _sid(ids[20]))
    assert await _ids(env, stream) == ids[20:]

    # Nothing pending: trimmed up to the last delivered entry, undelivered ones stay.
    await c.consumer.apply(0, third)
    result = await trim_stream(env.redis, env.scripts, stream, [TALLY_GROUP])
    last_ms, last_seq = _sid(ids[29])
    assert result == (10, (last_ms, last_seq + 1), _sid(ids[30]))
    assert await _ids(env, stream) == ids[30:]

    # The survivors are still applied afterwards, exactly.
    await a.consumer.apply(0, await a.consumer.readers[0].read_new(100, None))
    assert await redis_counts(env, pdef.id) == {"opt0": 40}


async def test_snapshot_of_missing_stream_or_group(env: TallyEnv) -> None:
    assert await snapshot(env.redis, env.keys.votes(3), TALLY_GROUP) is None
    assert await trim_stream(env.redis, env.scripts, env.keys.votes(3), [TALLY_GROUP]) is None
    await env.redis.xadd(env.keys.votes(3), {"t": "c", "poll": "x"})
    assert await trim_stream(env.redis, env.scripts, env.keys.votes(3), [TALLY_GROUP]) is None
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


class _FailedOverAfterOneCommand:
    """A client whose first command reaches one node and every later one another: a
    cluster client that learned of a failover between two of its commands."""

    def __init__(self, before: aioredis.Redis, after: aioredis.Redis) -> None:
        self._before, self._after, self._used = before, after, False

    def __getattr__(self, name: str) -> Any:
        target = self._after if self._used else self._before
        self._used = True
        return getattr(target, name)


async def test_a_failover_between_commands_never_trims_what_the_promoted_node_has_not_applied(
    env: TallyEnv,
) -> None:
    pdef = await create_poll(env, options=2)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    stream = env.keys.votes(0)
    for _ in range(10):
        await cast_vote(env, pdef.id, "opt0", partition=0)
    # The promoted replica holds every entry, none of their deliveries and acks yet.
    async with promoted_copy(env, stream, TALLY_GROUP) as promoted:
        await tally.consumer.apply(0, await tally.consumer.readers[0].read_new(100, None))
        assert await redis_counts(env, pdef.id) == {"opt0": 10}
        # The script is in the server's cache, so its one call is the first command.
        assert await trim_stream(env.redis, env.scripts, "no-such-stream", [TALLY_GROUP]) is None

        client = _FailedOverAfterOneCommand(env.redis, promoted)
        result = await trim_stream(client, env.scripts, stream, [TALLY_GROUP])  # type: ignore[arg-type]

        # Decided and done on the node it read: the promoted node keeps every entry it
        # has not applied, and trims none of them on its own.
        assert result is not None and result.removed == 10
        assert await promoted.xlen(stream) == 10
        assert await trim_stream(promoted, env.scripts, stream, [TALLY_GROUP]) == (
            0,
            (0, 1),
            _sid((await promoted.xrange(stream, count=1))[0][0]),
        )


async def test_outbox_rows_are_forgotten_only_once_a_replica_holds_the_trim(
    env: TallyEnv,
) -> None:
    info = await env.redis.info("replication")
    assert info["connected_slaves"] == 0, "this test needs a Redis without replicas"
    pdef = await create_poll(env)
    tally = env.tally()
    await counted_and_written(env, tally, pdef.id, 40)
    assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 4

    # Replica acknowledgement configured, and no replica confirms: the outbox is trimmed
    # but its dedupe rows stay, since a failover could bring the entries back.
    unconfirmed = env.tally(ack_replicas=1, ack_timeout_ms=20)
    assert await unconfirmed.trimmer.trim_all() >= 4
    for p in range(env.keys.partitions):
        assert await env.redis.xlen(env.keys.applied(p)) == 0
    assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 4

    # Without replica acknowledgement the trim is all there is to wait for.
    await tally.trimmer.trim_all()
    assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 0


async def test_ids_beyond_a_doubles_precision_are_compared_exactly(env: TallyEnv) -> None:
    stream = f"{env.keys.prefix}:bigseq"
    low, high = "5-9007199254740992", "5-9007199254740993"  # 2**53, 2**53 + 1
    for entry_id in (low, high, "6-0"):
        await env.redis.xadd(stream, {"f": "v"}, id=entry_id)
    for group in ("a", "b"):
        await env.redis.xgroup_create(stream, group, id="0")
    await env.redis.xreadgroup("a", "c", {stream: ">"}, count=3)
    await env.redis.xack(stream, "a", low)  # a still holds `high`
    await env.redis.xreadgroup("b", "c", {stream: ">"}, count=1)  # b still holds `low`

    result = await trim_stream(env.redis, env.scripts, stream, ["a", "b"])

    # As doubles the two points are equal, and the first group's would have deleted
    # the entry b has not acknowledged.
    assert result is not None and result.removed == 0 and result.safe == _sid(low.encode())
    assert await env.redis.xlen(stream) == 3
