"""A close marker completes its partition only where its own delivery is known.

The archiver and the PostgreSQL writer let a close through once no earlier entry of its
partition is pending. A promoted replica behind in deliveries shows earlier entries as
unread rather than pending; asked there, the old check let the close through before
them: an archive sealed, or a result frozen, without votes that were still on their way.
"""

from __future__ import annotations

import pytest

from services.common.messages import ARCHIVE_GROUP, PG_GROUP
from services.common.scripts import close_partition
from tests.support.tally import TallyEnv, cast_vote, create_poll, promoted_copy

pytestmark = pytest.mark.integration


async def test_the_archive_close_waits_on_a_promoted_node_behind_in_deliveries(
    env: TallyEnv,
) -> None:
    pdef = await create_poll(env)
    other, me = env.tally(consumer="other"), env.tally(consumer="me")
    await me.archiver.ensure_groups()
    for i in range(3):
        await cast_vote(env, pdef.id, f"opt{i}", partition=0)
    await close_partition(env.redis, env.scripts, env.keys, 0, pdef.id)
    held_elsewhere = await other.archiver.readers[0].read_new(3, None)
    [close] = await me.archiver.readers[0].read_new(10, None)
    assert len(held_elsewhere) == 3

    # Where both deliveries are known, the close waits for the other archiver.
    assert await me.archiver.handle(0, [close]) == 0
    async with promoted_copy(env, env.keys.votes(0), ARCHIVE_GROUP) as promoted:
        await env.tally(promoted, consumer="me").archiver.handle(0, [close])
    assert await env.pool.fetchval("SELECT count(*) FROM archive_partition_closed") == 0

    # Once the votes are archived, the close goes through.
    await other.archiver.handle(0, held_elsewhere)
    await me.archiver.handle(0, [close])
    assert await env.pool.fetchval("SELECT count(*) FROM archive_partition_closed") == 1


async def test_the_outbox_close_waits_on_a_promoted_node_behind_in_deliveries(
    env: TallyEnv,
) -> None:
    pdef = await create_poll(env)
    tally = env.tally()
    other, me = env.tally(consumer="other"), env.tally(consumer="me")
    await tally.consumer.ensure_groups()
    await me.writer.ensure_groups()
    for i in range(3):
        await cast_vote(env, pdef.id, f"opt{i}", partition=0)
    # Two outbox entries: the votes' deltas, then the close.
    await tally.consumer.apply(0, await tally.consumer.readers[0].read_new(10, None))
    await close_partition(env.redis, env.scripts, env.keys, 0, pdef.id)
    await tally.consumer.apply(0, await tally.consumer.readers[0].read_new(10, None))
    [deltas] = await other.writer.readers[0].read_new(1, None)
    [close] = await me.writer.readers[0].read_new(10, None)

    assert (await me.writer.process(0, [close])).fresh == 0
    async with promoted_copy(env, env.keys.applied(0), PG_GROUP) as promoted:
        writer = env.tally(promoted, consumer="me").writer
        assert (await writer.process(0, [close])).fresh == 0
    assert await env.pool.fetchval("SELECT count(*) FROM poll_partition_closed") == 0

    await other.writer.process(0, [deltas])
    await me.writer.process(0, [close])
    assert await env.pool.fetchval("SELECT count(*) FROM poll_partition_closed") == 1
