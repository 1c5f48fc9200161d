"""Prometheus configuration, alerting rules and the Grafana dashboard, rendered from the
table of tiers (``tiers``), the settings' bounds and the capacity plan, so that none of
them can drift from the code. ``deploy/prometheus`` and ``deploy/grafana`` hold the
renderings; a unit test checks that they equal what this module renders.

``buzzer monitoring render`` rewrites them; ``buzzer up --monitoring`` starts a local
Prometheus (Debian's binary) beside the stack with the local variant.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import tiers

if TYPE_CHECKING:
    from buzzer.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
RULES_FILE = "rules/buzzer.yml"
RUNBOOK = "docs/operations.md"

# The infra tags every instance carries (infra/desired.py SHOW_TAG, TIER_TAG); EC2 SD
# exposes tag "a:b" as label __meta_ec2_tag_a_b.
SHOW_TAG = "buzzer:show"
TIER_META = "__meta_ec2_tag_buzzer_tier"
SHOW_META = "__meta_ec2_tag_buzzer_show"
HAPROXY_JOB = "haproxy"
# The data tier runs outside infra's fleet (the run sheet names its Redis URL); its
# exporters are listed in a file the operator writes next to prometheus.yml.
DATA_TIER_FILE = "/etc/prometheus/buzzer-data-tier.yml"
DATA_EXPORTERS = (("redis", 9121), ("postgres", 9187))
# The worked example of docs/capacity.md: the plan the committed dashboard shows.
EXAMPLE_PEAK_VOTES_PER_S = 50_000
EXAMPLE_VIEWERS = 2_000_000
EXAMPLE_REGION = "eu-west-1"
VOTES_ROUTE = "/v1/polls/{poll}/votes"


def _duration(seconds: float) -> str:
    s = max(1, round(seconds))
    return f"{s // 60}m" if s % 60 == 0 else f"{s}s"


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True)


# --- scrape configuration ------------------------------------------------------------


def production_config(region: str = EXAMPLE_REGION, scrape_interval_s: int = 15) -> str:
    """Every tier discovered on EC2 by the ``buzzer:show`` tag, HAProxy's own exporter on
    its stats port, and the data tier's exporters from a file."""

    def ec2_job(job: str, port: int, tier: str, path: str = "/metrics") -> dict[str, Any]:
        return {
            "job_name": job,
            "metrics_path": path,
            "ec2_sd_configs": [
                {
                    "region": region,
                    "port": port,
                    "filters": [
                        {"name": "tag-key", "values": [SHOW_TAG]},
                        {"name": "instance-state-name", "values": ["running"]},
                    ],
                }
            ],
            "relabel_configs": [
                {"source_labels": [TIER_META], "regex": tier, "action": "keep"},
                {"source_labels": [TIER_META], "target_label": "tier"},
                {"source_labels": [SHOW_META], "target_label": "show"},
                {"source_labels": ["__meta_ec2_instance_id"], "target_label": "instance"},
            ],
        }

    jobs = [ec2_job(t.name, t.port, t.name, t.metrics_path) for t in tiers.SERVICES]
    jobs.append(ec2_job(HAPROXY_JOB, tiers.HAPROXY_STATS_PORT, "haproxy"))
    jobs += [
        {
            "job_name": name,
            "file_sd_configs": [{"files": [DATA_TIER_FILE]}],
            "relabel_configs": [
                {"source_labels": ["exporter"], "regex": name, "action": "keep"},
                {"target_label": "tier", "replacement": "data"},
            ],
        }
        for name, _ in DATA_EXPORTERS
    ]
    return _header("production: EC2 discovery by the buzzer:show tag") + _dump(
        {
            "global": {
                "scrape_interval": _duration(scrape_interval_s),
                "evaluation_interval": _duration(scrape_interval_s),
            },
            "rule_files": [RULES_FILE],
            "scrape_configs": jobs,
        }
    )


def data_tier_example() -> str:
    """The file the production config reads for the data tier, with placeholder hosts."""
    entries = [
        {"targets": [f"{name}.buzzer.internal:{port}"], "labels": {"exporter": name}}
        for name, port in DATA_EXPORTERS
    ]
    return _header(f"copy to {DATA_TIER_FILE} with the data tier's hosts") + _dump(entries)


@dataclass(frozen=True)
class LocalTargets:
    """Ports of one local stack, per job."""

    ports: Mapping[str, Sequence[int]]

    @classmethod
    def default(cls) -> LocalTargets:
        """What a plain ``buzzer up`` listens on."""
        from buzzer.stack import Stack

        stack = Stack(env={})
        stack.plan()
        return cls.of(stack)

    @classmethod
    def of(cls, stack: Stack) -> LocalTargets:
        ports: dict[str, list[int]] = {
            "ingest": list(stack.ingest_ports),
            "tally": [stack.tally_port],
        }
        if stack.with_push:
            ports["push"] = [stack.push_port]
        if stack.haproxy:
            ports[HAPROXY_JOB] = [stack.stats_port]
        return cls(ports)


def local_config(
    targets: LocalTargets, scrape_interval_s: float = 5, rules: str = RULES_FILE
) -> str:
    """The local variant: the same jobs and ``tier`` labels, static targets on 127.0.0.1."""
    jobs = [
        {
            "job_name": job,
            "static_configs": [
                {"targets": [f"127.0.0.1:{p}" for p in ports], "labels": {"tier": job}}
            ],
        }
        for job, ports in targets.ports.items()
    ]
    return _header("local: `buzzer up --monitoring`") + _dump(
        {
            "global": {
                "scrape_interval": _duration(scrape_interval_s),
                "evaluation_interval": _duration(scrape_interval_s),
            },
            "rule_files": [rules],
            "scrape_configs": jobs,
        }
    )


def _header(what: str) -> str:
    return f"# Rendered by buzzer/monitoring.py ({what}); edit there, then `buzzer monitoring render`.\n"


# --- alerting rules ------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """The figures the thresholds derive from: settings' bounds and measured capacity."""

    max_backlog: int
    batch_size: int
    max_connections: int
    push_viewers: int
    publish_interval_ms: int

    @classmethod
    def defaults(cls) -> Bounds:
        from lb.planner import PROFILES
        from services.common.settings import IngestSettings, PushSettings, TallySettings

        def default(model: Any, name: str) -> int:
            return int(model.model_fields[name].default)

        return cls(
            max_backlog=default(IngestSettings, "max_backlog"),
            batch_size=default(TallySettings, "batch_size"),
            max_connections=default(PushSettings, "max_connections"),
            push_viewers=PROFILES["measured"].push_viewers,
            publish_interval_ms=default(TallySettings, "publish_interval_ms"),
        )


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_s: int
    severity: str
    summary: str
    source: str
    """Where the threshold comes from (also said in the runbook section)."""

    @property
    def anchor(self) -> str:
        return self.name.lower()


def p99(metric: str, selector: str = "", window: str = "2m", q: float = 0.99) -> str:
    return f"histogram_quantile({q:g}, sum by (le) (rate({metric}_bucket{selector}[{window}])))"


def alerts(b: Bounds) -> list[Alert]:
    votes = f'{{service="ingest",route="{VOTES_ROUTE}"}}'
    backlog_near = int(b.max_backlog * 0.8)
    lag = 5 * b.batch_size
    push_full = int(min(b.max_connections, b.push_viewers) * 0.8)
    publish_slow = 3 * b.publish_interval_ms / 1000
    return [
        Alert(
            "BuzzerIngest503s",
            'sum(rate(buzzer_http_requests_total{service="ingest",status="503"}[1m]))'
            ' > 0.01 * sum(rate(buzzer_http_requests_total{service="ingest"}[1m]))',
            120,
            "warning",
            "Ingest answers 503 to more than 1% of requests: a bound is hit or Redis is away",
            "`buzzer bench stack` sustains its highest rate with no 503 (README, Benchmarks)",
        ),
        Alert(
            "BuzzerBacklogNearBound",
            f"max(buzzer_ingest_backlog) > {backlog_near}",
            30,
            "critical",
            f"Unapplied votes above 80% of BUZZER_MAX_BACKLOG ({b.max_backlog}): ingest will answer 503",
            "BUZZER_MAX_BACKLOG (settings)",
        ),
        Alert(
            "BuzzerTallyLagging",
            f"max(buzzer_ingest_backlog) > {lag}"
            f' or sum(max by (partition) (buzzer_stream_lag{{stream="votes"}})) > {lag}',
            60,
            "critical",
            f"The tally is more than 5 batches ({lag} votes) behind: counts on screen lag",
            "BUZZER_BATCH_SIZE (settings): a tally that keeps up holds about one batch",
        ),
        Alert(
            "BuzzerTallyPendingStuck",
            f'min by (partition) (min_over_time(buzzer_stream_pending{{stream="votes"}}[1m])) > {b.batch_size}',
            60,
            "warning",
            "More than a batch pending on a partition for a minute: a consumer is dead and not claimed",
            "BUZZER_BATCH_SIZE and BUZZER_CLAIM_IDLE_MS (settings): a live consumer holds at most one batch",
        ),
        Alert(
            "BuzzerVoteLatencyHigh",
            f"{p99('buzzer_http_request_seconds', votes)} > 0.1",
            120,
            "critical",
            "Vote p99 above 100 ms: ingest processes are saturated",
            "the p99 < 100 ms bound of `buzzer bench stack` (README, Benchmarks)",
        ),
        Alert(
            "BuzzerRedisPipelineSlow",
            f"{p99('buzzer_ingest_pipeline_seconds')} > 0.05",
            120,
            "warning",
            "Redis pipeline p99 above 50 ms: Redis is slow (fsync, CPU)",
            "`buzzer bench ingest`: pipeline p99 under 5 ms; 10x that is trouble",
        ),
        Alert(
            "BuzzerPostgresWriterFailing",
            "sum(increase(buzzer_tally_pg_errors_total[2m])) > 0",
            60,
            "warning",
            "The tally's PostgreSQL writes fail: live counts move, totals and results wait",
            "zero: any failed write batch is abnormal",
        ),
        Alert(
            "BuzzerPushRefusing",
            "sum(rate(buzzer_push_refused_total[2m])) > 0",
            120,
            "warning",
            "Push refuses websockets (1013 full or 4029 per-IP limit)",
            "zero: a refused viewer sees no live count",
        ),
        Alert(
            "BuzzerPushNearCapacity",
            f"max(buzzer_push_connections) > {push_full}",
            60,
            "warning",
            f"A push process holds more than 80% of its {min(b.max_connections, b.push_viewers)} viewers",
            f"`buzzer bench push --find-max`: {b.push_viewers:,} viewers per process at 10 "
            "updates/s (lb/profiles/push.json), capped by BUZZER_MAX_CONNECTIONS",
        ),
        Alert(
            "BuzzerPushFanoutSlow",
            f"{p99('buzzer_push_fanout_seconds')} > 0.2",
            120,
            "warning",
            "Push fan-out p99 above 200 ms: push processes are CPU-bound",
            "`buzzer bench push`: the 200 ms publish-to-all-viewers target",
        ),
        Alert(
            "BuzzerVoteToScreenSlow",
            f"{p99('buzzer_tally_vote_to_publish_seconds')} > {publish_slow:g}"
            f" or {p99('buzzer_push_delivery_delay_seconds')} > 0.2",
            120,
            "warning",
            "Votes take too long to reach screens (tally publication or push delivery)",
            "BUZZER_PUBLISH_INTERVAL_MS (100 ms): a vote waits at most one interval plus a batch;"
            " push delivery: the 200 ms target of `buzzer bench push`",
        ),
        Alert(
            "BuzzerRegistrationStorm",
            'sum(rate(buzzer_device_registrations_total{result!~"anonymous|account"}[5m])) > 1',
            300,
            "warning",
            "Ingest refuses more than one device registration per second: a script is farming"
            " device tokens (or the ID token issuer is away)",
            "one refusal per second: an app registers once per install, so a steady stream of"
            " refused registrations is a script or a broken sign-in",
        ),
        Alert(
            "BuzzerHaproxyServerDown",
            'sum by (instance, proxy) (haproxy_server_status{proxy=~"ingest|push",state="DOWN"}) > 0',
            30,
            "warning",
            "HAProxy took a web node out: it failed its /readyz check",
            "HAProxy marks a node down within 2-3 s (docs/haproxy.md)",
        ),
        Alert(
            "BuzzerHaproxyBackendEmpty",
            'max by (proxy) (haproxy_backend_active_servers{proxy=~"ingest|push"}) == 0',
            10,
            "critical",
            "No web node left in an HAProxy backend: every request to it fails",
            "zero servers: nothing can answer",
        ),
        Alert(
            "BuzzerTargetDown",
            'up{job=~"ingest|tally|push|haproxy"} == 0',
            60,
            "warning",
            "A Buzzer process does not answer /metrics",
            "every process serves /metrics while it runs",
        ),
    ]


def rules(b: Bounds, for_scale: float = 1.0) -> str:
    """The alerting rules; ``for_scale`` shortens every ``for`` window (live tests only)."""
    out = []
    for a in alerts(b):
        out.append(
            {
                "alert": a.name,
                "expr": a.expr,
                "for": _duration(a.for_s * for_scale),
                "labels": {"severity": a.severity},
                "annotations": {
                    "summary": a.summary,
                    "runbook": f"{RUNBOOK}#{a.anchor}",
                    "threshold": a.source,
                },
            }
        )
    return _header("alerting rules for every alarm of docs/operations.md") + _dump(
        {"groups": [{"name": "buzzer", "rules": out}]}
    )


# --- dashboard -----------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]
    """(legend, PromQL) pairs."""
    unit: str = "short"
    capacity: float | None = None
    capacity_label: str = ""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def dashboard_rows(plan: Mapping[str, Any]) -> list[Row]:
    """One row per tier; each capacity line is the plan's figure for that tier."""
    from lb.planner import PROFILES

    prof = PROFILES[str(plan.get("profile", "measured"))]
    load = plan["load"]
    conns = plan["haproxy_nodes"] * plan["maxconn_per_node"]
    ingest_cap = plan["ingest_processes"] * prof.ingest_votes_per_s
    tally_cap = plan["tally_consumers"] * prof.tally_votes_per_s
    push_cap = plan["push_processes"] * prof.push_viewers
    return [
        Row(
            "HAProxy",
            (
                Panel(
                    "New connections/s",
                    (
                        (
                            "new connections/s",
                            'sum(rate(haproxy_frontend_connections_total{proxy!="stats"}[1m]))',
                        ),
                    ),
                    "reqps",
                    load["haproxy_new_conns_per_s"],
                    "planned peak",
                ),
                Panel(
                    "Current connections",
                    (("connections", 'sum(haproxy_frontend_current_sessions{proxy!="stats"})'),),
                    "short",
                    conns,
                    f"planned capacity ({plan['haproxy_nodes']} nodes x maxconn)",
                ),
                Panel(
                    "Backend 5xx/s and servers up",
                    (
                        (
                            "5xx/s {{proxy}}",
                            'sum by (proxy) (rate(haproxy_backend_http_responses_total{code="5xx"}[1m]))',
                        ),
                        ("servers up {{proxy}}", "sum by (proxy) (haproxy_backend_active_servers)"),
                    ),
                ),
            ),
        ),
        Row(
            "Ingest",
            (
                Panel(
                    "Votes/s accepted and refused",
                    (
                        (
                            "202/s",
                            f'sum(rate(buzzer_http_requests_total{{service="ingest",route="{VOTES_ROUTE}",status="202"}}[1m]))',
                        ),
                        (
                            "503/s",
                            'sum(rate(buzzer_http_requests_total{service="ingest",status="503"}[1m]))',
                        ),
                        (
                            "4xx/s",
                            'sum(rate(buzzer_http_requests_total{service="ingest",status=~"4.."}[1m]))',
                        ),
                    ),
                    "reqps",
                    ingest_cap,
                    f"planned capacity ({plan['ingest_processes']} processes)",
                ),
                Panel(
                    "Vote latency p50/p99",
                    (
                        (
                            "p99",
                            p99(
                                "buzzer_http_request_seconds",
                                f'{{service="ingest",route="{VOTES_ROUTE}"}}',
                                "1m",
                            ),
                        ),
                        (
                            "p50",
                            p99(
                                "buzzer_http_request_seconds",
                                f'{{service="ingest",route="{VOTES_ROUTE}"}}',
                                "1m",
                                q=0.5,
                            ),
                        ),
                    ),
                    "s",
                    0.1,
                    "p99 bound",
                ),
                Panel(
                    "Backlog and in flight",
                    (
                        ("backlog", "max(buzzer_ingest_backlog)"),
                        ("in flight", "sum(buzzer_ingest_inflight)"),
                    ),
                    "short",
                    None,
                ),
                Panel(
                    "Redis pipeline p99",
                    (("p99", p99("buzzer_ingest_pipeline_seconds", "", "1m")),),
                    "s",
                    0.05,
                    "alarm",
                ),
            ),
        ),
        Row(
            "Tally",
            (
                Panel(
                    "Votes applied/s",
                    (("applied/s", "sum(rate(buzzer_tally_applied_entries_total[1m]))"),),
                    "reqps",
                    tally_cap,
                    f"planned capacity ({plan['tally_consumers']} consumers)",
                ),
                Panel(
                    "Stream lag and pending",
                    (
                        (
                            "lag {{stream}}",
                            "sum by (stream) (max by (stream, partition) (buzzer_stream_lag))",
                        ),
                        (
                            "pending {{stream}}",
                            "sum by (stream) (max by (stream, partition) (buzzer_stream_pending))",
                        ),
                    ),
                ),
                Panel(
                    "Vote to publication p99, PostgreSQL write p99",
                    (
                        (
                            "vote to publication",
                            p99("buzzer_tally_vote_to_publish_seconds", "", "1m"),
                        ),
                        ("pg write", p99("buzzer_tally_pg_write_seconds", "", "1m")),
                    ),
                    "s",
                ),
                Panel(
                    "PostgreSQL write errors/s",
                    (("errors/s", "sum(rate(buzzer_tally_pg_errors_total[1m]))"),),
                ),
            ),
        ),
        Row(
            "Push",
            (
                Panel(
                    "Viewers",
                    (("viewers", "sum(buzzer_push_connections)"),),
                    "short",
                    push_cap,
                    f"planned capacity ({plan['push_processes']} processes)",
                ),
                Panel(
                    "Fan-out and delivery p99",
                    (
                        ("fan-out", p99("buzzer_push_fanout_seconds", "", "1m")),
                        ("publish to screen", p99("buzzer_push_delivery_delay_seconds", "", "1m")),
                    ),
                    "s",
                    0.2,
                    "target",
                ),
                Panel(
                    "Refused/s and slow clients",
                    (
                        (
                            "refused/s {{code}}",
                            "sum by (code) (rate(buzzer_push_refused_total[1m]))",
                        ),
                        ("slow clients", "sum(buzzer_push_slow_clients)"),
                    ),
                ),
            ),
        ),
        Row(
            "Targets", (Panel("Processes answering /metrics", (("{{job}}", "sum by (job) (up)"),)),)
        ),
    ]


def dashboard(plan: Mapping[str, Any]) -> str:
    panels: list[dict[str, Any]] = []
    pid = 0
    y = 0
    for row in dashboard_rows(plan):
        pid += 1
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        y += 1
        width = 24 // max(1, len(row.panels))
        for i, p in enumerate(row.panels):
            pid += 1
            targets = [
                {"refId": chr(65 + j), "expr": expr, "legendFormat": legend}
                for j, (legend, expr) in enumerate(p.exprs)
            ]
            if p.capacity is not None:
                targets.append(
                    {
                        "refId": chr(65 + len(targets)),
                        "expr": f"vector({p.capacity:g})",
                        "legendFormat": p.capacity_label,
                    }
                )
            panels.append(
                {
                    "id": pid,
                    "type": "timeseries",
                    "title": p.title,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "gridPos": {"x": i * width, "y": y, "w": width, "h": 8},
                    "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                    "targets": targets,
                }
            )
        y += 8
    board = {
        "title": "Buzzer: the night of the show",
        "uid": "buzzer-show",
        "description": "One row per tier; capacity lines from `buzzer lb plan --json` "
        f"(profile {plan.get('profile')}). Rendered by buzzer/monitoring.py.",
        "tags": ["buzzer"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "links": [{"title": "Runbook", "url": RUNBOOK, "type": "link"}],
        "panels": panels,
    }
    return json.dumps(board, indent=2) + "\n"


def dashboard_exprs(text: str) -> list[str]:
    """Every PromQL expression of a rendered dashboard."""
    board = json.loads(text)
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels or keywords)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group(0).lower() in _PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def example_plan() -> dict[str, Any]:
    from lb.planner import PROFILES, PlanInputs, plan

    return dict(
        plan(
            PlanInputs(peak_votes_per_s=EXAMPLE_PEAK_VOTES_PER_S, viewers=EXAMPLE_VIEWERS),
            PROFILES["measured"],
        ).to_json()
    )


# --- files ---------------------------------------------------------------------------


def rendered_files(
    plan: Mapping[str, Any] | None = None, region: str = EXAMPLE_REGION
) -> dict[Path, str]:
    """Every committed monitoring file, by path relative to the repository."""
    b = Bounds.defaults()
    return {
        Path("deploy/prometheus/prometheus.yml"): production_config(region),
        Path("deploy/prometheus/prometheus.local.yml"): local_config(LocalTargets.default()),
        Path("deploy/prometheus/data-tier.example.yml"): data_tier_example(),
        Path("deploy/prometheus") / RULES_FILE: rules(b),
        Path("deploy/grafana/buzzer.json"): dashboard(plan or example_plan()),
    }


# --- the local Prometheus ------------------------------------------------------------


@dataclass
class LocalPrometheus:
    """Debian's ``prometheus`` binary scraping a local stack."""

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(
        self,
        targets: LocalTargets,
        bounds: Bounds | None = None,
        interval_s: float = 5,
        for_scale: float = 1.0,
        timeout: float = 30,
    ) -> LocalPrometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus not found: install Debian's `prometheus` package (scripts/setup does)"
            )
        from buzzer.ports import bindable

        if not bindable(self.port):
            raise RuntimeError(f"port {self.port} already in use (another Prometheus?)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rules").mkdir(exist_ok=True)
        (self.workdir / RULES_FILE).write_text(rules(bounds or Bounds.defaults(), for_scale))
        config = self.workdir / "prometheus.yml"
        config.write_text(local_config(targets, interval_s))
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.proc.returncode}; "
                    f"see {self.workdir / 'prometheus.log'}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s ({self.url}/-/ready)")

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_for_stack(stack: Stack, port: int) -> LocalPrometheus:
    """What ``buzzer up --monitoring`` runs once the stack is up."""
    return LocalPrometheus(stack.state_dir.resolve() / "prometheus", port).start(
        LocalTargets.of(stack)
    )


# --- command line --------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    mon = sub.add_parser("monitoring", help="Prometheus configuration, alerting rules, dashboard")
    msub = mon.add_subparsers(dest="monitoring_cmd", required=True)
    render = msub.add_parser("render", help="write deploy/prometheus and deploy/grafana")
    render.add_argument("--out", type=Path, default=ROOT, help="directory holding deploy/")
    render.add_argument(
        "--plan",
        type=Path,
        help="`buzzer lb plan --json` output for the "
        "dashboard's capacity lines (default: docs/capacity.md's example)",
    )
    render.add_argument("--region", default=EXAMPLE_REGION, help="AWS region of the fleet")
    render.set_defaults(func=_render)


def _render(args: argparse.Namespace) -> int:
    plan = json.loads(args.plan.read_text()) if args.plan else None
    for rel, text in rendered_files(plan, args.region).items():
        path = args.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0
