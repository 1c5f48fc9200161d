"""apply.lua through the vote consumer: every entry counts exactly once, however delivered."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from services.common.messages import TALLY_GROUP, CloseEntry, Keys, VoteEntry, decode_applied
from services.common.scripts import ApplyArgs, PollKeys, apply_args
from services.tally.streams import Entry
from tests.support.tally import (
    TallyEnv,
    cast_vote,
    create_poll,
    pending,
    redis_counts,
)

pytestmark = pytest.mark.integration


async def _votes(env: TallyEnv, poll: str, n: int) -> Counter[str]:
    expected: Counter[str] = Counter()
    rng = random.Random(n)
    for _ in range(n):
        opt, cnt = f"opt{rng.randrange(8)}", rng.randint(1, 5)
        expected[opt] += await cast_vote(env, poll, opt, cnt)
    return expected


async def _outbox_sums(env: TallyEnv, poll: str) -> Counter[str]:
    sums: Counter[str] = Counter()
    for p in range(env.keys.partitions):
        for _, fields in await env.redis.xrange(env.keys.applied(p)):
            for d in decode_applied(fields[b"d"]).deltas:
                if d.poll == poll:
                    sums[d.option] += d.count
    return sums


def test_apply_call_layout() -> None:
    keys = Keys(prefix="x", partitions=2)
    entries: list[tuple[bytes, VoteEntry | CloseEntry]] = [
        (b"1-0", VoteEntry("a", "o1", 2, "d", "v", 0, 5_500)),
        (b"1-1", VoteEntry("b", "o2", 1, "d", "v", 0, 5_900)),
        (b"1-2", VoteEntry("a", "o3", 3, "d", "v", 0, 6_100)),
        (b"1-3", CloseEntry("a")),
    ]
    ks, args = apply_args(keys, 1, entries, 120)
    assert ks == [
        keys.votes(1),
        keys.applied(1),
        keys.counts(1, "a"),
        keys.version(1, "a"),
        keys.closed(1, "a"),
        keys.second(1, "a", 5),
        keys.counts(1, "b"),
        keys.version(1, "b"),
        keys.closed(1, "b"),
        keys.second(1, "b", 5),
        keys.second(1, "a", 6),
    ]
    assert args == [
        TALLY_GROUP, 4, 120, 3, 8, *PollKeys._fields, *ApplyArgs._fields,
        "1-0", "v", "a", "o1", 2, 5, 3, 6,
        "1-1", "v", "b", "o2", 1, 5, 7, 10,
        "1-2", "v", "a", "o3", 3, 6, 3, 11,
        "1-3", "c", "a", "", 0, 0, 3, 0,
    ]  # fmt: skip


async def test_same_entries_applied_twice_count_once(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _votes(env, pdef.id, 300)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    applied = 0
    for p in range(env.keys.partitions):
        entries = await tally.consumer.readers[p].read_new(1000, None)
        first = await tally.consumer.apply(p, entries)
        again = await tally.consumer.apply(p, entries)
        assert first.applied == len(entries)
        assert again.applied == 0
        applied += first.applied
    assert applied == 300
    assert await redis_counts(env, pdef.id) == dict(expected)
    assert await _outbox_sums(env, pdef.id) == expected
    for p in range(env.keys.partitions):
        assert await pending(env, env.keys.votes(p), TALLY_GROUP) == 0


async def test_two_consumers_holding_the_same_entries(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _votes(env, pdef.id, 400)
    a, b = env.tally(consumer="a"), env.tally(consumer="b")
    await a.consumer.ensure_groups()
    for p in range(env.keys.partitions):
        held_by_a = await a.consumer.readers[p].read_new(1000, None)
        # b takes them over while a still holds its copy: both apply at once.
        claimed = await env.redis.xclaim(
            env.keys.votes(p), TALLY_GROUP, "b", 0, [i for i, _ in held_by_a]
        )
        held_by_b: list[Entry] = [(i, f) for i, f in claimed]
        ra, rb = await asyncio.gather(
            a.consumer.apply(p, held_by_a), b.consumer.apply(p, held_by_b)
        )
        assert ra.applied + rb.applied == len(held_by_a)
    assert await redis_counts(env, pdef.id) == dict(expected)
    assert await _outbox_sums(env, pdef.id) == expected


async def test_dead_consumers_entries_claimed_once(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _votes(env, pdef.id, 300)
    dead, heir = env.tally(consumer="dead"), env.tally(consumer="heir", claim_idle_ms=100)
    await dead.consumer.ensure_groups()
    stale = {p: await dead.consumer.readers[p].read_new(1000, None) for p in range(4)}
    assert sum(map(len, stale.values())) == 300
    await asyncio.sleep(0.15)  # the claim threshold: entries must be idle this long
    for p in range(env.keys.partitions):
        await heir.consumer.recover(p)
    assert await redis_counts(env, pdef.id) == dict(expected)
    # The "dead" one wakes up and applies what it read: nothing counts again.
    for p, entries in stale.items():
        assert (await dead.consumer.apply(p, entries)).applied == 0
        assert await pending(env, env.keys.votes(p), TALLY_GROUP) == 0
    assert await redis_counts(env, pdef.id) == dict(expected)
    assert await _outbox_sums(env, pdef.id) == expected


async def test_restart_reapplies_own_pending(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _votes(env, pdef.id, 200)
    before = env.tally(consumer="same")
    await before.consumer.ensure_groups()
    halfway = 0
    for p in range(env.keys.partitions):
        entries = await before.consumer.readers[p].read_new(1000, None)
        # Crash after applying half of what was read, before reading again.
        halfway += (await before.consumer.apply(p, entries[: len(entries) // 2])).applied
    assert 0 < halfway < 200
    after = env.tally(consumer="same")
    for p in range(env.keys.partitions):
        await after.consumer.recover(p)
    assert await redis_counts(env, pdef.id) == dict(expected)
    assert await _outbox_sums(env, pdef.id) == expected


async def test_deleted_pending_entry_is_acknowledged(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    await cast_vote(env, pdef.id, "opt1", partition=0)
    tally = env.tally(claim_idle_ms=100)
    await tally.consumer.ensure_groups()
    entries = await env.redis.xreadgroup(TALLY_GROUP, "gone", {env.keys.votes(0): ">"}, count=10)
    assert entries
    await env.redis.xtrim(env.keys.votes(0), maxlen=0)
    await asyncio.sleep(0.15)
    await tally.consumer.recover(0)
    assert await pending(env, env.keys.votes(0), TALLY_GROUP) == 0
