"""Make AWS match a :class:`~infra.desired.Desired`, or say what that would take.

Everything is found by the show's tags (Route 53 by SetIdentifier and CallerReference,
which can't carry tags at creation), so a second run finds the first run's resources
and an interrupted run's leftovers alike. Creates and updates go forward (groups before
templates before ASGs before nodes before DNS); removals go backwards afterwards, so
nothing is deleted while something still points at it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, TypeVar

from infra.aws import Clients, InfraError, explain
from infra.desired import (
    SHOW_TAG,
    SLOT_TAG,
    SPEC_TAG,
    TIER_TAG,
    Desired,
    GroupSpec,
    Rule,
)
from infra.runsheet import Tier

T = TypeVar("T")
Action = Literal["create", "update", "replace", "delete", "hold"]
SYMBOL: dict[Action, str] = {
    "create": "+",
    "update": "~",
    "replace": "-/+",
    "delete": "-",
    "hold": "!",
}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        out = f"{SYMBOL[self.action]:>3} {self.kind} {self.name}"
        return f"{out}: {self.detail}" if self.detail else out


@dataclass
class Options:
    dry_run: bool = False
    poll_s: float = 5.0
    """Between describe calls while waiting for AWS (instances, group deletion)."""
    timeout_s: float = 900.0
    echo: Callable[[str], None] = print
    command: str = "apply"
    """Named in error messages: what to re-run."""


@dataclass
class _Node:
    slot: str
    instance_id: str | None
    ip: str | None


@dataclass
class Converger:
    aws: Clients
    want: Desired
    opts: Options = field(default_factory=Options)
    changes: list[Change] = field(default_factory=list)
    doing: str = "starting"
    _removals: list[tuple[int, Change | None, Callable[[], object] | None]] = field(
        default_factory=list
    )

    # -- plumbing ---------------------------------------------------------------------

    def _do(self, change: Change, fn: Callable[..., T] | None = None, /, **kwargs: Any) -> T | None:
        """Record ``change``; unless this is a dry run, make it with ``fn(**kwargs)``."""
        self.changes.append(change)
        self.opts.echo(str(change))
        if self.opts.dry_run or fn is None:
            return None
        self.doing = f"{change.action} {change.kind} {change.name}"
        return fn(**kwargs)

    def _later(self, order: int, change: Change | None, fn: Callable[[], object] | None) -> None:
        """Queue a removal; lower ``order`` runs first (DNS before nodes before groups)."""
        if change is not None and self.want.frozen and change.action == "delete":
            change = Change("hold", change.kind, change.name, "kept: the show is on")
            fn = None
        self._removals.append((order, change, fn))

    def _read(self, what: str) -> None:
        self.doing = f"reading {what}"

    def _filters(self, **tags: str) -> list[dict[str, Any]]:
        f = [{"Name": f"tag:{SHOW_TAG}", "Values": [self.want.show]}]
        f += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        return f

    @staticmethod
    def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

    @staticmethod
    def _tags_of(resource: dict[str, Any]) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        self.doing = f"waiting for {what}"
        deadline = time.monotonic() + self.opts.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not done after {self.opts.timeout_s:.0f} s")
            time.sleep(self.opts.poll_s)

    # -- the run ----------------------------------------------------------------------

    def run(self) -> list[Change]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._run()
        except (BotoCoreError, ClientError, TimeoutError, RuntimeError) as exc:
            raise InfraError(explain(exc, self.doing, self.opts.command)) from exc

    def _run(self) -> list[Change]:
        sg_ids = self._security_groups()
        digests = self._templates(sg_ids)
        self._groups()
        nodes = self._nodes(sg_ids, digests)
        checks = self._health_checks(nodes)
        self._records(nodes, checks)
        for _, change, fn in sorted(self._removals, key=lambda r: r[0]):
            if change is not None:
                self._do(change, fn)
            elif fn is not None and not self.opts.dry_run:
                fn()
        return self.changes

    # -- security groups --------------------------------------------------------------

    def _security_groups(self) -> dict[Tier, str]:
        ec2 = self.aws.ec2
        self._read("security groups")
        live: dict[str, dict[str, Any]] = {}
        filters = [*self._filters(), {"Name": "vpc-id", "Values": [self.want.vpc_id]}]
        for page in ec2.get_paginator("describe_security_groups").paginate(Filters=filters):
            for g in page["SecurityGroups"]:
                live[self._tags_of(g).get(TIER_TAG, g["GroupName"])] = g

        ids: dict[Tier, str] = {}
        for spec in self.want.security_groups:
            g = live.pop(spec.tier, None)
            if g is not None:
                ids[spec.tier] = g["GroupId"]
                continue
            tags = {**self.want.tags(spec.tier), "Name": spec.name}
            made = self._do(
                Change("create", "security-group", spec.name),
                ec2.create_security_group,
                GroupName=spec.name,
                Description=f"buzzer {spec.tier} of show {self.want.show}",
                VpcId=self.want.vpc_id,
                TagSpecifications=[
                    {"ResourceType": "security-group", "Tags": self._tag_list(tags)}
                ],
            )
            ids[spec.tier] = made["GroupId"] if made else f"(new {spec.name})"

        by_id = {v: k for k, v in ids.items()}
        for spec in self.want.security_groups:
            gid = ids[spec.tier]
            have = self._parse_rules(self._group_perms(gid), by_id)
            add = sorted(spec.rules - have.keys())
            drop = [have[r] for r in sorted(have.keys() - spec.rules)]
            if add:
                perms = [self._perm(r, ids) for r in add]
                self._do(
                    Change("update", "security-group", spec.name, "+ " + ", ".join(map(str, add))),
                    ec2.authorize_security_group_ingress,
                    GroupId=gid,
                    IpPermissions=perms,
                )
            if drop:
                self._later(
                    50,
                    Change("update", "security-group", spec.name, f"- {len(drop)} stale rule(s)"),
                    partial(ec2.revoke_security_group_ingress, GroupId=gid, IpPermissions=drop),
                )

        for key, g in live.items():
            perms = g.get("IpPermissions", [])
            if perms:
                # Groups that reference each other can only go once the references do.
                self._later(
                    60,
                    Change("update", "security-group", g["GroupName"], "- all rules"),
                    partial(
                        ec2.revoke_security_group_ingress, GroupId=g["GroupId"], IpPermissions=perms
                    ),
                )
            self._later(
                70,
                Change("delete", "security-group", g["GroupName"], f"tier {key}"),
                partial(self._delete_group, g["GroupId"]),
            )
        return ids

    def _group_perms(self, gid: str) -> list[dict[str, Any]]:
        if gid.startswith("("):
            return []
        self._read(f"rules of {gid}")
        groups = self.aws.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
        perms: list[dict[str, Any]] = groups[0].get("IpPermissions", [])
        return perms

    @staticmethod
    def _parse_rules(
        perms: Iterable[dict[str, Any]], by_id: dict[str, Tier]
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

    @staticmethod
    def _perm(rule: Rule, ids: dict[Tier, str]) -> dict[str, Any]:
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

    def _delete_group(self, gid: str) -> None:
        from botocore.exceptions import ClientError

        # Terminated instances' network interfaces linger for a while after the
        # instance is gone; until then the group is "in use".
        deadline = time.monotonic() + self.opts.timeout_s
        while True:
            try:
                self.aws.ec2.delete_security_group(GroupId=gid)
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "InvalidGroup.NotFound":
                    return
                if code != "DependencyViolation" or time.monotonic() > deadline:
                    raise
            time.sleep(self.opts.poll_s)

    # -- launch templates -------------------------------------------------------------

    def _templates(self, sg_ids: dict[Tier, str]) -> dict[str, str]:
        ec2 = self.aws.ec2
        self._read("launch templates")
        live = {
            t["LaunchTemplateName"]: t
            for page in ec2.get_paginator("describe_launch_templates").paginate(
                Filters=self._filters()
            )
            for t in page["LaunchTemplates"]
        }
        digests: dict[str, str] = {}
        for spec in self.want.templates:
            data = dict(spec.data)
            if spec.tier != "haproxy":
                # HAProxy nodes get their group on the network interface at launch,
                # which can't be combined with template-level groups.
                data["SecurityGroupIds"] = [sg_ids[spec.tier]]
            digest = type(spec)(spec.tier, spec.name, data).digest
            digests[spec.name] = digest
            t = live.pop(spec.name, None)
            if t is None:
                tags = self._tag_list(self.want.tags(spec.tier))
                self._do(
                    Change("create", "launch-template", spec.name, f"{data['InstanceType']}"),
                    ec2.create_launch_template,
                    LaunchTemplateName=spec.name,
                    VersionDescription=digest,
                    LaunchTemplateData=data,
                    TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
                )
                continue
            self._read(f"launch template {spec.name}")
            current = ec2.describe_launch_template_versions(
                LaunchTemplateId=t["LaunchTemplateId"], Versions=["$Default"]
            )["LaunchTemplateVersions"][0]
            if current.get("VersionDescription") == digest:
                continue

            def new_version(
                t: dict[str, Any] = t, data: dict[str, Any] = data, d: str = digest
            ) -> None:
                v = ec2.create_launch_template_version(
                    LaunchTemplateId=t["LaunchTemplateId"],
                    VersionDescription=d,
                    LaunchTemplateData=data,
                )["LaunchTemplateVersion"]["VersionNumber"]
                ec2.modify_launch_template(
                    LaunchTemplateId=t["LaunchTemplateId"], DefaultVersion=str(v)
                )

            self._do(
                Change(
                    "update",
                    "launch-template",
                    spec.name,
                    f"new default version (spec {current.get('VersionDescription')} -> {digest});"
                    " running instances keep theirs",
                ),
                new_version,
            )
        for name, t in live.items():
            self._later(
                65,
                Change("delete", "launch-template", name),
                partial(ec2.delete_launch_template, LaunchTemplateId=t["LaunchTemplateId"]),
            )
        return digests

    # -- auto scaling groups and their scheduled actions -------------------------------

    def _groups(self) -> None:
        asg = self.aws.autoscaling
        self._read("auto scaling groups")
        live = {
            g["AutoScalingGroupName"]: g
            for page in asg.get_paginator("describe_auto_scaling_groups").paginate(
                Filters=self._filters()
            )
            for g in page["AutoScalingGroups"]
        }
        for spec in self.want.groups:
            g = live.pop(spec.name, None)
            if g is None:
                self._create_group(spec)
            else:
                self._update_group(spec, g)
            self._actions(spec, exists=g is not None)
        for name in live:
            self._later(
                40,
                Change("delete", "auto-scaling-group", name, "and its instances"),
                partial(self._delete_asg, name),
            )

    def _create_group(self, spec: GroupSpec) -> None:
        tags = [
            {
                "Key": k,
                "Value": v,
                "PropagateAtLaunch": True,
                "ResourceId": spec.name,
                "ResourceType": "auto-scaling-group",
            }
            for k, v in sorted({**self.want.tags(spec.tier), "Name": spec.name}.items())
        ]
        self._do(
            Change(
                "create",
                "auto-scaling-group",
                spec.name,
                f"min/desired {spec.min_size}/{spec.desired}, max {spec.max_size}",
            ),
            lambda: self.aws.autoscaling.create_auto_scaling_group(
                AutoScalingGroupName=spec.name,
                LaunchTemplate={"LaunchTemplateName": spec.template, "Version": "$Default"},
                MinSize=spec.min_size,
                MaxSize=spec.max_size,
                DesiredCapacity=spec.desired,
                VPCZoneIdentifier=",".join(self.want.private_subnets),
                Tags=tags,
            ),
        )

    def _update_group(self, spec: GroupSpec, g: dict[str, Any]) -> None:
        min_size, desired = spec.min_size, spec.desired
        if self.want.frozen:
            # On air, an operator's manual bump wins: apply only ever raises.
            min_size = max(min_size, g["MinSize"])
            desired = max(desired, g["DesiredCapacity"])
        want: dict[str, Any] = {
            "MinSize": min_size,
            "MaxSize": max(spec.max_size, desired),
            "DesiredCapacity": desired,
        }
        diff = {k: v for k, v in want.items() if g.get(k) != v}
        subnets = ",".join(self.want.private_subnets)
        if set(g.get("VPCZoneIdentifier", "").split(",")) != set(self.want.private_subnets):
            diff["VPCZoneIdentifier"] = subnets
        if not diff:
            return
        detail = ", ".join(f"{k} {g.get(k)} -> {v}" for k, v in diff.items())
        self._do(
            Change("update", "auto-scaling-group", spec.name, detail),
            lambda: self.aws.autoscaling.update_auto_scaling_group(
                AutoScalingGroupName=spec.name, **diff
            ),
        )

    def _actions(self, spec: GroupSpec, exists: bool) -> None:
        asg = self.aws.autoscaling
        live: dict[str, dict[str, Any]] = {}
        if exists or not self.opts.dry_run:
            self._read(f"scheduled actions of {spec.name}")
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
            self._do(
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
            self._later(
                30,
                Change("delete", "scheduled-action", f"{spec.name}/{name}"),
                partial(
                    asg.delete_scheduled_action,
                    AutoScalingGroupName=spec.name,
                    ScheduledActionName=name,
                ),
            )

    def _delete_asg(self, name: str) -> None:
        asg = self.aws.autoscaling
        # AWS drops scheduled actions with their group, moto doesn't; one call each
        # makes the end state the same on both.
        for page in asg.get_paginator("describe_scheduled_actions").paginate(
            AutoScalingGroupName=name
        ):
            for a in page["ScheduledUpdateGroupActions"]:
                asg.delete_scheduled_action(
                    AutoScalingGroupName=name, ScheduledActionName=a["ScheduledActionName"]
                )
        asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
        self._wait(
            f"auto scaling group {name} to go",
            lambda: (
                not asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
                    "AutoScalingGroups"
                ]
            ),
        )

    # -- HAProxy nodes ----------------------------------------------------------------

    def _live_nodes(self) -> dict[str, list[dict[str, Any]]]:
        self._read("HAProxy instances")
        filters = [
            *self._filters(**{TIER_TAG: "haproxy"}),
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]
        out: dict[str, list[dict[str, Any]]] = {}
        for page in self.aws.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for r in page["Reservations"]:
                for i in r["Instances"]:
                    out.setdefault(self._tags_of(i).get(SLOT_TAG, "?"), []).append(i)
        return out

    def _nodes(self, sg_ids: dict[Tier, str], digests: dict[str, str]) -> dict[str, _Node]:
        ec2 = self.aws.ec2
        live = self._live_nodes()
        result: dict[str, _Node] = {}
        launched: list[str] = []
        for spec in self.want.nodes:
            digest = digests[spec.template]
            insts = live.pop(spec.slot, [])

            # The up-to-date, oldest instance of a slot is the one kept; anything else in
            # the slot is a leftover of an interrupted run or a replacement's predecessor.
            def outdated(i: dict[str, Any], d: str = digest, s: str = spec.subnet) -> bool:
                return self._tags_of(i).get(SPEC_TAG) != d or i.get("SubnetId") != s

            insts.sort(key=lambda i: (outdated(i), i["LaunchTime"]))
            keep = insts[0] if insts else None
            stale = keep is not None and outdated(keep)
            for extra in insts[1:]:
                self._later(
                    20,
                    Change("delete", "instance", f"{spec.slot} {extra['InstanceId']}", "duplicate"),
                    partial(ec2.terminate_instances, InstanceIds=[extra["InstanceId"]]),
                )
            if keep is not None and stale and self.want.frozen:
                self._do(Change("hold", "instance", spec.slot, "out of date, kept: the show is on"))
            elif keep is not None and stale:
                old = keep
                keep = None
                self._later(
                    20,
                    Change("delete", "instance", f"{spec.slot} {old['InstanceId']}", "replaced"),
                    partial(ec2.terminate_instances, InstanceIds=[old["InstanceId"]]),
                )
            if keep is not None:
                if keep["State"]["Name"] in ("stopped", "stopping"):
                    self._do(
                        Change("update", "instance", spec.slot, "start"),
                        lambda: ec2.start_instances(InstanceIds=[i["InstanceId"]]),
                    )
                    launched.append(keep["InstanceId"])
                result[spec.slot] = _Node(
                    spec.slot, keep["InstanceId"], keep.get("PublicIpAddress")
                )
                continue
            tags = {
                **self.want.tags("haproxy"),
                "Name": f"buzzer-{self.want.show}-{spec.slot}",
                SLOT_TAG: spec.slot,
                SPEC_TAG: digest,
            }
            tag_list = self._tag_list(tags)
            made = self._do(
                Change("create", "instance", spec.slot, f"in {spec.subnet}"),
                ec2.run_instances,
                LaunchTemplate={"LaunchTemplateName": spec.template, "Version": "$Default"},
                MinCount=1,
                MaxCount=1,
                # Same token on a retried call: AWS returns the first call's instance.
                ClientToken=f"buzzer-{self.want.show}-{spec.slot}-{digest}"[:64],
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
            result[spec.slot] = _Node(spec.slot, iid, None)

        for slot, insts in live.items():
            for i in insts:
                self._later(
                    20,
                    Change("delete", "instance", f"{slot} {i['InstanceId']}"),
                    partial(ec2.terminate_instances, InstanceIds=[i["InstanceId"]]),
                )
        if not self.want.nodes and live and not self.opts.dry_run:
            ids = [i["InstanceId"] for insts in live.values() for i in insts]
            # Security groups can only go once their instances have.
            self._later(25, None, lambda: self._wait_terminated(ids))

        if launched and not self.opts.dry_run:
            self.doing = "waiting for HAProxy instances to run"
            ec2.get_waiter("instance_running").wait(
                InstanceIds=launched,
                WaiterConfig={
                    "Delay": max(1, int(self.opts.poll_s)),
                    "MaxAttempts": max(1, int(self.opts.timeout_s / max(1.0, self.opts.poll_s))),
                },
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

    def _wait_terminated(self, ids: list[str]) -> None:
        self.aws.ec2.get_waiter("instance_terminated").wait(
            InstanceIds=ids,
            WaiterConfig={
                "Delay": max(1, int(self.opts.poll_s)),
                "MaxAttempts": max(1, int(self.opts.timeout_s / max(1.0, self.opts.poll_s))),
            },
        )

    # -- Route 53 ---------------------------------------------------------------------

    def _health_checks(self, nodes: dict[str, _Node]) -> dict[str, str | None]:
        r53 = self.aws.route53
        dns = self.want.dns
        self._read("Route 53 health checks")
        prefix = self.want.caller_prefix
        live: dict[str, list[dict[str, Any]]] = {}
        for page in r53.get_paginator("list_health_checks").paginate():
            for hc in page["HealthChecks"]:
                ref = hc["CallerReference"]
                if ref.startswith(prefix):
                    live.setdefault(ref[len(prefix) :].split(":")[0], []).append(hc)

        out: dict[str, str | None] = {}
        for slot, node in nodes.items():
            have = live.pop(slot, [])
            match = next(
                (
                    hc
                    for hc in have
                    if hc["HealthCheckConfig"].get("IPAddress") == node.ip
                    and hc["HealthCheckConfig"].get("Port") == dns.health_port
                    and hc["HealthCheckConfig"].get("ResourcePath") == dns.health_path
                ),
                None,
            )
            for hc in have:
                if hc is not match:
                    self._later(
                        15,
                        Change("delete", "health-check", f"{slot} {hc['Id']}", "stale"),
                        partial(r53.delete_health_check, HealthCheckId=hc["Id"]),
                    )
            if match is not None:
                out[slot] = match["Id"]
                continue
            out[slot] = self._do(
                Change(
                    "create",
                    "health-check",
                    slot,
                    f"HTTP {node.ip or '(new node)'}:{dns.health_port}{dns.health_path}",
                ),
                self._create_check,
                slot=slot,
                node=node,
            )
        for slot, hcs in live.items():
            for hc in hcs:
                self._later(
                    15,
                    Change("delete", "health-check", f"{slot} {hc['Id']}"),
                    partial(r53.delete_health_check, HealthCheckId=hc["Id"]),
                )
        return out

    def _create_check(self, slot: str, node: _Node) -> str:
        if node.ip is None:
            raise RuntimeError(f"HAProxy node {slot} ({node.instance_id}) has no public IP")
        dns = self.want.dns
        r53 = self.aws.route53
        # The reference carries show and slot: found again even if tagging below is
        # what an interruption cut off. Unique per call, as Route 53 requires.
        ref = f"{self.want.caller_prefix}{slot}:{uuid.uuid4().hex[:12]}"
        hc_id: str = r53.create_health_check(
            CallerReference=ref,
            HealthCheckConfig={
                "IPAddress": node.ip,
                "Port": dns.health_port,
                "Type": "HTTP",
                "ResourcePath": dns.health_path,
                "RequestInterval": 10,
                "FailureThreshold": 2,
            },
        )["HealthCheck"]["Id"]
        r53.change_tags_for_resource(
            ResourceType="healthcheck",
            ResourceId=hc_id,
            AddTags=self._tag_list(
                {**self.want.tags("haproxy"), "Name": f"buzzer-{self.want.show}-{slot}"}
            ),
        )
        return hc_id

    def _live_records(self) -> list[dict[str, Any]]:
        self._read("Route 53 records")
        fqdn = self.want.dns.name.rstrip(".") + "."
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StartRecordName": fqdn, "StartRecordType": "A"}
        while True:
            page = self.aws.route53.list_resource_record_sets(
                HostedZoneId=self.want.dns.zone_id, **kwargs
            )
            for rr in page["ResourceRecordSets"]:
                if rr["Name"] != fqdn:
                    return out
                if rr["Type"] == "A" and rr.get("SetIdentifier", "").startswith(
                    self.want.record_prefix
                ):
                    out.append(rr)
            if not page.get("IsTruncated"):
                return out
            kwargs = {
                "StartRecordName": page["NextRecordName"],
                "StartRecordType": page["NextRecordType"],
            }
            if "NextRecordIdentifier" in page:
                kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]

    def _records(self, nodes: dict[str, _Node], checks: dict[str, str | None]) -> None:
        dns = self.want.dns
        fqdn = dns.name.rstrip(".") + "."
        live = {rr["SetIdentifier"]: rr for rr in self._live_records()}
        upserts: list[dict[str, Any]] = []
        for slot, node in nodes.items():
            ident = f"{self.want.record_prefix}{slot}"
            want = {
                "Name": fqdn,
                "Type": "A",
                "SetIdentifier": ident,
                "Weight": dns.weight,
                "TTL": dns.ttl,
                "ResourceRecords": [{"Value": node.ip or "(new node)"}],
                "HealthCheckId": checks.get(slot) or "(new check)",
            }
            have = live.pop(ident, None)
            if have == want:
                continue
            self._do(
                Change(
                    "create" if have is None else "update",
                    "dns-record",
                    f"{fqdn} {ident}",
                    f"A {node.ip or '(new node)'} weight {dns.weight}",
                )
            )
            upserts.append({"Action": "UPSERT", "ResourceRecordSet": want})
        if upserts and not self.opts.dry_run:
            self.doing = f"writing {len(upserts)} weighted record(s) for {fqdn}"
            # One batch: Route 53 applies it all or nothing.
            self.aws.route53.change_resource_record_sets(
                HostedZoneId=dns.zone_id, ChangeBatch={"Changes": upserts}
            )
        for ident, rr in live.items():
            self._later(
                10,
                Change("delete", "dns-record", f"{fqdn} {ident}"),
                partial(
                    self.aws.route53.change_resource_record_sets,
                    HostedZoneId=dns.zone_id,
                    ChangeBatch={"Changes": [{"Action": "DELETE", "ResourceRecordSet": rr}]},
                ),
            )


def converge(aws: Clients, want: Desired, opts: Options) -> list[Change]:
    return Converger(aws, want, opts).run()


def now_utc() -> datetime:
    return datetime.now(UTC)
