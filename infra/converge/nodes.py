"""The HAProxy nodes: one EC2 instance per slot (not an auto scaling group, so each has
its own address and Route 53 health check); a node whose spec changed is replaced."""

from __future__ import annotations

from functools import partial
from typing import Any

from infra.converge.runner import REMOVAL_ORDER, Change, Node, Run
from infra.desired import SLOT_TAG, SPEC_TAG, TIER_TAG
from infra.runsheet import GroupKey

LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def converge(run: Run) -> None:
    run.out.nodes = _nodes(run, run.out.sg_ids, run.out.digests)


def _live_nodes(run: Run) -> dict[str, list[dict[str, Any]]]:
    run.read("HAProxy instances")
    filters = [
        *run.filters(**{TIER_TAG: "haproxy"}),
        {"Name": "instance-state-name", "Values": LIVE_STATES},
    ]
    out: dict[str, list[dict[str, Any]]] = {}
    for page in run.aws.ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for r in page["Reservations"]:
            for i in r["Instances"]:
                out.setdefault(run.tags_of(i).get(SLOT_TAG, "?"), []).append(i)
    return out


def _nodes(run: Run, sg_ids: dict[GroupKey, str], digests: dict[str, str]) -> dict[str, Node]:
    ec2 = run.aws.ec2
    live = _live_nodes(run)
    result: dict[str, Node] = {}
    launched: list[str] = []
    for spec in run.want.nodes:
        digest = digests[spec.template]
        insts = live.pop(spec.slot, [])

        # The up-to-date, oldest instance of a slot is the one kept; anything else in
        # the slot is a leftover of an interrupted run or a replacement's predecessor.
        def outdated(i: dict[str, Any], d: str = digest, s: str = spec.subnet) -> bool:
            return run.tags_of(i).get(SPEC_TAG) != d or i.get("SubnetId") != s

        insts.sort(key=lambda i: (outdated(i), i["LaunchTime"]))
        keep = insts[0] if insts else None
        stale = keep is not None and outdated(keep)
        for extra in insts[1:]:
            run.later(
                REMOVAL_ORDER["instance"],
                Change("delete", "instance", f"{spec.slot} {extra['InstanceId']}", "duplicate"),
                partial(ec2.terminate_instances, InstanceIds=[extra["InstanceId"]]),
            )
        if keep is not None and stale and run.want.frozen:
            run.do(Change("hold", "instance", spec.slot, "out of date, kept: the show is on"))
        elif keep is not None and stale:
            old = keep
            keep = None
            run.later(
                REMOVAL_ORDER["instance"],
                Change("delete", "instance", f"{spec.slot} {old['InstanceId']}", "replaced"),
                partial(ec2.terminate_instances, InstanceIds=[old["InstanceId"]]),
            )
        if keep is not None:
            if keep["State"]["Name"] in ("stopped", "stopping"):
                run.do(
                    Change("update", "instance", spec.slot, "start"),
                    partial(ec2.start_instances, InstanceIds=[keep["InstanceId"]]),
                )
                launched.append(keep["InstanceId"])
            result[spec.slot] = Node(spec.slot, keep["InstanceId"], keep.get("PublicIpAddress"))
            continue
        tags = {
            **run.want.tags("haproxy"),
            "Name": f"buzzer-{run.want.show}-{spec.slot}",
            SLOT_TAG: spec.slot,
            SPEC_TAG: digest,
        }
        tag_list = run.tag_list(tags)
        made = run.do(
            Change("create", "instance", spec.slot, f"in {spec.subnet}"),
            ec2.run_instances,
            LaunchTemplate={"LaunchTemplateName": spec.template, "Version": "$Default"},
            MinCount=1,
            MaxCount=1,
            # Same token on a retried call: AWS returns the first call's instance.
            ClientToken=f"buzzer-{run.want.show}-{spec.slot}-{digest}"[:64],
            NetworkInterfaces=[
                {
                    "DeviceIndex": 0,
                    "SubnetId": spec.subnet,
                    "Groups": [sg_ids["haproxy"]],
                    "AssociatePublicIpAddress": True,
                }
            ],
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        )
        iid = made["Instances"][0]["InstanceId"] if made else None
        if iid:
            launched.append(iid)
        result[spec.slot] = Node(spec.slot, iid, None)

    for slot, insts in live.items():
        for i in insts:
            run.later(
                REMOVAL_ORDER["instance"],
                Change("delete", "instance", f"{slot} {i['InstanceId']}"),
                partial(ec2.terminate_instances, InstanceIds=[i["InstanceId"]]),
            )
    if not run.want.nodes and live and not run.opts.dry_run:
        ids = [i["InstanceId"] for insts in live.values() for i in insts]
        # Security groups can only go once their instances have.
        run.later(REMOVAL_ORDER["instances-gone"], None, lambda: _wait_terminated(run, ids))

    if launched and not run.opts.dry_run:
        run.doing = "waiting for HAProxy instances to run"
        ec2.get_waiter("instance_running").wait(
            InstanceIds=launched,
            WaiterConfig=run.waiter_config(),
        )
        by_id = {
            i["InstanceId"]: i
            for r in ec2.describe_instances(InstanceIds=launched)["Reservations"]
            for i in r["Instances"]
        }
        for node in result.values():
            if node.instance_id in by_id:
                node.ip = by_id[node.instance_id].get("PublicIpAddress")
    return result


def _wait_terminated(run: Run, ids: list[str]) -> None:
    run.aws.ec2.get_waiter("instance_terminated").wait(
        InstanceIds=ids,
        WaiterConfig=run.waiter_config(),
    )
