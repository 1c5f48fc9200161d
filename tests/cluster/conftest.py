"""Fixtures of the Redis Cluster tier (a real local cluster; see tests/support/redis_cluster.py)."""

from tests.support.redis_cluster import fresh_redis_cluster, redis_cluster

__all__ = ["fresh_redis_cluster", "redis_cluster"]
