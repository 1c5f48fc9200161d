"""The one place ``infra/`` talks to the lb planner: a load in, instances per tier out."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from lb import planner

if TYPE_CHECKING:
    from infra.runsheet import RunSheet, Tier

PROFILE_FIELDS: frozenset[str] = frozenset(
    f.name for f in fields(planner.Profile) if f.name not in ("name", "source")
)

# vCPUs of the types a show is likely to use; anything else needs
# capacity.instance_types.<type>.processes in the run sheet.
VCPUS: dict[str, int] = {
    f"{family}.{size}": n
    for family in ("c6i", "c7i", "c6g", "c7g", "c8g", "m6i", "m7i", "m6g", "m7g")
    for size, n in (
        ("large", 2),
        ("xlarge", 4),
        ("2xlarge", 8),
        ("4xlarge", 16),
        ("8xlarge", 32),
        ("12xlarge", 48),
        ("16xlarge", 64),
    )
}


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
        )


def known_profiles() -> list[str]:
    return sorted(planner.PROFILES)


def processes_per_instance(sheet: RunSheet, instance_type: str) -> int | None:
    cap = sheet.capacity.instance_types.get(instance_type)
    if cap is not None:
        return cap.processes
    return VCPUS.get(instance_type)


def _figures(sheet: RunSheet) -> dict[str, float]:
    """Sheet-wide figures, then each tier's instance-type figures for that tier only.

    A figure belongs to the tier its name starts with (``ingest_votes_per_s`` to the
    ingest tier), so a faster ingest instance type does not speed up the tally's.
    """
    out = dict(sheet.capacity.figures)
    from infra.runsheet import TIERS

    for tier in TIERS:
        cap = sheet.capacity.instance_types.get(sheet.tiers.get(tier).instance_type)
        if cap is None:
            continue
        out.update({k: v for k, v in cap.figures.items() if k.startswith(f"{tier}_")})
    return out


def tier_counts(sheet: RunSheet, votes_per_s: float, viewers: int) -> TierCounts:
    t = sheet.traffic
    inputs = planner.PlanInputs(
        peak_votes_per_s=votes_per_s,
        viewers=viewers,
        new_conn_share=t.new_conn_share,
        tls=t.tls,
        tls_resumption_rate=t.tls_resumption_rate,
        ecdsa=t.ecdsa,
        headroom=t.headroom,
        min_haproxy_nodes=t.min_haproxy_nodes,
        overrides=_figures(sheet),
    )
    profile = planner.PROFILES[sheet.capacity.profile]
    cp = planner.plan(inputs, profile)
    figures = replace(profile, **inputs.overrides)

    # The planner's HAProxy "node" is one core. Handshakes and requests spread over an
    # instance's cores (nbthread), so the rate-bound count divides by them; concurrent
    # connections are bound by memory per instance, which haproxy_max_conns describes.
    h = t.headroom
    cores = processes_per_instance(sheet, sheet.tiers.haproxy.instance_type) or 1
    concurrent = cp.load["haproxy_concurrent_conns"]
    haproxy = max(
        t.min_haproxy_nodes,
        math.ceil(round(cp.load["haproxy_cores"] / h / cores, 6)),
        math.ceil(round(concurrent / (figures.haproxy_max_conns * h), 6)),
    )
    maxconn = max(1000, min(figures.haproxy_max_conns, math.ceil(concurrent / haproxy / h)))

    def instances(tier: Tier, procs: int) -> int:
        per = processes_per_instance(sheet, sheet.tiers.get(tier).instance_type) or 1
        return max(1, math.ceil(procs / per))

    return TierCounts(
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
    )
