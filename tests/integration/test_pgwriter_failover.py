"""With replica acknowledgement, the PostgreSQL writer commits only outbox entries the
node that confirmed its WAIT still holds: entries read from a primary that then died,
before they reached its replica, are applied again on the promoted node under new ids,
and committing them too would count them twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.common.messages import PG_GROUP
from tests.support.faults import PrivateRedis
from tests.support.tally import TallyEnv, cast_vote, create_poll, pg_counts

pytestmark = pytest.mark.integration


async def _replicated_pair(tmp_path: Path) -> tuple[PrivateRedis, PrivateRedis]:
    primary, replica = PrivateRedis(tmp_path / "primary"), PrivateRedis(tmp_path / "replica")
    primary.start()
    replica.start()
    client = aioredis.from_url(replica.url)
    try:
        async with aioredis.from_url(primary.url) as p:
            await p.config_set("repl-diskless-sync-delay", 0)  # link now, not in 5 s
        await client.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 20
        while (await client.info("replication")).get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never linked"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    return primary, replica


async def test_entries_read_from_a_dead_primary_are_not_committed_after_the_failover(
    env: TallyEnv, tmp_path: Path
) -> None:
    pdef = await create_poll(env)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    await tally.writer.ensure_groups()
    for i in range(20):
        await cast_vote(env, pdef.id, f"opt{i % 4}", partition=0)
    await tally.consumer.apply(0, await tally.consumer.readers[0].read_new(100, None))
    # Read from the primary that is about to die (the shared Redis here)...
    held = await tally.writer.readers[0].read_new(100, None)
    assert len(held) == 1

    # ...and the WAIT and everything after it answered by the promoted node, which has a
    # replica of its own but never received these entries.
    primary, replica = await _replicated_pair(tmp_path)
    promoted = aioredis.from_url(primary.url)
    try:
        await promoted.xgroup_create(env.keys.applied(0), PG_GROUP, id="0", mkstream=True)
        writer = env.tally(
            promoted,
            ack_replicas=1,
            ack_timeout_ms=4000,
            consumer=tally.writer.readers[0].consumer,
        ).writer
        result = await writer.process(0, held)
        assert result.fresh == 0
        assert await pg_counts(env, pdef.id) == {}

        # The same writer on the node that holds them commits them.
        assert (await tally.writer.process(0, held)).fresh == 1
        assert sum((await pg_counts(env, pdef.id)).values()) == 20
    finally:
        await promoted.aclose()
        replica.stop()
        primary.stop()
