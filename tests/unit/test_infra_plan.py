"""Run sheet parsing, the capacity timeline, user data and the chart: no AWS."""

from __future__ import annotations

import argparse
import base64
import copy
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from infra import cli, desired, timeline, userdata
from infra.capacity import tier_counts
from infra.runsheet import RunSheetError, load, parse
from lb import planner

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).parents[2] / "examples" / "runsheet.yaml"


@pytest.fixture
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["infra", *argv])
    rc: int = args.func(args)
    return rc


def test_example_runsheet_parses() -> None:
    sheet = load(EXAMPLE)
    assert sheet.show == "final-2026"
    assert [p.id for p in sheet.polls] == ["semi-1", "final"]
    assert sheet.on_air.tzinfo is not None


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(on_air="2026-12-19T19:00:00"), "$.on_air"),
        (
            lambda d: d["polls"][1].update(call_to_action="2026-12-19T20:00:00Z"),
            "polls[1].call_to_action",
        ),
        (lambda d: d["polls"][0].update(peak_votes_per_s=-1), "$.polls[0].peak_votes_per_s"),
        (lambda d: d.update(off_air="2026-12-19T18:00:00Z"), "$.off_air"),
        (
            lambda d: d["tiers"]["ingest"].update(instance_type="z9.huge"),
            "tiers.ingest.instance_type",
        ),
        (lambda d: d["capacity"].update(profile="guess"), "capacity.profile"),
        (lambda d: d["capacity"]["figures"].update(votes=1), "capacity.figures.votes"),
        (lambda d: d["network"].update(vpc="x"), "network"),
        (lambda d: d.update(show="Final Show!"), "$.show"),
        (lambda d: d["polls"].append(copy.deepcopy(d["polls"][0])), "polls[2].id"),
        (lambda d: d.pop("data"), "data.redis"),
        (lambda d: d["app"].update(redis_url="redis://r:6379/0"), "app.redis_url"),
        (
            lambda d: d["data"]["redis"].update(replicas_per_shard=6),
            "data.redis.replicas_per_shard",
        ),
        (lambda d: d["data"]["postgres"].update(storage_gb=5), "data.postgres.storage_gb"),
        (lambda d: d["network"].update(monitoring_cidr="10.0.64/33"), "network.monitoring_cidr"),
        (lambda d: d["network"].update(admin_cidr="office"), "network.admin_cidr"),
    ],
)
def test_errors_name_the_field(raw: dict[str, Any], edit: Any, field: str) -> None:
    edit(raw)
    with pytest.raises(RunSheetError) as exc:
        parse(raw)
    assert field in str(exc.value)


def test_missing_file_is_a_runsheet_error(tmp_path: Path) -> None:
    with pytest.raises(RunSheetError, match="No such file"):
        load(tmp_path / "nope.yaml")


def test_timeline_lead_times_and_monotonic_levels() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    assert tl.haproxy_ready_by == sheet.on_air - timedelta(minutes=60)
    names = [s.name for s in tl.steps]
    assert names == ["warmup", "cta-semi-1", "cta-final", "scalein"]
    at = {s.name: s.at for s in tl.steps}
    assert at["warmup"] == sheet.on_air - timedelta(minutes=20)
    assert at["cta-semi-1"] == sheet.polls[0].call_to_action - timedelta(minutes=20)
    assert at["scalein"] == sheet.off_air + timedelta(minutes=30)
    # Up only until off-air, whatever the poll order or size.
    for tier in ("ingest", "tally", "push"):
        levels = [s.counts[tier] for s in tl.steps[:-1]]  # type: ignore[index]
        assert levels == sorted(levels)
        assert tl.steps[-1].counts[tier] == 0  # type: ignore[index]
    final = tier_counts(sheet, 120_000, 3_000_000)
    assert tl.level_at("ingest", sheet.polls[1].call_to_action) == final.ingest
    assert tl.haproxy_nodes >= final.haproxy > 8  # more than one multivalue answer holds


def test_smaller_later_poll_does_not_lower_capacity(raw: dict[str, Any]) -> None:
    raw["polls"][1]["peak_votes_per_s"] = 1000
    tl = timeline.build(parse(raw))
    cta = {s.name: s.counts["ingest"] for s in tl.steps}
    assert cta["cta-final"] == cta["cta-semi-1"] > 1


def test_actions_skip_the_past_and_fold_it_into_the_current_size() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    before = sheet.on_air - timedelta(hours=3)
    assert [a.name for a in tl.actions("ingest", before)] == [
        "cta-semi-1",
        "cta-final",
        "scalein",
    ]  # warmup leaves ingest at 1, the idle level: no action needed
    mid = sheet.polls[0].call_to_action
    acts = tl.actions("ingest", mid)
    assert [a.name for a in acts] == ["cta-final", "scalein"]
    assert tl.level_at("ingest", mid) == tl.steps[1].counts["ingest"]
    assert tl.in_freeze(mid) and not tl.in_freeze(before)


def test_desired_resources_and_tags() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    want = desired.build(sheet, tl, sheet.on_air - timedelta(hours=3), "eu-west-1")
    assert len(want.nodes) == tl.haproxy_nodes
    assert {n.subnet for n in want.nodes} == set(sheet.network.subnets)
    assert [g.name for g in want.groups] == [
        "buzzer-final-2026-ingest",
        "buzzer-final-2026-tally",
        "buzzer-final-2026-push",
    ]
    sgs = {sg.tier: sg for sg in want.security_groups}
    assert desired.Rule(443, "0.0.0.0/0") in sgs["haproxy"].rules
    # Prometheus reaches every /metrics from the monitoring range, and nothing else does.
    monitoring = sheet.network.monitoring_cidr
    assert monitoring is not None
    assert sgs["ingest"].rules == {
        desired.Rule(8081, source="haproxy"),
        desired.Rule(8081, monitoring),
    }
    assert sgs["tally"].rules == {desired.Rule(8090, monitoring)}
    assert desired.Rule(8404, monitoring) in sgs["haproxy"].rules
    assert desired.Rule(8404, "0.0.0.0/0") not in sgs["haproxy"].rules
    unmonitored = msgspec.structs.replace(
        sheet, network=msgspec.structs.replace(sheet.network, monitoring_cidr=None)
    )
    want = desired.build(unmonitored, tl, sheet.on_air - timedelta(hours=3), "eu-west-1")
    sgs = {sg.tier: sg for sg in want.security_groups}
    assert sgs["ingest"].rules == {desired.Rule(8081, source="haproxy")}
    assert sgs["tally"].rules == frozenset()
    assert {r.port for r in sgs["haproxy"].rules} == {80, 443}
    assert want.tags("push") == {"buzzer:show": "final-2026", "buzzer:tier": "push"}


def test_user_data_installs_tier_and_keeps_secrets_out() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    lb = userdata.render(sheet, tl, "haproxy", 8, "eu-west-1")
    assert "--source ec2:buzzer:show=final-2026" in lb
    assert "buzzer lb apply" in lb and "buzzer lb sync" in lb
    assert f"--maxconn {tl.peak.maxconn_per_node}" in lb
    # The example names Prometheus's range, so HAProxy's exporter listens beyond loopback.
    assert "--stats-bind 0.0.0.0" in lb
    unmonitored = msgspec.structs.replace(
        sheet, network=msgspec.structs.replace(sheet.network, monitoring_cidr=None)
    )
    assert "--stats-bind" not in userdata.render(unmonitored, tl, "haproxy", 8, "eu-west-1")
    ingest = userdata.render(sheet, tl, "ingest", 4, "eu-west-1")
    assert "buzzer serve ingest" in ingest
    assert "seq 1 4" in ingest
    assert "BUZZER_PORT=8081" in ingest
    assert '--name "$1"' in ingest and "fetch /buzzer/final-2026/TOKEN_SECRET" in ingest
    # The example's database is made by apply: its URL is put together on the node from
    # the RDS-managed secret; the only URL in user data is the template.
    assert ingest.count("postgresql://") == 1
    assert "postgresql://{user}:{password}@{sys.argv[1]}/{sys.argv[2]}" in ingest
    assert "aws secretsmanager get-secret-value" in ingest
    want = desired.build(sheet, tl, sheet.on_air - timedelta(hours=3), "eu-west-1")
    data = {t.tier: t.data for t in want.templates}
    assert base64.b64decode(str(data["tally"]["UserData"])).decode().startswith("#!/bin/bash")


def test_chart_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "capacity.png"
    assert run_cli("chart", str(EXAMPLE), "-o", str(out)) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_cli_plan_offline_and_bad_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("plan", str(EXAMPLE), "--offline") == 0
    out = capsys.readouterr().out
    assert "cta-final" in out and "haproxy ready" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("show: x\n")
    assert run_cli("plan", str(bad), "--offline") == 2
    err = capsys.readouterr().err
    assert err.startswith("buzzer infra plan: run sheet:") and err.count("\n") == 1


def test_now_option_parses_utc() -> None:
    assert cli._utc("2026-12-19T19:00:00Z") == datetime(2026, 12, 19, 19, tzinfo=UTC)


@pytest.mark.parametrize("tier", ["haproxy", "ingest", "tally", "push"])
def test_user_data_runs_only_real_buzzer_commands(tier: str) -> None:
    """Every `buzzer ...` line a node runs at boot parses with the real CLI, so a renamed
    flag fails here and not on the night."""
    import shlex

    from buzzer.cli import build_parser

    sheet = load(EXAMPLE)
    text = userdata.render(sheet, timeline.build(sheet), tier, 2, "eu-west-1")  # type: ignore[arg-type]
    commands = [
        line.split("/opt/buzzer/bin/buzzer", 1)[1]
        for line in text.splitlines()
        if "/opt/buzzer/bin/buzzer " in line
    ]
    assert commands
    for command in commands:
        args = build_parser().parse_args(shlex.split(command))
        assert callable(args.func), command


def test_cli_plan_says_instances_and_the_binding_resource(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli("plan", str(EXAMPLE), "--offline") == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("time (UTC)"))
    # The unit sits right above the tier columns it applies to.
    units, columns = lines[head - 1], lines[head]
    assert "instances per tier" in units
    span = units.strip("- ").strip()
    assert columns.index("haproxy") >= units.index("-") and "push" in columns
    assert span.startswith("instances per tier")
    # Time and step columns line up with the header.
    row = next(line for line in lines if "cta-final" in line)
    assert row.index("cta-final") == columns.index("step")

    peak = next(i for i, line in enumerate(lines) if line.startswith("tier"))
    assert "instances" in lines[peak] and "binding resource" in lines[peak]
    column = lines[peak].index("binding resource")
    rows = {line.split()[0]: line for line in lines[peak + 1 : peak + 5]}
    assert set(rows) == {"haproxy", "ingest", "tally", "push"}
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    for tier, line in rows.items():
        assert line.split()[1] == f"{tl.peak.get(tier):,}", line
        assert line[column:] == tl.peak.binding[tier], line
    assert "8 cores" in rows["haproxy"] and "4 processes" in rows["push"]
    if not planner.PROFILES["measured"].haproxy_bytes_per_conn:
        # Without a measured size per websocket the constant binds, and says so.
        assert rows["haproxy"][column:].startswith("concurrent connections: 3,300,000")
        assert "haproxy_max_conns constant" in rows["haproxy"]
    per_process = planner.PROFILES["measured"].push_viewers  # bench push's, when measured
    assert rows["push"][column:] == f"viewers: 3,000,000 / ({per_process:,} per process x 0.6)"


def test_cli_help_shows_defaults() -> None:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    infra = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = next(
        a for a in infra.choices["infra"]._actions if isinstance(a, argparse._SubParsersAction)
    )
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert action.help and "default" in action.help, (name, action.option_strings)
    assert "(default: 8)" in sub.choices["plan"].format_help()


def test_chart_draws_capacity_and_load_in_one_unit_per_tier() -> None:
    from infra import chart
    from infra.capacity import measure

    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    fig = chart.figure(tl)
    # One y-axis per tier: no twin axes with a second, unrelated unit.
    assert len(fig.axes) == 6
    units = {ax.get_title(loc="left").split(" ")[0]: ax.get_ylabel() for ax in fig.axes}
    # HAProxy's unit is what binds it in the plan: connections (memory) or busy cores.
    haproxy_unit = measure(sheet, "haproxy", tl.peak.binding["haproxy"]).unit
    assert haproxy_unit in ("concurrent connections", "cores")
    assert units == {"haproxy": haproxy_unit, "ingest": "votes/s",
                     "tally": "votes/s", "push": "viewers", "redis": "votes/s",
                     "postgres": "rows/s"}  # fmt: skip
    for ax in fig.axes[:4]:
        tier = ax.get_title(loc="left").split(" ")[0]
        lines = {line.get_label(): line for line in ax.get_lines()}
        capacity = list(lines["capacity (100 %)"].get_ydata())
        load_ = list(lines["expected load"].get_ydata())
        m = measure(sheet, tier, tl.peak.binding["haproxy"])  # type: ignore[arg-type]
        # Capacity is instances x what one instance carries, in the load's own unit.
        assert max(capacity) == tl.peak.get(tier) * m.per_instance  # type: ignore[arg-type]
        # Not "<= capacity x headroom": the expected load adds the baseline to a poll's
        # peak, which the plan sizes alone, so HAProxy's busiest minute is at 60.1 %.
        assert 0 < max(load_) < max(capacity), tier
        # The busiest moment is in the title with its share of capacity.
        assert "of capacity" in ax.get_title(loc="left")
    ingest = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("ingest"))
    load_ = list({ln.get_label(): ln for ln in ingest.get_lines()}["expected load"].get_ydata())
    final = next(p for p in sheet.polls if p.id == "final")
    assert max(load_) == pytest.approx(tl.votes_at(final.call_to_action))


def panel(tl: timeline.CapacityTimeline, name: str) -> tuple[list[float], list[float]]:
    """The capacity and expected-load curves of one panel of the chart."""
    from infra import chart

    ax = next(a for a in chart.figure(tl).axes if a.get_title(loc="left").startswith(f"{name} ("))
    lines = {line.get_label(): line for line in ax.get_lines()}
    return (
        list(lines["capacity (100 %)"].get_ydata()),
        list(lines["expected load"].get_ydata()),
    )


def test_chart_redis_panel_is_the_shards_votes_against_expected_votes() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    capacity, load_ = panel(tl, "redis")
    per_shard = planner.PROFILES["measured"].redis_votes_per_s
    assert max(capacity) == tl.peak.redis_shards * per_shard
    final = next(p for p in sheet.polls if p.id == "final")
    assert max(load_) == pytest.approx(tl.votes_at(final.call_to_action))
    # Made by apply before the show and never resized on air: one level throughout.
    assert {c for c in capacity if c} == {max(capacity)}


def test_chart_postgres_panel_is_the_writers_vcpus_against_its_rows() -> None:
    from infra import chart

    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    capacity, load_ = panel(tl, "postgres")
    profile = planner.PROFILES[sheet.capacity.profile]
    assert max(capacity) == tl.peak.postgres_vcpus * profile.postgres_rows_per_vcpu_s
    # One level throughout: made by apply, never resized on air.
    assert {c for c in capacity if c} == {max(capacity)}
    # No votes, no rows; the final's call to action is the busiest moment.
    assert load_[0] == 0
    final = next(p for p in sheet.polls if p.id == "final")
    i = load_.index(max(load_))
    assert 0 < max(load_) < max(capacity) * sheet.traffic.headroom
    assert chart._times(tl)[i] == final.call_to_action
    # An existing database, not made by apply, has no capacity to draw.
    assert sheet.data.postgres is not None
    pg = msgspec.structs.replace(sheet.data.postgres, existing_url_ssm="/show/DATABASE_URL")
    existing = msgspec.structs.replace(sheet, data=msgspec.structs.replace(sheet.data, postgres=pg))
    titles = [a.get_title(loc="left") for a in chart.figure(timeline.build(existing)).axes]
    assert not any(t.startswith("postgres") for t in titles) and len(titles) == 5


def test_redis_tier_is_sized_from_the_measured_shard_figure() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    per_shard = planner.PROFILES["measured"].redis_votes_per_s
    final = max(p.peak_votes_per_s for p in sheet.polls)
    # At least ceil(peak / (per shard x headroom)); more only when partitions split
    # unevenly, and then the busiest shard is still within the headroom.
    assert tl.peak.redis_shards >= math.ceil(final / (per_shard * sheet.traffic.headroom))
    busiest = math.ceil(tl.peak.partitions / tl.peak.redis_shards) / tl.peak.partitions
    assert busiest * final <= per_shard * sheet.traffic.headroom
    want = desired.build(sheet, tl, sheet.on_air - timedelta(hours=3), "eu-west-1")
    assert want.cache is not None
    assert want.cache.shards == tl.peak.redis_shards
    assert want.cache.replicas == 1 and want.cache.multi_az
    assert want.cache.node_type == "cache.r7g.large"


def _partitions_per_range(ranges: tuple[str, ...], partitions: int) -> list[int]:
    from redis.crc import key_slot

    slots = [key_slot(f"{{p{p}}}".encode()) for p in range(partitions)]
    bounds = [tuple(map(int, r.split("-"))) for r in ranges]
    return [sum(1 for s in slots if a <= s <= b) for a, b in bounds]


@pytest.mark.parametrize(("partitions", "shards"), [(64, 16), (32, 7), (16, 3), (128, 5)])
def test_slot_ranges_give_each_shard_an_equal_share_of_the_partitions(
    partitions: int, shards: int
) -> None:
    ranges = desired.slot_ranges(partitions, shards)
    assert ranges is not None and len(ranges) == shards
    # Contiguous, covering every slot once.
    bounds = [tuple(map(int, r.split("-"))) for r in ranges]
    assert bounds[0][0] == 0 and bounds[-1][1] == desired.HASH_SLOTS - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(bounds, bounds[1:], strict=False))
    counts = _partitions_per_range(ranges, partitions)
    assert sum(counts) == partitions
    assert max(counts) == math.ceil(partitions / shards)
    assert min(counts) == partitions // shards
    assert desired.slot_ranges(partitions, 1) is None


def test_data_tier_security_groups_admit_only_the_service_tiers() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    want = desired.build(sheet, tl, sheet.on_air - timedelta(hours=3), "eu-west-1")
    sgs = {sg.tier: sg for sg in want.security_groups}
    services = ("ingest", "tally", "push")
    assert sgs["redis"].rules == {desired.Rule(6379, source=t) for t in services}
    assert sgs["postgres"].rules == {desired.Rule(5432, source=t) for t in services}
    assert want.database is not None and want.database.multi_az


@pytest.mark.parametrize(("vcpus", "cls"), [(1, "db.m7g.large"), (2, "db.m7g.large"),
                         (3, "db.m7g.xlarge"), (8, "db.m7g.2xlarge"), (999, "db.m7g.16xlarge")])  # fmt: skip
def test_postgres_class_is_the_smallest_size_with_the_vcpus(vcpus: int, cls: str) -> None:
    from infra.capacity import postgres_class

    assert postgres_class("db.m7g", vcpus) == cls


def test_existing_database_and_redis_are_not_made_and_reach_user_data(
    raw: dict[str, Any],
) -> None:
    raw["data"] = {"postgres": {"existing_url_ssm": "/shared/pg/DATABASE_URL"}}
    raw["app"]["redis_url"] = "rediss+cluster://clustercfg.shared:6379"
    sheet = parse(raw)
    tl = timeline.build(sheet)
    want = desired.build(sheet, tl, sheet.on_air - timedelta(hours=3), "eu-west-1")
    assert want.cache is None and want.database is None
    assert {sg.tier for sg in want.security_groups} == {"haproxy", "ingest", "tally", "push"}
    text = userdata.render(sheet, tl, "tally", 4, "eu-west-1")
    assert "REDIS_URL=rediss+cluster://clustercfg.shared:6379" in text
    assert "BUZZER_ACK_REPLICAS=0" in text
    assert "DATABASE_URL=$(fetch /shared/pg/DATABASE_URL)" in text
    assert "secretsmanager" not in text


def test_user_data_markers_are_filled_with_the_data_tier_endpoints() -> None:
    sheet = load(EXAMPLE)
    text = userdata.render(sheet, timeline.build(sheet), "ingest", 4, "eu-west-1")
    assert "REDIS_URL=@BUZZER_REDIS_URL@" in text and "BUZZER_ACK_REPLICAS=1" in text
    filled = userdata.fill(
        text,
        {"redis_url": "rediss+cluster://cfg:6379", "db_host": "db:5432", "db_secret": "arn:s"},
    )
    assert "REDIS_URL=rediss+cluster://cfg:6379" in filled
    assert "--secret-id arn:s" in filled and "rds_url.py db:5432 buzzer" in filled
    assert "@BUZZER_" not in filled


def test_cli_plan_shows_the_data_tier(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("plan", str(EXAMPLE), "--offline") == 0
    lines = capsys.readouterr().out.splitlines()
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    redis = next(line for line in lines if line.startswith("redis "))
    shards = tl.peak.redis_shards
    assert redis.split()[1:3] == [f"{shards * 2:,}", "cache.r7g.large"]
    assert f"{shards} shards x 2" in redis and tl.peak.data_binding["redis"] in redis
    pg = next(line for line in lines if line.startswith("postgres "))
    assert "1 writer + standby" in pg and "upserts:" in pg and "db.m7g." in pg


def test_haproxy_user_data_raises_the_limits_its_maxconn_needs() -> None:
    sheet = load(EXAMPLE)
    tl = timeline.build(sheet)
    text = userdata.render(sheet, tl, "haproxy", 8, "eu-west-1")
    nofile = planner.haproxy_nofile(tl.peak.maxconn_per_node)
    assert f"LimitNOFILE={nofile}\n" in text
    assert f"fs.nr_open = {max(nofile, 1_048_576)}\n" in text
    assert "fs.file-max = " in text and "net.ipv4.ip_local_port_range = 1024 65535" in text
    # The limits are in place before HAProxy (re)starts with the rendered config.
    assert text.index("LimitNOFILE") < text.index("systemctl restart haproxy")
    assert text.index("sysctl --quiet --load") < text.index("systemctl restart haproxy")
    big = userdata.haproxy_limits(1_500_000)
    assert "LimitNOFILE=3010000\n" in big and "fs.nr_open = 3010000\n" in big
    assert "fs.file-max = 6085536\n" in big


def test_haproxy_instances_are_sized_from_measured_bytes_per_connection(
    raw: dict[str, Any],
) -> None:
    raw["traffic"]["tls"] = False
    # As if bench lb had measured no websocket figures (whatever the committed profile).
    unmeasured = {"haproxy_bytes_per_conn": 0, "haproxy_kernel_bytes_per_conn": 0,
                  "haproxy_cpu_per_conn_update": 0}  # fmt: skip
    raw["capacity"]["figures"] = dict(unmeasured)
    constant = tier_counts(parse(raw), 1000, 3_000_000)
    # The constant: 3,002,500 / (100,000 x 0.6) = 51 instances.
    assert constant.haproxy == 51 and "haproxy_max_conns constant" in constant.binding["haproxy"]
    raw["capacity"]["figures"] = {
        **unmeasured,
        "haproxy_bytes_per_conn": 6144,
        "haproxy_kernel_bytes_per_conn": 2048,
    }
    sheet = parse(raw)
    counts = tier_counts(sheet, 1000, 3_000_000)
    # c7g.2xlarge: (16 - 1) GiB / 8 KiB = 1,966,080 per instance; / 0.6 -> 3 instances.
    assert counts.haproxy == 3
    assert "1,966,080 per instance, memory" in counts.binding["haproxy"]
    assert counts.maxconn_per_node == math.ceil(3_002_500 / 3 / 0.6)
    # A type lb/instances.py does not know takes its memory from the run sheet.
    raw["tiers"]["haproxy"]["instance_type"] = "x9.big"
    raw["capacity"]["instance_types"]["x9.big"] = {"processes": 8, "memory_gib": 31}
    odd = tier_counts(parse(raw), 1000, 3_000_000)
    # 30 GiB / 8 KiB = 3,932,160: descriptors bind first, (4,194,304 - 10,000) / 2.
    assert odd.haproxy == 3 and "2,092,152 per instance, file descriptors" in odd.binding["haproxy"]
