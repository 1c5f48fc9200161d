"""The monitoring files: equal to their rendering, valid for the real ``promtool``, every
alert fires on its input series and stays quiet on normal ones, every dashboard query
parses, and the runbook and the rules name each other."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from buzzer import monitoring

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / monitoring.RULES_FILE
RUNBOOK = ROOT / monitoring.RUNBOOK


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package "
            "(apt-get install prometheus; ./scripts/setup does)"
        )
    return path


def run(promtool: str, *args: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_committed_files_equal_their_rendering() -> None:
    for rel, text in monitoring.rendered_files().items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run `buzzer monitoring render`"


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_checks_config(promtool: str, config: str) -> None:
    out = run(promtool, "check", "config", PROM / config)
    assert f"{len(monitoring.alerts(monitoring.Bounds.defaults()))} rules found" in out


def test_promtool_checks_rules(promtool: str) -> None:
    run(promtool, "check", "rules", RULES)


def test_production_config_discovers_every_tier_by_the_show_tag() -> None:
    import tiers
    from infra.desired import SHOW_TAG, TIER_TAG

    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert monitoring.SHOW_TAG == SHOW_TAG
    assert "__meta_ec2_tag_" + re.sub(r"\W", "_", TIER_TAG) == monitoring.TIER_META
    for tier in [*tiers.SERVICES, tiers.Tier("haproxy", tiers.HAPROXY_STATS_PORT, False)]:
        (sd,) = jobs[tier.name]["ec2_sd_configs"]
        assert sd["port"] == tier.port
        assert {"name": "tag-key", "values": [SHOW_TAG]} in sd["filters"]
        keep = jobs[tier.name]["relabel_configs"][0]
        assert keep == {
            "source_labels": [monitoring.TIER_META],
            "regex": tier.name,
            "action": "keep",
        }
    assert {"redis", "postgres"} <= set(jobs)


# --- promtool test rules ---------------------------------------------------------------

HIST = ["0.005", "0.01", "0.05", "0.1", "0.25", "0.5", "1", "+Inf"]


def histogram(name: str, labels: str, slowest_le: str) -> list[dict[str, str]]:
    """10 observations per 15 s, all in the bucket ending at ``slowest_le`` (cumulative
    buckets: 0 below it, +10 per step from it upwards)."""
    sep = "," if labels else ""
    out = []
    for le in HIST:
        grows = HIST.index(le) >= HIST.index(slowest_le)
        out.append(
            {
                "series": f'{name}_bucket{{{labels}{sep}le="{le}"}}',
                "values": "0+10x40" if grows else "0x40",
            }
        )
    return out


VOTES = 'service="ingest",route="/v1/polls/{poll}/votes"'


def case(
    alert: str, series: list[dict[str, str]], eval_time: str, fires: list[dict[str, str]]
) -> dict[str, Any]:
    return {"alert": alert, "series": series, "eval_time": eval_time, "fires": fires}


CASES = [
    case(
        "BuzzerIngest503s",
        [
            {"series": f'buzzer_http_requests_total{{{VOTES},status="503"}}', "values": "0+10x40"},
            {"series": f'buzzer_http_requests_total{{{VOTES},status="202"}}', "values": "0+100x40"},
        ],
        "5m",
        [{}],
    ),
    case(
        "BuzzerIngest503s",
        [
            {"series": f'buzzer_http_requests_total{{{VOTES},status="503"}}', "values": "0+1x40"},
            {
                "series": f'buzzer_http_requests_total{{{VOTES},status="202"}}',
                "values": "0+1000x40",
            },
        ],
        "5m",
        [],
    ),
    case(
        "BuzzerBacklogNearBound",
        [{"series": 'buzzer_ingest_backlog{instance="a"}', "values": "170000x20"}],
        "2m",
        [{}],
    ),
    case(
        "BuzzerBacklogNearBound",
        [{"series": 'buzzer_ingest_backlog{instance="a"}', "values": "150000x20"}],
        "2m",
        [],
    ),
    case(
        "BuzzerTallyLagging",
        [{"series": 'buzzer_ingest_backlog{instance="a"}', "values": "0x4 6000x20"}],
        "3m",
        [{}],
    ),
    # Within its `for` window it is pending, not firing.
    case(
        "BuzzerTallyLagging",
        [{"series": 'buzzer_ingest_backlog{instance="a"}', "values": "0x4 6000x20"}],
        "90s",
        [],
    ),
    case(
        "BuzzerTallyLagging",
        [
            {
                "series": 'buzzer_stream_lag{stream="votes",partition="0",instance="t1"}',
                "values": "4000x20",
            },
            {
                "series": 'buzzer_stream_lag{stream="votes",partition="1",instance="t1"}',
                "values": "2000x20",
            },
        ],
        "3m",
        [{}],
    ),
    case(
        "BuzzerTallyLagging",
        [{"series": 'buzzer_ingest_backlog{instance="a"}', "values": "3000x20"}],
        "3m",
        [],
    ),
    case(
        "BuzzerTallyPendingStuck",
        [{"series": 'buzzer_stream_pending{stream="votes",partition="2"}', "values": "1500x20"}],
        "3m",
        [{"partition": "2"}],
    ),
    case(
        "BuzzerTallyPendingStuck",
        [
            {
                "series": 'buzzer_stream_pending{stream="votes",partition="2"}',
                "values": "1500 0 1500 0 1500 0 1500 0 1500 0 1500 0 1500 0 1500 0 1500 0",
            }
        ],
        "3m",
        [],
    ),
    case(
        "BuzzerVoteLatencyHigh", histogram("buzzer_http_request_seconds", VOTES, "0.25"), "5m", [{}]
    ),
    case(
        "BuzzerVoteLatencyHigh", histogram("buzzer_http_request_seconds", VOTES, "0.01"), "5m", []
    ),
    case(
        "BuzzerRedisPipelineSlow",
        histogram("buzzer_ingest_pipeline_seconds", "", "0.1"),
        "5m",
        [{}],
    ),
    case(
        "BuzzerRedisPipelineSlow",
        histogram("buzzer_ingest_pipeline_seconds", "", "0.005"),
        "5m",
        [],
    ),
    case(
        "BuzzerPostgresWriterFailing",
        [{"series": "buzzer_tally_pg_errors_total", "values": "0+1x20"}],
        "4m",
        [{}],
    ),
    case(
        "BuzzerPostgresWriterFailing",
        [{"series": "buzzer_tally_pg_errors_total", "values": "3x20"}],
        "4m",
        [],
    ),
    case(
        "BuzzerPushRefusing",
        [{"series": 'buzzer_push_refused_total{code="1013"}', "values": "0+5x40"}],
        "5m",
        [{}],
    ),
    case(
        "BuzzerPushRefusing",
        [{"series": 'buzzer_push_refused_total{code="1013"}', "values": "2x40"}],
        "5m",
        [],
    ),
    case(
        "BuzzerPushNearCapacity",
        [{"series": "buzzer_push_connections", "values": "9000x20"}],
        "3m",
        [{}],
    ),
    case(
        "BuzzerPushNearCapacity",
        [{"series": "buzzer_push_connections", "values": "5000x20"}],
        "3m",
        [],
    ),
    case("BuzzerPushFanoutSlow", histogram("buzzer_push_fanout_seconds", "", "0.5"), "5m", [{}]),
    case("BuzzerPushFanoutSlow", histogram("buzzer_push_fanout_seconds", "", "0.05"), "5m", []),
    case(
        "BuzzerVoteToScreenSlow",
        histogram("buzzer_tally_vote_to_publish_seconds", "", "0.5"),
        "5m",
        [{}],
    ),
    case(
        "BuzzerVoteToScreenSlow",
        histogram("buzzer_push_delivery_delay_seconds", "", "0.5"),
        "5m",
        [{}],
    ),
    case(
        "BuzzerVoteToScreenSlow",
        histogram("buzzer_tally_vote_to_publish_seconds", "", "0.1")
        + histogram("buzzer_push_delivery_delay_seconds", "", "0.05"),
        "5m",
        [],
    ),
    case(
        "BuzzerHaproxyServerDown",
        [
            {
                "series": 'haproxy_server_status{instance="lb1",proxy="ingest",server="i1",state="DOWN"}',
                "values": "0x4 1x20",
            },
        ],
        "3m",
        [{"instance": "lb1", "proxy": "ingest"}],
    ),
    case(
        "BuzzerHaproxyServerDown",
        [
            {
                "series": 'haproxy_server_status{instance="lb1",proxy="ingest",server="i1",state="DOWN"}',
                "values": "0x20",
            },
            {
                "series": 'haproxy_server_status{instance="lb1",proxy="ingest",server="i1",state="UP"}',
                "values": "1x20",
            },
        ],
        "3m",
        [],
    ),
    case(
        "BuzzerHaproxyBackendEmpty",
        [
            {
                "series": 'haproxy_backend_active_servers{instance="lb1",proxy="push"}',
                "values": "0x20",
            }
        ],
        "2m",
        [{"proxy": "push"}],
    ),
    case(
        "BuzzerHaproxyBackendEmpty",
        [
            {
                "series": 'haproxy_backend_active_servers{instance="lb1",proxy="push"}',
                "values": "2x20",
            }
        ],
        "2m",
        [],
    ),
    case(
        "BuzzerRegistrationStorm",
        [
            {
                "series": 'buzzer_device_registrations_total{instance="a",result="account_limit"}',
                "values": "0+600x40",
            },
            {
                "series": 'buzzer_device_registrations_total{instance="a",result="account"}',
                "values": "0+60x40",
            },
        ],
        "9m",
        [{}],
    ),
    case(
        # Many genuine sign-ins and a few refusals (expired ID tokens) are not a storm.
        "BuzzerRegistrationStorm",
        [
            {
                "series": 'buzzer_device_registrations_total{instance="a",result="account"}',
                "values": "0+6000x40",
            },
            {
                "series": 'buzzer_device_registrations_total{instance="a",'
                'result="invalid_id_token"}',
                "values": "0+6x40",
            },
        ],
        "9m",
        [],
    ),
    case(
        "BuzzerTargetDown",
        [{"series": 'up{job="tally",instance="127.0.0.1:8090"}', "values": "1 0x20"}],
        "3m",
        [{"job": "tally", "instance": "127.0.0.1:8090"}],
    ),
    case(
        "BuzzerTargetDown",
        [{"series": 'up{job="tally",instance="127.0.0.1:8090"}', "values": "1x20"}],
        "3m",
        [],
    ),
]


def promtool_tests(rules_path: Path) -> dict[str, Any]:
    """One promtool test per case, its expected alerts with their full annotations."""
    rendered = yaml.safe_load(rules_path.read_text())["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rendered}
    tests = []
    for c in CASES:
        rule = by_name[c["alert"]]
        tests.append(
            {
                "name": f"{c['alert']} {'fires' if c['fires'] else 'stays quiet'}",
                "interval": "15s",
                "input_series": c["series"],
                "alert_rule_test": [
                    {
                        "eval_time": c["eval_time"],
                        "alertname": c["alert"],
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, **rule["labels"]},
                                "exp_annotations": rule["annotations"],
                            }
                            for labels in c["fires"]
                        ],
                    }
                ],
            }
        )
    return {"rule_files": [str(rules_path)], "evaluation_interval": "15s", "tests": tests}


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    names = {a.name for a in monitoring.alerts(monitoring.Bounds.defaults())}
    assert {c["alert"] for c in CASES if c["fires"]} == names
    assert {c["alert"] for c in CASES if not c["fires"]} == names


def test_promtool_test_rules(promtool: str, tmp_path: Path) -> None:
    spec = tmp_path / "buzzer_test.yml"
    spec.write_text(yaml.safe_dump(promtool_tests(RULES), sort_keys=False))
    out = run(promtool, "test", "rules", spec)
    assert "SUCCESS" in out


def test_promtool_test_rules_can_fail(promtool: str, tmp_path: Path) -> None:
    """The same tests against rules whose thresholds were doubled must fail: the input
    series sit close to the real thresholds, not anywhere above them."""
    b = monitoring.Bounds.defaults()
    doubled = monitoring.Bounds(
        b.max_backlog * 2,
        b.batch_size * 2,
        b.max_connections * 2,
        b.push_viewers * 2,
        b.publish_interval_ms * 2,
    )
    rules = tmp_path / "doubled.yml"
    rules.write_text(monitoring.rules(doubled))
    spec = tmp_path / "buzzer_test.yml"
    spec.write_text(yaml.safe_dump(promtool_tests(rules), sort_keys=False))
    proc = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert proc.returncode != 0
    for name in ("BuzzerBacklogNearBound", "BuzzerTallyLagging", "BuzzerPushNearCapacity"):
        assert name in proc.stdout + proc.stderr


# --- dashboard -----------------------------------------------------------------------

DASHBOARD = ROOT / "deploy" / "grafana" / "buzzer.json"


def test_every_dashboard_query_parses_with_promtool(promtool: str, tmp_path: Path) -> None:
    exprs = monitoring.dashboard_exprs(DASHBOARD.read_text())
    assert len(exprs) > 10
    # promtool parses recording rules' expressions with Prometheus's own parser.
    recording = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(recording))
    assert f"{len(exprs)} rules found" in run(promtool, "check", "rules", path)


def test_a_broken_query_fails_promtool(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "x",
                        "rules": [
                            {"record": "x:y", "expr": "sum(rate(buzzer_http_requests_total[1m])"}
                        ],
                    }
                ]
            }
        )
    )
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True).returncode


def test_dashboard_has_one_row_per_tier_with_its_planned_capacity() -> None:
    board = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows[:4] == ["HAProxy", "Ingest", "Tally", "Push"]
    plan = monitoring.example_plan()
    capacity = {
        t["expr"]
        for p in board["panels"]
        for t in p.get("targets", [])
        if t["expr"].startswith("vector(")
    }
    from lb.planner import PROFILES

    ingest = plan["ingest_processes"] * PROFILES["measured"].ingest_votes_per_s
    assert f"vector({ingest:g})" in capacity
    assert f"vector({plan['push_processes'] * PROFILES['measured'].push_viewers:g})" in capacity


def test_metric_names_are_found_in_queries() -> None:
    names = monitoring.metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(buzzer_x_bucket{a="b(c)"}[1m])))'
        " > 0.1 or max by (partition) (buzzer_y) and on (job) up == 0"
    )
    assert names == {"buzzer_x_bucket", "buzzer_y", "up"}


# --- runbook -------------------------------------------------------------------------


def headings(markdown: str) -> set[str]:
    """GitHub's anchors of the headings."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def test_each_rule_names_its_runbook_section_and_the_section_names_the_rule() -> None:
    text = RUNBOOK.read_text()
    anchors = headings(text)
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    for r in rules:
        path, anchor = r["annotations"]["runbook"].split("#")
        assert path == monitoring.RUNBOOK
        assert anchor in anchors, f"{r['alert']}: no section #{anchor} in {path}"
        assert r["labels"]["severity"] in {"critical", "warning"}
        assert r["annotations"]["summary"]
        section = text.split(f"### {r['alert']}", 1)[1].split("\n#", 1)[0]
        assert f"Threshold: {r['annotations']['threshold']}" in " ".join(section.split()), r[
            "alert"
        ]


def test_each_alarm_of_the_runbook_names_an_existing_rule() -> None:
    text = RUNBOOK.read_text()
    table = text.split("## What to watch", 1)[1].split("\n## ", 1)[0]
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| `") or line.startswith("| HAProxy")
    ]
    names = {a.name for a in monitoring.alerts(monitoring.Bounds.defaults())}
    named: set[str] = set()
    for row in rows:
        if "| dashboard only |" in row:
            continue
        found = set(re.findall(r"\[`?(Buzzer\w+)`?\]\(#(buzzer\w+)\)", row))
        assert found, f"alarm row names no rule: {row}"
        for name, anchor in found:
            assert name in names and anchor == name.lower(), row
            named.add(name)
    assert named == names
