"""The tally's parts on a real cluster with replica acknowledgement (``WAIT``)."""

from __future__ import annotations

import pytest

from buzzer.rediscluster import LocalCluster
from tests.support.tally import counted_and_written, create_poll, pg_counts, tally_env

pytestmark = pytest.mark.integration


async def test_outbox_rows_are_forgotten_once_a_replica_holds_the_trim(
    redis_cluster: LocalCluster, tally_dsn: str
) -> None:
    async with tally_env(tally_dsn, redis_url=redis_cluster.url) as env:
        pdef = await create_poll(env)
        tally = env.tally(ack_replicas=1, ack_timeout_ms=4000)
        await counted_and_written(env, tally, pdef.id, 40)
        assert sum((await pg_counts(env, pdef.id)).values()) == 40
        assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 4

        assert await tally.trimmer.trim_all() >= 4
        for p in range(env.keys.partitions):
            assert await env.redis.xlen(env.keys.applied(p)) == 0
        # Each partition's replica confirmed the trim: its dedupe rows can go.
        assert await env.pool.fetchval("SELECT count(*) FROM applied_outbox") == 0
