"""the cores each tier needs per 100,000 votes/s, from this machine's measured profiles.

``buzzer bench cost`` measures nothing itself: it reads the profiles the other benches
wrote (``bench lb`` -> lb/profiles/measured.json, ``bench redis`` -> lb/profiles/redis.json,
``bench push`` -> lb/profiles/push.json), prints each figure's source and when it was
measured, and divides. A figure no bench measured (the tally consumer, PostgreSQL's rows
per vCPU) is taken from the planner's profile and marked as such, so an estimate is never
read as a measurement. ``--max-age-h`` flags profiles older than the run it belongs to.
The last line is one JSON object.

Cores are core-seconds per second of peak at 100 % use: the planner adds its headroom
on top (``lb plan``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb.planner import MEASURED_DEFAULTS, MEASURED_PATH, REDIS_PATH, PlanInputs, plan

PUSH_PATH = MEASURED_PATH.parent / "push.json"
VOTES = 100_000.0
VIEWERS = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lb", type=Path, default=MEASURED_PATH, help="bench lb's profile")
    p.add_argument("--redis", type=Path, default=REDIS_PATH, help="bench redis's profile")
    p.add_argument("--push", type=Path, default=PUSH_PATH, help="bench push's profile")
    p.add_argument(
        "--max-age-h",
        type=float,
        default=12.0,
        help="flag profiles measured longer ago than this (default 12 h)",
    )


@dataclass(frozen=True)
class Row:
    tier: str
    what: str
    per_core: float
    """Votes (or viewers) one core handles."""
    demand: float
    """Votes/s (or viewers) the table is for."""
    source: str
    measured: bool

    @property
    def cores(self) -> float:
        return self.demand / self.per_core if self.per_core > 0 else float("nan")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def _stamp(data: dict[str, Any], path: Path) -> str:
    """When the profile was measured: its own timestamp, else the file's mtime."""
    at = data.get("measured_at")
    if at:
        return str(at)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ (file time)", time.gmtime(path.stat().st_mtime))


def _age_h(data: dict[str, Any], path: Path) -> float:
    at = data.get("measured_at")
    if at:
        t = time.mktime(time.strptime(str(at), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    else:
        t = path.stat().st_mtime
    return (time.time() - t) / 3600


def rows(
    lb: dict[str, Any] | None,
    redis: dict[str, Any] | None,
    push: dict[str, Any] | None,
    sources: dict[str, str] | None = None,
) -> list[Row]:
    """The table's rows from the three profiles (any may be missing: ``None``)."""
    src = sources or {}
    base = MEASURED_DEFAULTS
    prof = (lb or {}).get("profile", {})
    out: list[Row] = []

    def lb_row(tier: str, what: str, key: str) -> None:
        if key in prof:
            out.append(Row(tier, what, float(prof[key]), VOTES, src.get("lb", "bench lb"), True))
        else:
            fallback = float(getattr(base, key))
            out.append(Row(tier, what, fallback, VOTES, "planner default", False))

    lb_row("haproxy", "h2, one kept TLS connection, streams (app clients)", "haproxy_h2_req_per_s")
    lb_row("haproxy", "HTTP/1.1, new resumed TLS connection per vote", "haproxy_tls_resumed_per_s")
    lb_row("ingest", "votes/s per process (through HAProxy)", "ingest_votes_per_s")
    if redis and redis.get("accepted_per_cpu_s") and redis.get("applied_per_cpu_s"):
        s = src.get("redis", "bench redis")
        out.append(
            Row("redis", "accept (vote_batch.lua)", redis["accepted_per_cpu_s"], VOTES, s, True)
        )
        out.append(Row("redis", "apply (apply.lua)", redis["applied_per_cpu_s"], VOTES, s, True))
    else:
        # The default is for both scripts together: half the time each.
        both = base.redis_votes_per_s
        out.append(Row("redis", "accept + apply", both, VOTES, "planner default", False))
    out.append(
        Row("tally", "consumer votes/s", base.tally_votes_per_s, VOTES, "planner default", False)
    )
    # The writer's load is rows, not votes (see lb.planner): take the planner's row count
    # for this peak and its rows per vCPU, an estimate no bench measures yet.
    p = plan(PlanInputs(peak_votes_per_s=VOTES, headroom=1.0), base)
    pg_rows = p.load["postgres_rows_per_s"]
    out.append(
        Row(
            "postgres",
            f"writer ({pg_rows:,.0f} rows/s at this peak)",
            base.postgres_rows_per_vcpu_s * VOTES / pg_rows,
            VOTES,
            "planner estimate",
            False,
        )
    )
    if push and push.get("cores_per_1m_viewers"):
        per_core = VIEWERS / float(push["cores_per_1m_viewers"])
        what = f"per 1M viewers, {push.get('updates_per_s', '?')} updates/s"
        out.append(Row("push", what, per_core, VIEWERS, src.get("push", "bench push"), True))
    else:
        out.append(
            Row("push", "per 1M viewers", base.push_viewers, VIEWERS, "planner default", False)
        )
    return out


def table(rs: list[Row]) -> str:
    head = f"{'tier':<9} {'what':<54} {'per core':>10} {'cores':>7}  source"
    lines = [head, "-" * len(head)]
    for r in rs:
        mark = "" if r.measured else " (not measured)"
        lines.append(
            f"{r.tier:<9} {r.what:<54} {r.per_core:>10,.0f} {r.cores:>7.1f}  {r.source}{mark}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    files = {"lb": args.lb, "redis": args.redis, "push": args.push}
    data = {k: _read(p) for k, p in files.items()}
    sources: dict[str, str] = {}
    stale: list[str] = []
    for name, d in data.items():
        if d is None:
            print(f"{name:<6} no profile at {files[name]}: run `buzzer bench {name}`")
            continue
        sources[name] = f"bench {name} {_stamp(d, files[name])}"
        if _age_h(d, files[name]) > args.max_age_h:
            stale.append(name)
    print(f"cores per {VOTES:,.0f} votes/s (push: per {VIEWERS:,} viewers), at 100 % use\n")
    rs = rows(data["lb"], data["redis"], data["push"], sources)
    print(table(rs))
    # The app-client HAProxy row is the one the planner uses for TLS votes on kept
    # connections; the per-vote-connection row is its worst case, so the total uses h2.
    per_vote_rows = [r for r in rs if r.tier != "push" and "new resumed" not in r.what]
    total = sum(r.cores for r in per_vote_rows)
    push_cores = sum(r.cores for r in rs if r.tier == "push")
    print(
        f"\ntotal per {VOTES:,.0f} votes/s (HAProxy as h2 app clients): {total:.1f} cores;"
        f" push per {VIEWERS:,} viewers: {push_cores:.1f} cores"
    )
    print(f"seed's figure: 5,000 requests/s per node -> {VOTES / 5000:.0f} nodes for HAProxy alone")
    if stale:
        print(f"WARNING: profiles older than {args.max_age_h:g} h: {', '.join(stale)}")
    summary = {
        "bench": "cost",
        "votes_per_s": VOTES,
        "viewers": VIEWERS,
        "rows": [
            {
                "tier": r.tier,
                "what": r.what,
                "per_core": round(r.per_core, 1),
                "cores": round(r.cores, 2),
                "source": r.source,
                "measured": r.measured,
            }
            for r in rs
        ],
        "total_cores_per_100k_votes": round(total, 2),
        "push_cores_per_1m_viewers": round(push_cores, 2),
        "stale": stale,
    }
    print(json.dumps(summary))
    return 0
