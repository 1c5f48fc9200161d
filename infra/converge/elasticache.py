"""The Redis tier: one ElastiCache replication group in cluster mode (shards of a primary
and its replicas, Multi-AZ, automatic failover, TLS) in a cache subnet group of the
private subnets, behind the ``redis`` security group.

Found by its id (``buzzer-<show>``) and checked for the show's tag: a group of that
name that is not the show's is an error, never adopted. Shards are only ever added
(online resharding); fewer shards, or other replicas per shard, are left to an
operator, as the run sheet's capacity never goes down on its own.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from infra.converge.runner import (
    REMOVAL_ORDER,
    Change,
    Run,
    converge_subnet_group,
    error_code,
    remove_subnet_group,
)
from infra.desired import REDIS_PORT, SHOW_TAG, CacheSpec, cache_group_id, resource_name
from infra.userdata import cluster_url


def converge(run: Run) -> None:
    spec = run.want.cache
    group_id = spec.group_id if spec else cache_group_id(run.want.show)
    live = _live_group(run, group_id)
    if spec is None:
        _remove(run, live)
        return
    if live is not None and live.get("Status") == "deleting":
        raise RuntimeError(f"replication group {group_id} is being deleted; re-run once it is gone")
    converge_subnet_group(
        run,
        run.aws.elasticache,
        "Cache",
        spec.subnet_group,
        "redis",
        f"buzzer Redis of show {run.want.show}",
    )
    if live is None:
        _create(run, spec)
    else:
        _update(run, spec, live)


def _live_group(run: Run, group_id: str) -> dict[str, Any] | None:
    ec = run.aws.elasticache
    run.read(f"ElastiCache replication group {group_id}")
    try:
        group: dict[str, Any] = ec.describe_replication_groups(ReplicationGroupId=group_id)[
            "ReplicationGroups"
        ][0]
    except Exception as exc:
        if error_code(exc) == "ReplicationGroupNotFoundFault":
            return None
        raise
    tags = run.tags_of({"Tags": ec.list_tags_for_resource(ResourceName=group["ARN"])["TagList"]})
    if tags.get(SHOW_TAG) != run.want.show:
        raise RuntimeError(
            f"ElastiCache replication group {group_id} exists but is not tagged"
            f" {SHOW_TAG}={run.want.show}: rename the show or remove that group"
        )
    return group


def _create(run: Run, spec: CacheSpec) -> None:
    kwargs: dict[str, Any] = {
        "ReplicationGroupId": spec.group_id,
        "ReplicationGroupDescription": f"buzzer votes of show {run.want.show}",
        "Engine": "redis",
        "EngineVersion": spec.engine_version,
        "CacheNodeType": spec.node_type,
        "ClusterMode": "enabled",
        "CacheParameterGroupName": _parameter_group(spec.engine_version),
        "NumNodeGroups": spec.shards,
        "ReplicasPerNodeGroup": spec.replicas,
        "AutomaticFailoverEnabled": True,
        "MultiAZEnabled": spec.multi_az,
        "TransitEncryptionEnabled": spec.transit_encryption,
        "AtRestEncryptionEnabled": True,
        "CacheSubnetGroupName": spec.subnet_group,
        "SecurityGroupIds": [run.out.sg_ids["redis"]],
        "Port": REDIS_PORT,
        "Tags": run.tag_list(run.want.tags("redis")),
    }
    if spec.slots is not None:
        # NumNodeGroups stays: AWS wants both to agree.
        kwargs["NodeGroupConfiguration"] = [
            {"NodeGroupId": f"{i + 1:04d}", "Slots": slots, "ReplicaCount": spec.replicas}
            for i, slots in enumerate(spec.slots)
        ]
        del kwargs["ReplicasPerNodeGroup"]
    detail = (
        f"{spec.shards} shard(s) x (1 + {spec.replicas} replica(s)) {spec.node_type},"
        f" Multi-AZ {'on' if spec.multi_az else 'off'}, TLS {'on' if spec.transit_encryption else 'off'}"
    )
    made = run.do(
        Change("create", "replication-group", spec.group_id, detail),
        partial(_create_and_wait, run),
        **kwargs,
    )
    if made is None:
        run.out.endpoints["redis_url"] = f"(new replication group {spec.group_id})"
    else:
        _publish(run, spec, made)


def _create_and_wait(run: Run, **kwargs: Any) -> dict[str, Any]:
    ec = run.aws.elasticache
    ec.create_replication_group(**kwargs)
    run.doing = f"waiting for replication group {kwargs['ReplicationGroupId']}"
    ec.get_waiter("replication_group_available").wait(
        ReplicationGroupId=kwargs["ReplicationGroupId"], WaiterConfig=run.waiter_config()
    )
    group: dict[str, Any] = ec.describe_replication_groups(
        ReplicationGroupId=kwargs["ReplicationGroupId"]
    )["ReplicationGroups"][0]
    return group


def _parameter_group(engine_version: str) -> str:
    # Cluster mode needs cluster-enabled yes: the default group of the major version.
    return f"default.redis{engine_version.split('.')[0]}.cluster.on"


def _publish(run: Run, spec: CacheSpec, group: dict[str, Any]) -> None:
    ep = group.get("ConfigurationEndpoint") or {}
    if not ep.get("Address"):
        raise RuntimeError(
            f"replication group {spec.group_id} has no configuration endpoint: is it in"
            f" cluster mode? (status {group.get('Status')})"
        )
    run.out.endpoints["redis_url"] = cluster_url(
        ep["Address"], int(ep.get("Port") or REDIS_PORT), spec.transit_encryption
    )


def _update(run: Run, spec: CacheSpec, live: dict[str, Any]) -> None:
    ec = run.aws.elasticache
    shards = len(live.get("NodeGroups", []))
    if shards < spec.shards:
        if live.get("Status") != "available":
            run.do(Change("hold", "replication-group", spec.group_id, f"is {live.get('Status')}"))
        else:
            run.do(
                Change(
                    "update",
                    "replication-group",
                    spec.group_id,
                    f"shards {shards} -> {spec.shards} (online resharding)",
                ),
                ec.modify_replication_group_shard_configuration,
                ReplicationGroupId=spec.group_id,
                NodeGroupCount=spec.shards,
                ApplyImmediately=True,
            )
    elif shards > spec.shards:
        run.do(
            Change(
                "hold",
                "replication-group",
                spec.group_id,
                f"{shards} shards live, {spec.shards} planned: never removed by apply",
            )
        )
    replicas = min((len(g.get("NodeGroupMembers", [])) - 1 for g in live["NodeGroups"]), default=0)
    if replicas != spec.replicas:
        run.do(
            Change(
                "hold",
                "replication-group",
                spec.group_id,
                f"{replicas} replica(s) per shard live, {spec.replicas} in the run sheet:"
                " change them with increase/decrease-replica-count",
            )
        )
    if live.get("CacheNodeType") != spec.node_type:
        if run.want.frozen:
            run.do(
                Change(
                    "hold",
                    "replication-group",
                    spec.group_id,
                    f"node type {live.get('CacheNodeType')} kept while the show is on",
                )
            )
        else:
            run.do(
                Change(
                    "update",
                    "replication-group",
                    spec.group_id,
                    f"node type {live.get('CacheNodeType')} -> {spec.node_type}",
                ),
                ec.modify_replication_group,
                ReplicationGroupId=spec.group_id,
                CacheNodeType=spec.node_type,
                ApplyImmediately=True,
            )
    _publish(run, spec, live)


def _remove(run: Run, live: dict[str, Any] | None) -> None:
    # The votes' durable copy is PostgreSQL's; Redis holds nothing worth a snapshot
    # once the show is over.
    if live is not None:
        group_id = live["ReplicationGroupId"]
        if live.get("Status") == "deleting":
            # An interrupted destroy: only its end is still to be waited for.
            run.later(REMOVAL_ORDER["replication-group"], None, partial(_wait_gone, run, group_id))
        else:
            run.later(
                REMOVAL_ORDER["replication-group"],
                Change("delete", "replication-group", group_id),
                partial(_delete_and_wait, run, group_id),
            )
    remove_subnet_group(run, run.aws.elasticache, "Cache", resource_name(run.want.show, "redis"))


def _delete_and_wait(run: Run, group_id: str) -> None:
    ec = run.aws.elasticache
    ec.delete_replication_group(ReplicationGroupId=group_id)
    _wait_gone(run, group_id)


def _wait_gone(run: Run, group_id: str) -> None:
    # The subnet group and the security group are in use until the nodes are gone.
    run.doing = f"waiting for replication group {group_id} to go"
    run.aws.elasticache.get_waiter("replication_group_deleted").wait(
        ReplicationGroupId=group_id, WaiterConfig=run.waiter_config()
    )
