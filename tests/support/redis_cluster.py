"""A real local Redis Cluster for tests: 3 primaries and 3 replicas from redis-server.

Each node runs ``--appendonly yes --appendfsync always`` (what a 202 means on one
node) with ``--cluster-node-timeout 1000``, so a killed primary's replica takes over
in about two seconds. The cluster lives in the test's tmp dir and is killed and
removed afterwards, also when the test fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from buzzer.rediscluster import LocalCluster


def start_cluster(base_dir: Path) -> LocalCluster:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed (Debian package redis-server)")
    return LocalCluster(base_dir=base_dir, node_timeout_ms=1000, appendfsync="always").start()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster per test module: tests that kill a node restore nothing, so a
    module's tests must tolerate the topology its earlier tests left (every slot
    still has a primary)."""
    base = tmp_path_factory.mktemp("redis-cluster")
    cluster = start_cluster(base)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of its own, for a test that kills nodes."""
    cluster = start_cluster(tmp_path / "redis-cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
