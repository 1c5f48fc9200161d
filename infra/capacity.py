"""The one place ``infra/`` talks to the lb planner: a load in, instances per tier out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from infra.runsheet import TIERS, VCPUS, RunSheet, Tier, memory_gib, processes_per_instance
from lb import planner


@dataclass(frozen=True)
class TierCounts:
    """Instances per tier for one load, and the planner's process counts behind them."""

    haproxy: int
    ingest: int
    tally: int
    push: int
    processes: dict[str, int]
    maxconn_per_node: int
    partitions: int
    binding: dict[str, str]
    """Per tier, the resource that sets its instance count, with the figures."""
    redis_shards: int = 1
    redis_replicas: int = 1
    postgres_vcpus: int = 2
    data_binding: dict[str, str] = field(default_factory=dict)
    """For ``redis`` and ``postgres``: what sets the shards and the vCPUs."""

    def get(self, tier: Tier) -> int:
        n: int = getattr(self, tier)
        return n

    def __or__(self, other: TierCounts) -> TierCounts:
        """Per-tier maximum: capacity never goes down during a show."""
        return TierCounts(
            haproxy=max(self.haproxy, other.haproxy),
            ingest=max(self.ingest, other.ingest),
            tally=max(self.tally, other.tally),
            push=max(self.push, other.push),
            processes={
                k: max(self.processes.get(k, 0), other.processes.get(k, 0))
                for k in self.processes.keys() | other.processes.keys()
            },
            maxconn_per_node=max(self.maxconn_per_node, other.maxconn_per_node),
            partitions=max(self.partitions, other.partitions),
            # The load that asked for the larger count explains it; on a tie, the earlier.
            binding={
                tier: (other if other.get(tier) > self.get(tier) else self).binding[tier]
                for tier in TIERS
            },
            redis_shards=max(self.redis_shards, other.redis_shards),
            redis_replicas=max(self.redis_replicas, other.redis_replicas),
            postgres_vcpus=max(self.postgres_vcpus, other.postgres_vcpus),
            data_binding={
                "redis": (other if other.redis_shards > self.redis_shards else self).data_binding[
                    "redis"
                ],
                "postgres": (
                    other if other.postgres_vcpus > self.postgres_vcpus else self
                ).data_binding["postgres"],
            },
        )


def _figures(sheet: RunSheet) -> dict[str, float]:
    """Sheet-wide figures, then each tier's instance-type figures for that tier only.

    A figure belongs to the tier its name starts with (``ingest_votes_per_s`` to the
    ingest tier), so a faster ingest instance type does not speed up the tally's.
    """
    out = dict(sheet.capacity.figures)
    for tier in TIERS:
        cap = sheet.capacity.instance_types.get(sheet.tiers.get(tier).instance_type)
        if cap is None:
            continue
        out.update({k: v for k, v in cap.figures.items() if k.startswith(f"{tier}_")})
    return out


def concurrent_polls(sheet: RunSheet) -> int:
    """The most polls taking votes at once: the PostgreSQL writer upserts each one."""
    spans = [(p.opens, p.closes or sheet.off_air) for p in sheet.polls]
    return max(sum(1 for a, b in spans if a <= start <= b) for start, _ in spans)


def _inputs(sheet: RunSheet, votes_per_s: float, viewers: int) -> planner.PlanInputs:
    t = sheet.traffic
    redis, pg = sheet.data.redis, sheet.data.postgres
    return planner.PlanInputs(
        peak_votes_per_s=votes_per_s,
        viewers=viewers,
        new_conn_share=t.new_conn_share,
        tls=t.tls,
        tls_resumption_rate=t.tls_resumption_rate,
        ecdsa=t.ecdsa,
        headroom=t.headroom,
        min_haproxy_nodes=t.min_haproxy_nodes,
        redis_replicas=redis.replicas_per_shard if redis else 1,
        polls=concurrent_polls(sheet),
        options_per_poll=pg.options_per_poll if pg else 8,
        haproxy_instance_type=sheet.tiers.haproxy.instance_type,
        haproxy_memory_gib=memory_gib(sheet, sheet.tiers.haproxy.instance_type),
        overrides=_figures(sheet),
    )


# RDS sizes by vCPUs; the family (db.m7g, db.r7g, ...) is the run sheet's.
RDS_SIZES: tuple[tuple[int, str], ...] = tuple(
    sorted({(n, t.split(".", 1)[1]) for t, n in VCPUS.items() if t.startswith("c6i.")})
)


def postgres_class(family: str, vcpus: int) -> str:
    """The smallest ``family`` size with at least ``vcpus``; the largest if none has."""
    for n, size in RDS_SIZES:
        if n >= vcpus:
            return f"{family}.{size}"
    return f"{family}.{RDS_SIZES[-1][1]}"


def tier_counts(sheet: RunSheet, votes_per_s: float, viewers: int) -> TierCounts:
    t = sheet.traffic
    inputs = _inputs(sheet, votes_per_s, viewers)
    profile = planner.PROFILES[sheet.capacity.profile]
    cp = planner.plan(inputs, profile)
    figures = replace(profile, **inputs.overrides)

    # The planner's HAProxy "node" is one core. Handshakes, requests and the update
    # fan-out spread over an instance's cores (nbthread), so the rate-bound count divides
    # by them; concurrent connections are bound by the instance's memory and descriptors
    # (one HAProxy process per instance), or by haproxy_max_conns where not measured.
    h = t.headroom
    cores = processes_per_instance(sheet, sheet.tiers.haproxy.instance_type) or 1
    limit = haproxy_conn_limit(sheet, figures)
    concurrent = cp.load["haproxy_concurrent_conns"]
    by_rate = math.ceil(round(cp.load["haproxy_cores"] / h / cores, 6))
    by_conns = math.ceil(round(concurrent / (limit.maxconn * h), 6))
    haproxy = max(t.min_haproxy_nodes, by_rate, by_conns)
    if haproxy > max(by_rate, by_conns):
        haproxy_why = f"minimum of {t.min_haproxy_nodes} instances for redundancy"
    elif by_rate >= by_conns:
        haproxy_why = (
            f"connection rate: {cp.load['haproxy_cores']:,.1f} cores busy"
            f" / ({cores} cores per instance x {h:g})"
        )
    else:
        haproxy_why = (
            f"concurrent connections: {concurrent:,.0f}"
            f" / ({limit.maxconn:,} per instance, {limit.binding}, x {h:g})"
        )
    maxconn = max(1000, min(limit.maxconn, math.ceil(concurrent / haproxy / h)))

    def instances(tier: Tier, procs: int) -> int:
        per = processes_per_instance(sheet, sheet.tiers.get(tier).instance_type) or 1
        return max(1, math.ceil(procs / per))

    redis = sheet.data.redis
    shards = cp.redis_shards
    redis_why = (
        f"votes/s: {votes_per_s:,.0f} / ({figures.redis_votes_per_s:,.0f} per shard x {h:g});"
        f" busiest shard {cp.load['redis_busiest_shard_votes_per_s']:,.0f}"
    )
    if redis is not None and redis.shards is not None and redis.shards > shards:
        shards, redis_why = redis.shards, f"run sheet: data.redis.shards = {redis.shards}"
    pg_why = (
        f"upserts: {cp.load['postgres_rows_per_s']:,.0f} rows/s"
        f" / ({figures.postgres_rows_per_vcpu_s:,.0f} per vCPU x {h:g})"
    )
    return TierCounts(
        redis_shards=shards,
        redis_replicas=cp.redis_replicas,
        postgres_vcpus=cp.postgres_vcpus,
        data_binding={"redis": redis_why, "postgres": pg_why},
        haproxy=haproxy,
        ingest=instances("ingest", cp.ingest_processes),
        tally=instances("tally", cp.tally_consumers),
        push=instances("push", cp.push_processes),
        processes={
            "ingest": cp.ingest_processes,
            "tally": cp.tally_consumers,
            "push": cp.push_processes,
        },
        maxconn_per_node=maxconn,
        partitions=cp.partitions,
        binding={
            "haproxy": haproxy_why,
            "ingest": f"votes/s: {votes_per_s:,.0f}"
            f" / ({figures.ingest_votes_per_s:,.0f} per process x {h:g})",
            "tally": f"votes/s: {votes_per_s:,.0f}"
            f" / ({figures.tally_votes_per_s:,.0f} per consumer x {h:g})",
            "push": f"viewers: {viewers:,} / ({figures.push_viewers:,} per process x {h:g})",
        },
    )


def haproxy_conn_limit(sheet: RunSheet, figures: planner.Profile) -> planner.ConnLimit:
    """Concurrent connections one HAProxy instance of the run sheet's type holds, with
    ``figures`` (the sheet's profile and its overrides)."""
    itype = sheet.tiers.haproxy.instance_type
    return planner.conn_limit(figures, memory_gib=memory_gib(sheet, itype), unit=itype)


def describe_peak(sheet: RunSheet, peak: TierCounts) -> str:
    """The show's peak fleet as a table, for ``infra plan``: instances per tier, what an
    instance holds, and the resource that sets the count."""
    head = ("tier", "instances", "instance type", "per instance", "processes", "binding resource")
    rows = [head]
    for tier in TIERS:
        itype = sheet.tiers.get(tier).instance_type
        per = processes_per_instance(sheet, itype) or 1
        if tier == "haproxy":
            # One HAProxy process per instance, with a thread per core.
            holds, procs = f"1 process, {per} cores", "-"
        else:
            holds, procs = f"{per} processes", f"{peak.processes[tier]:,}"
        rows.append((tier, f"{peak.get(tier):,}", itype, holds, procs, peak.binding[tier]))
    rows += _data_rows(sheet, peak)
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    out = []
    for name, n, itype, holds, procs, why in rows:
        out.append(
            f"{name:<{w[0]}}  {n:>{w[1]}}  {itype:<{w[2]}}  {holds:>{w[3]}}  {procs:>{w[4]}}  {why}"
        )
    return "\n".join(out)


def _data_rows(sheet: RunSheet, peak: TierCounts) -> list[tuple[str, str, str, str, str, str]]:
    redis, pg = sheet.data.redis, sheet.data.postgres
    rows = []
    if redis is None:
        rows.append(("redis", "-", "existing", "app.redis_url", "-", "not made by apply"))
    else:
        nodes = peak.redis_shards * (1 + redis.replicas_per_shard)
        rows.append(
            (
                "redis",
                f"{nodes:,}",
                redis.node_type,
                "1 core: shard or replica",
                f"{peak.redis_shards:,} shards x {1 + redis.replicas_per_shard}",
                peak.data_binding["redis"],
            )
        )
    if pg is None or not pg.managed:
        where = pg.existing_url_ssm if pg and pg.existing_url_ssm else "SSM DATABASE_URL"
        rows.append(("postgres", "-", "existing", str(where), "-", "not made by apply"))
    else:
        cls = pg.instance_class or postgres_class(pg.instance_family, peak.postgres_vcpus)
        rows.append(
            (
                "postgres",
                "2" if pg.multi_az else "1",
                cls,
                f"{peak.postgres_vcpus} vCPUs, {pg.storage_gb} GB",
                "1 writer" + (" + standby" if pg.multi_az else ""),
                peak.data_binding["postgres"],
            )
        )
    return rows


def postgres_instance_class(sheet: RunSheet, peak: TierCounts) -> str | None:
    """The RDS class ``apply`` makes, or ``None`` when the database is not made."""
    pg = sheet.data.postgres
    if pg is None or not pg.managed:
        return None
    return pg.instance_class or postgres_class(pg.instance_family, peak.postgres_vcpus)


@dataclass(frozen=True)
class Measure:
    """One tier's capacity and load in a single unit, so that they can be compared."""

    unit: str
    per_instance: float
    """What one instance of the tier carries at 100 % utilisation, in ``unit``."""
    load: Callable[[float, int], float]
    """Expected load in ``unit`` for (votes/s, viewers)."""


def _sheet_figures(sheet: RunSheet) -> planner.Profile:
    """The sheet's planner profile with the sheet's own figures over it."""
    overrides: dict[str, Any] = _figures(sheet)
    return replace(planner.PROFILES[sheet.capacity.profile], **overrides)


def _planned_load(sheet: RunSheet, votes: float, viewers: int) -> dict[str, float]:
    """The planner's expected load for (votes/s, viewers) under this sheet."""
    profile = planner.PROFILES[sheet.capacity.profile]
    return planner.plan(_inputs(sheet, votes, viewers), profile).load


def redis_measure(sheet: RunSheet) -> Measure:
    """The Redis tier in votes/s per shard: every vote is accepted and applied on one."""
    return Measure("votes/s", _sheet_figures(sheet).redis_votes_per_s, lambda v, _: v)


def postgres_vcpus(sheet: RunSheet, peak: TierCounts) -> int | None:
    """The vCPUs of the writer ``apply`` makes (its class, :func:`postgres_instance_class`);
    ``None`` where the database is not made by apply."""
    cls = postgres_instance_class(sheet, peak)
    if cls is None:
        return None
    size = cls.rsplit(".", 1)[-1]
    return next((n for n, s in RDS_SIZES if s == size), peak.postgres_vcpus)


def postgres_measure(sheet: RunSheet) -> Measure:
    """The PostgreSQL writer in rows/s per vCPU: the tally's upserts of the totals, which
    grow with the polls and options taking votes, not with every vote."""

    def rows(votes: float, viewers: int) -> float:
        # The writer commits only what it read: no votes, no rows. With votes, the
        # planner's figure, which does not grow with them.
        return _planned_load(sheet, votes, viewers)["postgres_rows_per_s"] if votes > 0 else 0.0

    return Measure("rows/s", _sheet_figures(sheet).postgres_rows_per_vcpu_s, rows)


def measure(sheet: RunSheet, tier: Tier, haproxy_binding: str = "") -> Measure:
    """The unit ``tier`` is sized in; for HAProxy, the one its ``haproxy_binding`` names:
    concurrent connections (memory) or busy cores (connection and handshake rate)."""
    figures = _sheet_figures(sheet)
    per = processes_per_instance(sheet, sheet.tiers.get(tier).instance_type) or 1
    if tier == "ingest":
        return Measure("votes/s", per * figures.ingest_votes_per_s, lambda v, _: v)
    if tier == "tally":
        return Measure("votes/s", per * figures.tally_votes_per_s, lambda v, _: v)
    if tier == "push":
        return Measure("viewers", per * figures.push_viewers, lambda _, n: float(n))
    if haproxy_binding.startswith("concurrent"):
        return Measure(
            "concurrent connections",
            float(haproxy_conn_limit(sheet, figures).maxconn),
            lambda v, n: _planned_load(sheet, v, n)["haproxy_concurrent_conns"],
        )
    return Measure("cores", float(per), lambda v, n: _planned_load(sheet, v, n)["haproxy_cores"])
