"""Auto scaling groups of the service tiers and their scheduled actions (the show's
warm-up and wind-down)."""

from __future__ import annotations

from datetime import UTC
from functools import partial
from typing import Any

from infra.converge.runner import REMOVAL_ORDER, Change, Run
from infra.desired import GroupSpec


def converge(run: Run) -> None:
    _groups(run)


def _groups(run: Run) -> None:
    asg = run.aws.autoscaling
    run.read("auto scaling groups")
    live = {
        g["AutoScalingGroupName"]: g
        for page in asg.get_paginator("describe_auto_scaling_groups").paginate(
            Filters=run.filters()
        )
        for g in page["AutoScalingGroups"]
    }
    for spec in run.want.groups:
        g = live.pop(spec.name, None)
        if g is None:
            _create_group(run, spec)
        else:
            _update_group(run, spec, g)
        _actions(run, spec, exists=g is not None)
    for name in live:
        run.later(
            REMOVAL_ORDER["auto-scaling-group"],
            Change("delete", "auto-scaling-group", name, "and its instances"),
            partial(_delete_asg, run, name),
        )


def _create_group(run: Run, spec: GroupSpec) -> None:
    tags = [
        {
            "Key": k,
            "Value": v,
            "PropagateAtLaunch": True,
            "ResourceId": spec.name,
            "ResourceType": "auto-scaling-group",
        }
        for k, v in sorted({**run.want.tags(spec.tier), "Name": spec.name}.items())
    ]
    run.do(
        Change(
            "create",
            "auto-scaling-group",
            spec.name,
            f"min/desired {spec.min_size}/{spec.desired}, max {spec.max_size}",
        ),
        lambda: run.aws.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=spec.name,
            LaunchTemplate={"LaunchTemplateName": spec.template, "Version": "$Default"},
            MinSize=spec.min_size,
            MaxSize=spec.max_size,
            DesiredCapacity=spec.desired,
            VPCZoneIdentifier=",".join(run.want.private_subnets),
            Tags=tags,
        ),
    )


def _update_group(run: Run, spec: GroupSpec, g: dict[str, Any]) -> None:
    min_size, desired = spec.min_size, spec.desired
    if run.want.frozen:
        # On air, an operator's manual bump wins: apply only ever raises.
        min_size = max(min_size, g["MinSize"])
        desired = max(desired, g["DesiredCapacity"])
    want: dict[str, Any] = {
        "MinSize": min_size,
        "MaxSize": max(spec.max_size, desired),
        "DesiredCapacity": desired,
    }
    diff = {k: v for k, v in want.items() if g.get(k) != v}
    subnets = ",".join(run.want.private_subnets)
    if set(g.get("VPCZoneIdentifier", "").split(",")) != set(run.want.private_subnets):
        diff["VPCZoneIdentifier"] = subnets
    if not diff:
        return
    detail = ", ".join(f"{k} {g.get(k)} -> {v}" for k, v in diff.items())
    run.do(
        Change("update", "auto-scaling-group", spec.name, detail),
        lambda: run.aws.autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=spec.name, **diff
        ),
    )


def _actions(run: Run, spec: GroupSpec, exists: bool) -> None:
    asg = run.aws.autoscaling
    live: dict[str, dict[str, Any]] = {}
    if exists or not run.opts.dry_run:
        run.read(f"scheduled actions of {spec.name}")
        for page in asg.get_paginator("describe_scheduled_actions").paginate(
            AutoScalingGroupName=spec.name
        ):
            for a in page["ScheduledUpdateGroupActions"]:
                live[a["ScheduledActionName"]] = a
    for a in spec.actions:
        have = live.pop(a.name, None)
        at = a.at.astimezone(UTC)
        detail = f"{at:%Y-%m-%d %H:%M} UTC -> min/desired {a.min_size}/{a.desired}"
        if have is not None and (
            have["StartTime"].astimezone(UTC) == at
            and have.get("MinSize") == a.min_size
            and have.get("DesiredCapacity") == a.desired
        ):
            continue
        run.do(
            Change(
                "create" if have is None else "update",
                "scheduled-action",
                f"{spec.name}/{a.name}",
                detail,
            ),
            asg.put_scheduled_update_group_action,
            AutoScalingGroupName=spec.name,
            ScheduledActionName=a.name,
            StartTime=at,
            MinSize=a.min_size,
            DesiredCapacity=a.desired,
        )
    for name in live:
        run.later(
            REMOVAL_ORDER["scheduled-action"],
            Change("delete", "scheduled-action", f"{spec.name}/{name}"),
            partial(
                asg.delete_scheduled_action,
                AutoScalingGroupName=spec.name,
                ScheduledActionName=name,
            ),
        )


def _delete_asg(run: Run, name: str) -> None:
    asg = run.aws.autoscaling
    # AWS drops scheduled actions with their group, moto doesn't; one call each
    # makes the end state the same on both.
    for page in asg.get_paginator("describe_scheduled_actions").paginate(AutoScalingGroupName=name):
        for a in page["ScheduledUpdateGroupActions"]:
            asg.delete_scheduled_action(
                AutoScalingGroupName=name, ScheduledActionName=a["ScheduledActionName"]
            )
    asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    run.wait(
        f"auto scaling group {name} to go",
        lambda: (
            not asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        ),
    )
