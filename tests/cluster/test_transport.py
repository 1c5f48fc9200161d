"""The appender's transport on a real cluster: one pipeline per primary, MOVED and ASK
followed, WAIT that does not confirm turns into a refusal, never into a reply."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.cluster
from hiredis import pack_command
from redis.asyncio import Redis
from redis.cluster import key_slot

from buzzer.rediscluster import LocalCluster
from services.common.redisconn import (
    ReplicasBehind,
    connect,
    is_cluster,
    seed_nodes,
    wait_replicas,
)
from services.ingest.transport import ClusterNodes, NotReplicated, SingleNode, SlotUnavailable
from tests.support import wait_blocking

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[Redis]:
    client = connect(redis_cluster.url)
    yield client
    await client.aclose()


def xadd(key: str) -> tuple[str, bytes]:
    return key, pack_command(("XADD", key, "*", "f", "v"))  # type: ignore[arg-type]


def keys_for(n: int) -> dict[int, str]:
    prefix = uuid.uuid4().hex[:8]
    return {p: f"{prefix}:{{p{p}}}:votes" for p in range(n)}


def test_cluster_url_is_parsed() -> None:
    assert seed_nodes("redis+cluster://a:7000,b:7001") == [("a", 7000), ("b", 7001)]
    assert seed_nodes("rediss+cluster://user:pw@h") == [("h", 6379)]
    assert not is_cluster(connect("redis://127.0.0.1:6379/0"))
    assert is_cluster(connect("redis+cluster://127.0.0.1:7000"))


async def test_calls_grouped_per_primary_and_answered_per_partition(
    cluster_client: Redis, redis_cluster: LocalCluster
) -> None:
    keys = keys_for(8)
    transport = ClusterNodes(cluster_client)  # type: ignore[arg-type]
    replies = await transport.execute({p: xadd(k) for p, k in keys.items()})
    assert sorted(replies) == list(range(8))
    assert all(isinstance(r, bytes) and b"-" in r for r in replies.values())
    owners = {redis_cluster.primary_for_slot(key_slot(k.encode())) for k in keys.values()}
    assert len(owners) > 1  # the calls really went to several primaries
    for k in keys.values():
        assert await cluster_client.xlen(k) == 1


async def test_moved_is_followed_after_a_stale_slot_map(
    cluster_client: Redis, redis_cluster: LocalCluster
) -> None:
    keys = keys_for(4)
    transport = ClusterNodes(cluster_client)  # type: ignore[arg-type]
    await transport.execute({p: xadd(k) for p, k in keys.items()})
    rc = cluster_client  # the slot map the transport routes by
    slot = key_slot(keys[0].encode())
    right = rc.nodes_manager.slots_cache[slot][0]  # type: ignore[attr-defined]
    wrong = next(n for n in rc.get_primaries() if n.name != right.name)  # type: ignore[attr-defined]
    rc.nodes_manager.slots_cache[slot] = [wrong]  # type: ignore[attr-defined]
    replies = await transport.execute({0: xadd(keys[0])})
    assert isinstance(replies[0], bytes)
    assert transport.redirects >= 1
    assert rc.nodes_manager.slots_cache[slot][0].name == right.name  # type: ignore[attr-defined]
    assert await cluster_client.xlen(keys[0]) == 2


async def test_ask_during_a_slot_migration_goes_to_the_importing_node(
    cluster_client: Redis, redis_cluster: LocalCluster
) -> None:
    while True:  # a slot of its own, empty, so the migration can be completed after
        key = f"{{ask-{uuid.uuid4().hex[:8]}}}:votes"
        slot = key_slot(key.encode())
        source = redis_cluster.primary_for_slot(slot)
        if redis_cluster.cli(source, "CLUSTER", "COUNTKEYSINSLOT", str(slot)).strip() == "0":
            break
    rows = redis_cluster.nodes()
    target = next(
        int(r["port"])
        for r in rows
        if r["role"] == "primary"
        and not r["failed"]
        and int(r["port"]) != source
        and int(r["port"]) in redis_cluster.alive_ports()
    )
    ids = {int(r["port"]): r["id"] for r in rows}
    transport = ClusterNodes(cluster_client)  # type: ignore[arg-type]
    await cluster_client.ping()
    redis_cluster.cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
    redis_cluster.cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
    try:
        # The key does not exist on the source, so the source answers ASK.
        replies = await transport.execute({0: xadd(key)})
        assert isinstance(replies[0], bytes), replies
        assert transport.redirects == 1
        assert redis_cluster.cli(target, "CLUSTER", "COUNTKEYSINSLOT", str(slot)).strip() == "1"
        assert redis_cluster.cli(source, "CLUSTER", "COUNTKEYSINSLOT", str(slot)).strip() == "0"
    finally:
        # Complete the migration: the slot and its one key now live on the target.
        for port in (target, source):
            redis_cluster.cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])
    assert await cluster_client.xlen(key) == 1


async def test_wait_confirms_with_a_replica_and_refuses_without(
    cluster_client: Redis, redis: Redis, key_prefix: str
) -> None:
    keys = keys_for(4)
    acked = ClusterNodes(cluster_client, ack_replicas=1, ack_timeout_ms=2000)  # type: ignore[arg-type]
    replies = await acked.execute({p: xadd(k) for p, k in keys.items()})
    assert all(isinstance(r, bytes) for r in replies.values()), replies
    # The shared test Redis has no replica: WAIT reaches 0, so nothing is a reply.
    single = SingleNode(redis, ack_replicas=1, ack_timeout_ms=50)
    try:
        refused = await single.execute({p: xadd(f"{key_prefix}:{{p{p}}}:votes") for p in range(2)})
    finally:
        await single.aclose()
    assert all(isinstance(r, NotReplicated) for r in refused.values())
    assert issubclass(SlotUnavailable, Exception)
    # The same check the PostgreSQL writer makes before it commits an outbox batch.
    await wait_replicas(cluster_client, keys[0], 1, 2000)
    with pytest.raises(ReplicasBehind):
        await wait_replicas(redis, f"{key_prefix}:{{p0}}:applied", 1, 50)


async def test_first_pipelines_are_on_their_way_before_execute_returns(
    cluster_client: Redis, redis_cluster: LocalCluster
) -> None:
    transport = ClusterNodes(cluster_client)  # type: ignore[arg-type]
    keys = keys_for(8)
    await transport.execute({p: xadd(k) for p, k in keys.items()})  # slot map, connections
    pending = transport.execute({p: xadd(k) for p, k in keys.items()})
    sync = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        # Redis has run the calls while this task never gave the loop a turn.
        written = wait_blocking(lambda: all(sync.xlen(k) == 2 for k in keys.values()))
    finally:
        sync.close()
    replies = await pending
    assert written, "the pipelines reached Redis only once the loop ran"
    assert sorted(replies) == list(range(8))
    assert all(isinstance(r, bytes) for r in replies.values())
