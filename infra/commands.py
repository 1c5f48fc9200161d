"""The four operations on a show's fleet, given a run sheet and boto3 clients."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from infra import desired as desired_mod
from infra import timeline as timeline_mod
from infra.aws import Clients
from infra.converge import Change, Converger, Options
from infra.desired import SHOW_TAG, TIER_TAG
from infra.runsheet import ASG_TIERS, RunSheet

Echo = Callable[[str], None]


def want(sheet: RunSheet, region: str, now: datetime) -> desired_mod.Desired:
    return desired_mod.build(sheet, timeline_mod.build(sheet), now, region)


def plan(sheet: RunSheet, aws: Clients, now: datetime, echo: Echo = print) -> list[Change]:
    """What ``apply`` would do now, against what is live; changes nothing."""
    opts = Options(dry_run=True, echo=echo)
    return Converger(aws, want(sheet, aws.region, now), opts).run()


def apply(sheet: RunSheet, aws: Clients, now: datetime, opts: Options) -> list[Change]:
    return Converger(aws, want(sheet, aws.region, now), opts).run()


def destroy(
    sheet: RunSheet, aws: Clients, opts: Options, confirm: Callable[[str], bool]
) -> list[Change] | None:
    """Everything of the show, after ``confirm`` agreed to the list; ``None`` if it didn't."""
    empty = desired_mod.empty(sheet, aws.region)
    preview = Converger(aws, empty, Options(dry_run=True, echo=lambda _: None)).run()
    removals = [c for c in preview if c.action == "delete"]
    if not removals:
        opts.echo(f"nothing of show {sheet.show} found in {aws.region}")
        return []
    listing = "\n".join(str(c) for c in removals)
    if not confirm(f"{listing}\n\ndestroy these {len(removals)} resources of show {sheet.show}?"):
        return None
    return Converger(aws, empty, opts).run()


def status(sheet: RunSheet, aws: Clients, now: datetime, echo: Echo = print) -> list[Change]:
    """Live fleet against the plan for ``now``; returns the drift (empty when in step)."""
    tl = timeline_mod.build(sheet)
    echo(f"show {sheet.show} in {aws.region} at {now:%Y-%m-%d %H:%M} UTC")
    echo("")
    groups = {
        g["AutoScalingGroupName"]: g
        for page in aws.autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
            Filters=[{"Name": f"tag:{SHOW_TAG}", "Values": [sheet.show]}]
        )
        for g in page["AutoScalingGroups"]
    }
    echo(f"{'tier':<8}  {'planned':>7}  {'desired':>7}  {'in service':>10}")
    for tier in ASG_TIERS:
        g = groups.get(desired_mod.resource_name(sheet.show, tier))
        planned = tl.level_at(tier, now)
        if g is None:
            echo(f"{tier:<8}  {planned:>7}  {'-':>7}  {'missing':>10}")
            continue
        up = sum(1 for i in g.get("Instances", []) if i.get("LifecycleState") == "InService")
        echo(f"{tier:<8}  {planned:>7}  {g['DesiredCapacity']:>7}  {up:>10}")
    filters = [
        {"Name": f"tag:{SHOW_TAG}", "Values": [sheet.show]},
        {"Name": f"tag:{TIER_TAG}", "Values": ["haproxy"]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ]
    nodes = [
        i
        for page in aws.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        for r in page["Reservations"]
        for i in r["Instances"]
    ]
    running = sum(1 for i in nodes if i["State"]["Name"] == "running")
    echo(f"{'haproxy':<8}  {tl.haproxy_nodes:>7}  {len(nodes):>7}  {running:>10}")
    if sheet.data.redis is not None:
        group = _replication_group(aws, desired_mod.cache_group_id(sheet.show))
        live = f"{len(group['NodeGroups'])} shards" if group else "missing"
        status = group.get("Status", "") if group else ""
        echo(f"{'redis':<8}  {tl.peak.redis_shards:>7}  {live:>7}  {status:>10}")
    echo("")
    drift = plan(sheet, aws, now, echo=lambda _: None)
    if drift:
        echo(f"{len(drift)} difference(s) from the plan; `buzzer infra apply` fixes them:")
        for c in drift:
            echo(str(c))
    else:
        echo("live fleet matches the plan")
    return drift


def _replication_group(aws: Clients, group_id: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        group: dict[str, Any] = aws.elasticache.describe_replication_groups(
            ReplicationGroupId=group_id
        )["ReplicationGroups"][0]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ReplicationGroupNotFoundFault":
            return None
        raise
    return group
