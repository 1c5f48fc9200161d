"""Security groups, one per tier, and their ingress rules (other tiers' groups or CIDRs)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from infra.converge.runner import REMOVAL_ORDER, Change, Run
from infra.desired import TIER_TAG, Rule
from infra.runsheet import GroupKey


def converge(run: Run) -> None:
    run.out.sg_ids = _security_groups(run)


def _security_groups(run: Run) -> dict[GroupKey, str]:
    ec2 = run.aws.ec2
    run.read("security groups")
    live: dict[str, dict[str, Any]] = {}
    filters = [*run.filters(), {"Name": "vpc-id", "Values": [run.want.vpc_id]}]
    for page in ec2.get_paginator("describe_security_groups").paginate(Filters=filters):
        for g in page["SecurityGroups"]:
            live[run.tags_of(g).get(TIER_TAG, g["GroupName"])] = g

    ids: dict[GroupKey, str] = {}
    for spec in run.want.security_groups:
        g = live.pop(spec.tier, None)
        if g is not None:
            ids[spec.tier] = g["GroupId"]
            continue
        tags = {**run.want.tags(spec.tier), "Name": spec.name}
        made = run.do(
            Change("create", "security-group", spec.name),
            ec2.create_security_group,
            GroupName=spec.name,
            Description=f"buzzer {spec.tier} of show {run.want.show}",
            VpcId=run.want.vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": run.tag_list(tags)}],
        )
        ids[spec.tier] = made["GroupId"] if made else f"(new {spec.name})"

    by_id = {v: k for k, v in ids.items()}
    for spec in run.want.security_groups:
        gid = ids[spec.tier]
        have = _parse_rules(_group_perms(run, gid), by_id)
        add = sorted(spec.rules - have.keys())
        drop = [have[r] for r in sorted(have.keys() - spec.rules)]
        if add:
            perms = [_perm(r, ids) for r in add]
            run.do(
                Change("update", "security-group", spec.name, "+ " + ", ".join(map(str, add))),
                ec2.authorize_security_group_ingress,
                GroupId=gid,
                IpPermissions=perms,
            )
        if drop:
            run.later(
                REMOVAL_ORDER["security-group-rule"],
                Change("update", "security-group", spec.name, f"- {len(drop)} stale rule(s)"),
                partial(ec2.revoke_security_group_ingress, GroupId=gid, IpPermissions=drop),
            )

    for key, g in live.items():
        perms = g.get("IpPermissions", [])
        if perms:
            # Groups that reference each other can only go once the references do.
            run.later(
                REMOVAL_ORDER["security-group-all-rules"],
                Change("update", "security-group", g["GroupName"], "- all rules"),
                partial(
                    ec2.revoke_security_group_ingress, GroupId=g["GroupId"], IpPermissions=perms
                ),
            )
        run.later(
            REMOVAL_ORDER["security-group"],
            Change("delete", "security-group", g["GroupName"], f"tier {key}"),
            partial(_delete_group, run, g["GroupId"]),
        )
    return ids


def _group_perms(run: Run, gid: str) -> list[dict[str, Any]]:
    if gid.startswith("("):
        return []
    run.read(f"rules of {gid}")
    groups = run.aws.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    perms: list[dict[str, Any]] = groups[0].get("IpPermissions", [])
    return perms


def _parse_rules(
    perms: Iterable[dict[str, Any]], by_id: dict[str, GroupKey]
) -> dict[Rule, dict[str, Any]]:
    """Live permissions as our rules, each with the exact permission to revoke it."""
    out: dict[Rule, dict[str, Any]] = {}
    for p in perms:
        proto = p.get("IpProtocol", "tcp")
        port = int(p.get("FromPort", -1))
        base: dict[str, Any] = {k: p[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in p}
        exact = p.get("FromPort") == p.get("ToPort")
        for r in p.get("IpRanges", []):
            rule = Rule(port if exact else -1, cidr=r["CidrIp"], protocol=proto)
            out[rule] = {**base, "IpRanges": [{"CidrIp": r["CidrIp"]}]}
        for r in p.get("Ipv6Ranges", []):
            rule = Rule(port if exact else -1, cidr=r["CidrIpv6"], protocol=proto)
            out[rule] = {**base, "Ipv6Ranges": [{"CidrIpv6": r["CidrIpv6"]}]}
        for r in p.get("UserIdGroupPairs", []):
            tier = by_id.get(r["GroupId"])
            rule = Rule(
                port if exact else -1,
                cidr=None if tier else f"sg:{r['GroupId']}",
                source=tier,
                protocol=proto,
            )
            out[rule] = {**base, "UserIdGroupPairs": [{"GroupId": r["GroupId"]}]}
    return out


def _perm(rule: Rule, ids: dict[GroupKey, str]) -> dict[str, Any]:
    p: dict[str, Any] = {
        "IpProtocol": rule.protocol,
        "FromPort": rule.port,
        "ToPort": rule.port,
    }
    if rule.source is not None:
        p["UserIdGroupPairs"] = [{"GroupId": ids[rule.source]}]
    elif rule.cidr and ":" in rule.cidr:
        p["Ipv6Ranges"] = [{"CidrIpv6": rule.cidr}]
    else:
        p["IpRanges"] = [{"CidrIp": rule.cidr}]
    return p


def _delete_group(run: Run, gid: str) -> None:
    from botocore.exceptions import ClientError

    # Terminated instances' network interfaces linger for a while after the
    # instance is gone; until then the group is "in use".
    deadline = time.monotonic() + run.opts.timeout_s
    while True:
        try:
            run.aws.ec2.delete_security_group(GroupId=gid)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "InvalidGroup.NotFound":
                return
            if code != "DependencyViolation" or time.monotonic() > deadline:
                raise
        time.sleep(run.opts.poll_s)
