"""What AWS should hold for a show: names, tags, rules and sizes, with no AWS call."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from infra import userdata
from infra.capacity import processes_per_instance
from infra.runsheet import ASG_TIERS, TIERS, Dns, RunSheet, Tier, port_of
from infra.timeline import CapacityTimeline, ScheduledAction

SHOW_TAG = "buzzer:show"
TIER_TAG = "buzzer:tier"
SLOT_TAG = "buzzer:slot"
SPEC_TAG = "buzzer:spec"

ANYWHERE = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True, order=True)
class Rule:
    """One ingress permission: from a CIDR, or from another tier's security group."""

    port: int
    cidr: str | None = None
    source: Tier | None = None
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port} from {self.cidr or f'sg {self.source}'}"


@dataclass(frozen=True)
class SecurityGroupSpec:
    tier: Tier
    name: str
    rules: frozenset[Rule]


@dataclass(frozen=True)
class TemplateSpec:
    tier: Tier
    name: str
    data: dict[str, object]
    """LaunchTemplateData without SecurityGroupIds (resolved at apply time)."""

    @property
    def digest(self) -> str:
        """Stored as the version description: a changed digest is a new version."""
        blob = json.dumps(self.data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class GroupSpec:
    tier: Tier
    name: str
    template: str
    min_size: int
    desired: int
    max_size: int
    actions: tuple[ScheduledAction, ...]


@dataclass(frozen=True)
class NodeSpec:
    slot: str
    subnet: str
    template: str


@dataclass(frozen=True)
class Desired:
    show: str
    region: str
    vpc_id: str
    subnets: tuple[str, ...]
    private_subnets: tuple[str, ...]
    dns: Dns
    frozen: bool
    """The audience may be there: apply adds but never removes or lowers."""
    security_groups: tuple[SecurityGroupSpec, ...] = ()
    templates: tuple[TemplateSpec, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()

    def tags(self, tier: Tier | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {SHOW_TAG: self.show}
        if tier is not None:
            out[TIER_TAG] = tier
        out.update(extra or {})
        return out

    @property
    def record_prefix(self) -> str:
        return f"buzzer-{self.show}-"

    @property
    def caller_prefix(self) -> str:
        return f"buzzer:{self.show}:"


def resource_name(show: str, tier: Tier) -> str:
    return f"buzzer-{show}-{tier}"


def empty(sheet: RunSheet, region: str) -> Desired:
    """Nothing: what ``destroy`` converges to."""
    n = sheet.network
    return Desired(
        sheet.show,
        region,
        n.vpc_id,
        tuple(n.subnets),
        tuple(n.private_subnets or n.subnets),
        sheet.dns,
        frozen=False,
    )


def build(
    sheet: RunSheet,
    timeline: CapacityTimeline,
    now: datetime,
    region: str,
    due_margin: timedelta = timedelta(minutes=2),
) -> Desired:
    n = sheet.network
    show = sheet.show
    sgs = [_security_group(sheet, tier) for tier in TIERS]

    templates = []
    for tier in TIERS:
        spec = sheet.tiers.get(tier)
        procs = processes_per_instance(sheet, spec.instance_type) or 1
        script = userdata.render(sheet, timeline, tier, procs, region)
        data: dict[str, object] = {
            "ImageId": n.ami,
            "InstanceType": spec.instance_type,
            "UserData": base64.b64encode(script.encode()).decode(),
            # IMDSv2 only: the node's instance-profile credentials are not one SSRF away.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if n.key_name:
            data["KeyName"] = n.key_name
        if n.instance_profile:
            data["IamInstanceProfile"] = {"Name": n.instance_profile}
        templates.append(TemplateSpec(tier, resource_name(show, tier), data))

    groups = []
    for tier in ASG_TIERS:
        current = timeline.level_at(tier, now + due_margin)
        groups.append(
            GroupSpec(
                tier=tier,
                name=resource_name(show, tier),
                template=resource_name(show, tier),
                min_size=current,
                desired=current,
                max_size=timeline.max_size(tier),
                # Names unique across groups, not just within one: the console's
                # account-wide list reads well, and moto keys actions by name alone.
                actions=tuple(
                    replace(a, name=f"{resource_name(show, tier)}-{a.name}")
                    for a in timeline.actions(tier, now, due_margin)
                ),
            )
        )

    # Spread over the subnets (one per AZ, presumably) so one AZ outage costs 1/len.
    nodes = tuple(
        NodeSpec(f"haproxy-{i}", n.subnets[i % len(n.subnets)], resource_name(show, "haproxy"))
        for i in range(timeline.haproxy_nodes)
    )
    return Desired(
        show=show,
        region=region,
        vpc_id=n.vpc_id,
        subnets=tuple(n.subnets),
        private_subnets=tuple(n.private_subnets or n.subnets),
        dns=sheet.dns,
        frozen=timeline.in_freeze(now),
        security_groups=tuple(sgs),
        templates=tuple(templates),
        groups=tuple(groups),
        nodes=nodes,
    )


def _security_group(sheet: RunSheet, tier: Tier) -> SecurityGroupSpec:
    rules: set[Rule] = set()
    if tier == "haproxy":
        for cidr in ANYWHERE:
            rules |= {Rule(80, cidr), Rule(443, cidr)}
    elif tier in ("ingest", "push"):
        rules.add(Rule(port_of(sheet, tier), source="haproxy"))
    # The tally takes no traffic: it only reads Redis and writes PostgreSQL.
    if sheet.network.admin_cidr:
        rules.add(Rule(22, sheet.network.admin_cidr))
    return SecurityGroupSpec(tier, resource_name(sheet.show, tier), frozenset(rules))
