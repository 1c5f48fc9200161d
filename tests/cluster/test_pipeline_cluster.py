"""The end-to-end exactness test of tests/e2e/test_pipeline.py, unchanged, on a Redis
Cluster whose partitions are spread over three primaries (the issue's 20,000 votes
with ``BUZZER_TEST_PIPELINE_VOTES=20000``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from buzzer.rediscluster import LocalCluster
from services.common.messages import Keys
from tests.e2e.test_pipeline import run_pipeline
from tests.support.stack import local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_partitions_spread_over_primaries(redis_cluster: LocalCluster) -> None:
    # Guards the test below from passing on a cluster where one node holds everything.
    keys = Keys(prefix="x", partitions=4)
    from redis.cluster import key_slot

    owners = {redis_cluster.primary_for_slot(key_slot(keys.votes(p).encode())) for p in range(4)}
    assert len(owners) >= 2


def test_votes_from_concurrent_clients_are_counted_exactly_on_a_cluster(
    tmp_path: Path, redis_cluster: LocalCluster
) -> None:
    with local_stack(
        tmp_path,
        database="buzzer_test_cluster",
        ingest=2,
        extra_env={"REDIS_URL": redis_cluster.url},
    ) as rs:
        asyncio.run(run_pipeline(rs))
