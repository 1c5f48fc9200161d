"""Stream reads on a cluster survive the failover of the client's default node.

redis-py asks the default node for the keys of every XREAD and XREADGROUP; when that
node died, push's reader asked the dead node forever and its viewers saw no more
counts (services/common/redisconn.py, ``Cluster``)."""

from __future__ import annotations

import asyncio

import pytest
from redis.cluster import key_slot
from redis.exceptions import RedisError

from buzzer.rediscluster import LocalCluster
from services.common.redisconn import connect, stream_read_keys
from tests.support import eventually

pytestmark = pytest.mark.integration


def test_stream_read_keys_are_the_first_half_after_streams() -> None:
    assert stream_read_keys(("COUNT", 10, "BLOCK", 1000, "STREAMS", "a", "b", "0", "$")) == [
        "a",
        "b",
    ]
    group = ("GROUP", "g", "c", "COUNT", 5, "STREAMS", b"{p1}:votes", ">")
    assert stream_read_keys(group) == [b"{p1}:votes"]
    assert stream_read_keys((b"streams", "k", "0")) == ["k"]
    assert stream_read_keys(("COUNT", 1)) == []


async def test_stream_reads_survive_the_failover_of_the_clients_default_node(
    fresh_redis_cluster: LocalCluster,
) -> None:
    cluster = fresh_redis_cluster
    client = connect(cluster.url)
    try:
        await client.ping()
        victim = client.get_default_node().port  # type: ignore[attr-defined]
        # The stream lives on another primary: only the default node's death is in play.
        survivor = next(p for p in cluster.primary_ports() if p != victim)
        key = next(
            k
            for k in (f"stream-{i}" for i in range(10_000))
            if cluster.primary_for_slot(key_slot(k.encode())) == survivor
        )
        await client.xadd(key, {"f": "v"})
        await client.xgroup_create(key, "g", id="0")
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_promoted, victim, 30.0)

        async def both_read() -> bool:
            try:
                plain = await client.xread({key: "0-0"}, count=10)
                grouped = await client.xreadgroup("g", "c", {key: "0"}, count=10)
            except RedisError:
                return False  # a few refusals while the client learns the topology
            return bool(plain) and bool(grouped)

        await eventually(both_read, timeout=20, interval=0.5)
    finally:
        await client.aclose()
