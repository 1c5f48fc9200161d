"""What AWS should hold for a show: names, tags, rules and sizes, with no AWS call."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from infra import userdata
from infra.capacity import postgres_instance_class, processes_per_instance
from infra.runsheet import ASG_TIERS, TIERS, Dns, GroupKey, RunSheet, Tier, port_of
from infra.timeline import CapacityTimeline, ScheduledAction
from tiers import HAPROXY_STATS_PORT

SHOW_TAG = "buzzer:show"
TIER_TAG = "buzzer:tier"
SLOT_TAG = "buzzer:slot"
SPEC_TAG = "buzzer:spec"

ANYWHERE = ("0.0.0.0/0", "::/0")
REDIS_PORT = 6379
POSTGRES_PORT = 5432
HASH_SLOTS = 16384


@dataclass(frozen=True)
class Rule:
    """One ingress permission: from a CIDR, or from another tier's security group."""

    port: int
    cidr: str | None = None
    source: GroupKey | None = None
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port} from {self.cidr or f'sg {self.source}'}"

    def __lt__(self, other: Rule) -> bool:
        # A port can be open both to a CIDR and to a group: None sorts first, not a crash.
        return self._key() < other._key()

    def _key(self) -> tuple[int, str, str, str]:
        return (self.port, self.cidr or "", self.source or "", self.protocol)


@dataclass(frozen=True)
class SecurityGroupSpec:
    tier: GroupKey
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
class CacheSpec:
    """The show's ElastiCache replication group, in cluster mode."""

    group_id: str
    subnet_group: str
    node_type: str
    shards: int
    replicas: int
    engine_version: str
    transit_encryption: bool
    slots: tuple[str, ...] | None
    """Each shard's hash slot range, cut so that each holds an equal share of the
    partitions; ``None`` leaves ElastiCache's even split of slots."""

    @property
    def multi_az(self) -> bool:
        # A replica in another AZ is what Multi-AZ promotes; without one there is none.
        return self.replicas > 0


@dataclass(frozen=True)
class DatabaseSpec:
    """The show's RDS PostgreSQL instance; its password stays in Secrets Manager."""

    identifier: str
    subnet_group: str
    instance_class: str
    storage_gb: int
    engine_version: str
    multi_az: bool
    db_name: str
    username: str


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
    cache: CacheSpec | None = None
    database: DatabaseSpec | None = None

    def tags(
        self, tier: GroupKey | None = None, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
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


def resource_name(show: str, tier: GroupKey) -> str:
    return f"buzzer-{show}-{tier}"


def cache_group_id(show: str) -> str:
    """ElastiCache allows 40 characters; a long show id keeps a digest of the rest."""
    name = f"buzzer-{show}"
    if len(name) <= 40:
        return name
    return f"{name[:31]}-{hashlib.sha256(show.encode()).hexdigest()[:8]}"


def slot_ranges(partitions: int, shards: int) -> tuple[str, ...] | None:
    """Hash slot ranges, one per shard, each holding ``partitions // shards`` partitions
    (or one more), so that no shard carries more votes than the plan gave it.

    Every key of partition ``p`` has the hash tag ``{p<p>}`` (services/common/messages.py),
    so a partition is one slot. An even split of slots would leave the partitions
    wherever CRC16 puts them: with 4 per shard, some shard would hold 8.
    ``None`` when two partitions share a slot across a cut (then no cut separates them).
    """
    from redis.crc import key_slot

    if shards <= 1:
        return None
    slots = sorted(key_slot(f"{{p{p}}}".encode()) for p in range(partitions))
    base, extra = divmod(partitions, shards)
    out: list[str] = []
    start, i = 0, 0
    for g in range(shards):
        i += base + (1 if g < extra else 0)
        end = HASH_SLOTS - 1 if g == shards - 1 else slots[i - 1]
        if (g < shards - 1 and slots[i - 1] == slots[i]) or end < start:
            return None
        out.append(f"{start}-{end}")
        start = end + 1
    return tuple(out)


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


def _cache(sheet: RunSheet, timeline: CapacityTimeline) -> CacheSpec | None:
    spec = sheet.data.redis
    if spec is None:
        return None
    peak = timeline.peak
    return CacheSpec(
        group_id=cache_group_id(sheet.show),
        subnet_group=resource_name(sheet.show, "redis"),
        node_type=spec.node_type,
        shards=peak.redis_shards,
        replicas=spec.replicas_per_shard,
        engine_version=spec.engine_version,
        transit_encryption=spec.transit_encryption,
        slots=slot_ranges(peak.partitions, peak.redis_shards),
    )


def _database(sheet: RunSheet, timeline: CapacityTimeline) -> DatabaseSpec | None:
    spec = sheet.data.postgres
    cls = postgres_instance_class(sheet, timeline.peak)
    if spec is None or cls is None:
        return None
    return DatabaseSpec(
        identifier=resource_name(sheet.show, "postgres"),
        subnet_group=resource_name(sheet.show, "postgres"),
        instance_class=cls,
        storage_gb=spec.storage_gb,
        engine_version=spec.engine_version,
        multi_az=spec.multi_az,
        db_name=spec.db_name,
        username=spec.username,
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
    cache = _cache(sheet, timeline)
    database = _database(sheet, timeline)
    sgs = [_security_group(sheet, tier) for tier in TIERS]
    if cache is not None:
        sgs.append(_data_group(sheet, "redis", REDIS_PORT))
    if database is not None:
        sgs.append(_data_group(sheet, "postgres", POSTGRES_PORT))

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
        cache=cache,
        database=database,
    )


def _security_group(sheet: RunSheet, tier: Tier) -> SecurityGroupSpec:
    rules: set[Rule] = set()
    if tier == "haproxy":
        for cidr in ANYWHERE:
            rules |= {Rule(80, cidr), Rule(443, cidr)}
    elif tier in ("ingest", "push"):
        rules.add(Rule(port_of(sheet, tier), source="haproxy"))
    # The tally takes no traffic: it only reads Redis and writes PostgreSQL.
    if sheet.network.monitoring_cidr:
        # /metrics: on the tier's own port, on HAProxy its exporter's (stats) port.
        port = HAPROXY_STATS_PORT if tier == "haproxy" else port_of(sheet, tier)
        rules.add(Rule(port, sheet.network.monitoring_cidr))
    if sheet.network.admin_cidr:
        rules.add(Rule(22, sheet.network.admin_cidr))
    return SecurityGroupSpec(tier, resource_name(sheet.show, tier), frozenset(rules))


def _data_group(sheet: RunSheet, tier: GroupKey, port: int) -> SecurityGroupSpec:
    # Only the service tiers reach the data tier: HAProxy holds no data connection.
    rules = frozenset(Rule(port, source=t) for t in ASG_TIERS)
    return SecurityGroupSpec(tier, resource_name(sheet.show, tier), rules)
