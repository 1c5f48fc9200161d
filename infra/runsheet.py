"""The show's run sheet: YAML in, typed and checked structs out.

Every error names the field (``$.polls[1].call_to_action``) so that whoever edits the
sheet at 19:00 on show day can fix it without reading this file.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

import tiers
from lb import instances, planner

Tier = Literal["haproxy", "ingest", "tally", "push"]
TIERS: tuple[Tier, ...] = ("haproxy", "ingest", "tally", "push")
ASG_TIERS: tuple[Tier, ...] = ("ingest", "tally", "push")
DataTier = Literal["redis", "postgres"]
DATA_TIERS: tuple[DataTier, ...] = ("redis", "postgres")
GroupKey = Tier | DataTier
"""What a security group belongs to: a compute tier or a data tier."""

UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
# Show ids end up in resource names (64-char ASG/SG limits) and tag values.
ShowId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]


class RunSheetError(ValueError):
    """The run sheet is unreadable or inconsistent; the message names the field."""


class Poll(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")]
    opens: UtcTime
    call_to_action: UtcTime
    """When the presenter says "vote now": the spike starts here, not at ``opens``."""
    closes: UtcTime | None = None
    peak_votes_per_s: Positive
    viewers: NonNegInt


class Traffic(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Passed to the lb planner's ``PlanInputs`` unchanged."""

    tls: bool = True
    tls_resumption_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    new_conn_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    ecdsa: bool = True
    headroom: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.6
    min_haproxy_nodes: Annotated[int, msgspec.Meta(ge=1)] = 2
    baseline_votes_per_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Votes/s between calls to action; sizes the on-air level with the viewers."""


class InstanceCapacity(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    processes: Annotated[int, msgspec.Meta(ge=1)]
    """Python processes per instance: one per vCPU, the GIL makes more pointless."""
    memory_gib: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """The type's memory, for a type lb/instances.py does not know: HAProxy's maxconn
    is sized from it."""
    figures: dict[str, float] = {}
    """Planner profile figures for this instance type, e.g. ``ingest_votes_per_s``."""


class Capacity(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    profile: str = "measured"
    figures: dict[str, float] = {}
    """Profile figures replaced for every instance type."""
    instance_types: dict[str, InstanceCapacity] = {}


class TierSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    instance_type: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    idle: NonNegInt | None = None
    """Instances from apply until the on-air warm-up (proves AMI and user data early)."""
    after_show: NonNegInt | None = None
    """Instances after the post-show scale-in."""


class Tiers(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    haproxy: TierSpec
    ingest: TierSpec
    tally: TierSpec
    push: TierSpec

    def get(self, tier: Tier) -> TierSpec:
        spec: TierSpec = getattr(self, tier)
        return spec


class Timeline(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    haproxy_lead_min: Annotated[int, msgspec.Meta(ge=0)] = 60
    boot_lead_min: Annotated[int, msgspec.Meta(ge=0)] = 20
    drain_min: Annotated[int, msgspec.Meta(ge=0)] = 30
    max_factor: Annotated[float, msgspec.Meta(ge=1)] = 1.5
    """ASG MaxSize = ceil(peak x this): room for a manual bump without touching max."""


class Network(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    vpc_id: str
    subnets: Annotated[list[str], msgspec.Meta(min_length=1)]
    """Public subnets, one per AZ: the HAProxy nodes, with public IPs."""
    private_subnets: list[str] = []
    """The ASG tiers (need a NAT for apt, pip and SSM); empty means ``subnets``."""
    ami: str
    key_name: str | None = None
    instance_profile: str | None = None
    """Needs ec2:DescribeInstances (lb sync discovery) and ssm:GetParameter (secrets)."""
    admin_cidr: str | None = None
    monitoring_cidr: str | None = None
    """Where Prometheus scrapes from: every node lets it reach ``/metrics`` (the tier's
    port; on HAProxy the stats port, then bound to the node's addresses, not loopback).
    Unset, nothing outside a node can scrape it."""


class Dns(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    zone_id: str
    name: str
    ttl: Annotated[int, msgspec.Meta(ge=1)] = 30
    weight: Annotated[int, msgspec.Meta(ge=0, le=255)] = 100
    health_path: str = "/healthz"
    health_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 80


class App(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    package: str = "buzzer"
    """pip requirement installed on every node, e.g. ``buzzer==0.1.0`` or a wheel URL."""
    redis_url: str | None = None
    """An existing Redis (``redis+cluster://`` for a cluster); without it, ``data.redis``
    makes one."""
    ssm_prefix: str | None = None
    """SSM path holding DATABASE_URL and the token secrets; never in user data."""


class RedisSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An ElastiCache replication group in cluster mode, made by ``infra apply``."""

    node_type: str = "cache.r7g.large"
    replicas_per_shard: Annotated[int, msgspec.Meta(ge=0, le=5)] = 1
    shards: Annotated[int, msgspec.Meta(ge=1, le=500)] | None = None
    """Instead of the plan's count (from ``buzzer bench redis``); never below it."""
    engine_version: str = "7.1"
    transit_encryption: bool = True
    """TLS between the nodes and the services: ``rediss+cluster://``."""
    ack_replicas: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """``BUZZER_ACK_REPLICAS``; default 1 with replicas, 0 without."""


class PostgresSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """RDS PostgreSQL made by ``infra apply``, or an existing database."""

    existing_url_ssm: str | None = None
    """SSM SecureString holding an existing database's DATABASE_URL: nothing is made."""
    instance_family: str = "db.m7g"
    instance_class: str | None = None
    """Instead of the plan's (``<family>.<size>`` by the writer's vCPUs)."""
    storage_gb: Annotated[int, msgspec.Meta(ge=20)] = 100
    engine_version: str = "16"
    multi_az: bool = True
    db_name: str = "buzzer"
    username: str = "buzzer"
    options_per_poll: Annotated[int, msgspec.Meta(ge=1)] = 8
    """Sizes the writer's upserts (docs/capacity.md)."""

    @property
    def managed(self) -> bool:
        return self.existing_url_ssm is None


class Data(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    redis: RedisSpec | None = None
    postgres: PostgresSpec | None = None


class RunSheet(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    show: ShowId
    region: str | None = None
    on_air: UtcTime
    off_air: UtcTime
    polls: Annotated[list[Poll], msgspec.Meta(min_length=1)]
    traffic: Traffic = Traffic()
    capacity: Capacity = Capacity()
    tiers: Tiers
    timeline: Timeline = Timeline()
    network: Network
    dns: Dns
    app: App
    data: Data = Data()

    @property
    def ssm_prefix(self) -> str:
        return self.app.ssm_prefix or f"/buzzer/{self.show}"


# HAProxy listens on 80 on a node (TLS ends at the AWS load balancer in front of it);
# the services' ports are the one table in ``tiers``.
DEFAULT_PORTS: dict[Tier, int] = {
    "haproxy": 80,
    "ingest": tiers.INGEST.port,
    "tally": tiers.TALLY.port,
    "push": tiers.PUSH.port,
}
DEFAULT_IDLE: dict[Tier, int] = {"haproxy": 0, "ingest": 1, "tally": 1, "push": 1}
DEFAULT_AFTER: dict[Tier, int] = {"haproxy": 0, "ingest": 0, "tally": 0, "push": 0}


def port_of(sheet: RunSheet, tier: Tier) -> int:
    return sheet.tiers.get(tier).port or DEFAULT_PORTS[tier]


def parse(data: Any) -> RunSheet:
    try:
        sheet = msgspec.convert(data, RunSheet, strict=False)
    except msgspec.ValidationError as exc:
        raise RunSheetError(f"run sheet: {exc}") from None
    _check(sheet)
    return sheet


def load(path: str | Path) -> RunSheet:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RunSheetError(f"run sheet {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RunSheetError(f"run sheet {path}: not YAML: {exc}") from None
    return parse(data)


def _fail(field: str, msg: str) -> RunSheetError:
    return RunSheetError(f"run sheet: {msg} - at `$.{field}`")


# What the checks below hold a sheet's capacity section to; infra.capacity plans with
# the same figures.
PROFILE_FIELDS: frozenset[str] = frozenset(
    f.name for f in fields(planner.Profile) if f.name not in ("name", "source")
)

# vCPUs of the types a show is likely to use (lb/instances.py, with their memory);
# anything else needs capacity.instance_types.<type>.processes in the run sheet.
VCPUS: dict[str, int] = instances.VCPUS


def known_profiles() -> list[str]:
    return sorted(planner.PROFILES)


def processes_per_instance(sheet: RunSheet, instance_type: str) -> int | None:
    cap = sheet.capacity.instance_types.get(instance_type)
    if cap is not None:
        return cap.processes
    return VCPUS.get(instance_type)


def memory_gib(sheet: RunSheet, instance_type: str) -> float | None:
    cap = sheet.capacity.instance_types.get(instance_type)
    if cap is not None and cap.memory_gib is not None:
        return cap.memory_gib
    return instances.MEMORY_GIB.get(instance_type)


def _check(sheet: RunSheet) -> None:
    if sheet.off_air <= sheet.on_air:
        raise _fail("off_air", "must be after on_air")
    for name in ("admin_cidr", "monitoring_cidr"):
        cidr = getattr(sheet.network, name)
        if cidr is None:
            continue
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            raise _fail(f"network.{name}", f"{cidr!r} is not a CIDR like 10.0.0.0/16") from None
    seen: set[str] = set()
    for i, poll in enumerate(sheet.polls):
        at = f"polls[{i}]"
        if poll.id in seen:
            raise _fail(f"{at}.id", f"duplicate poll id {poll.id!r}")
        seen.add(poll.id)
        if not sheet.on_air <= poll.opens <= sheet.off_air:
            raise _fail(f"{at}.opens", "must be between on_air and off_air")
        if not poll.opens <= poll.call_to_action <= sheet.off_air:
            raise _fail(f"{at}.call_to_action", "must be between opens and off_air")
        if poll.closes is not None and poll.closes < poll.call_to_action:
            raise _fail(f"{at}.closes", "must not be before call_to_action")
    if sheet.capacity.profile not in known_profiles():
        raise _fail(
            "capacity.profile",
            f"unknown profile {sheet.capacity.profile!r} (known: {', '.join(known_profiles())})",
        )
    for name in sheet.capacity.figures:
        if name not in PROFILE_FIELDS:
            raise _fail(f"capacity.figures.{name}", "not a planner profile figure")
    for itype, cap in sheet.capacity.instance_types.items():
        for name in cap.figures:
            if name not in PROFILE_FIELDS:
                raise _fail(
                    f"capacity.instance_types.{itype}.figures.{name}",
                    "not a planner profile figure",
                )
    for tier in ASG_TIERS:
        itype = sheet.tiers.get(tier).instance_type
        if processes_per_instance(sheet, itype) is None:
            raise _fail(
                f"tiers.{tier}.instance_type",
                f"no capacity figures for {itype!r}: add capacity.instance_types.{itype}.processes",
            )
    if sheet.app.redis_url is None and sheet.data.redis is None:
        raise _fail("data.redis", "no Redis: give data.redis (made by apply) or app.redis_url")
    if sheet.app.redis_url is not None and sheet.data.redis is not None:
        raise _fail("app.redis_url", "give either app.redis_url or data.redis, not both")
    if not re.fullmatch(r"[A-Za-z0-9.-]+\.?", sheet.dns.name):
        raise _fail("dns.name", f"not a DNS name: {sheet.dns.name!r}")
