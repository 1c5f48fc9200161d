"""infra against moto's EC2, Auto Scaling and Route 53: the real boto3 code path."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration

moto = pytest.importorskip("moto")

from infra import cli, commands, timeline  # noqa: E402
from infra.aws import Clients, InfraError  # noqa: E402
from infra.runsheet import RunSheet, parse  # noqa: E402
from infra.userdata import discovery_source  # noqa: E402
from tests.support.infra_aws import (  # noqa: E402
    EXAMPLE,
    NOW,
    REGION,
    example_sheet_data,
    mocked_aws,
    quiet,
    set_aws_env,
)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_aws_env(monkeypatch)


@pytest.fixture
def aws(aws_env: None) -> Iterator[Clients]:
    with mocked_aws() as clients:
        yield clients


@pytest.fixture
def sheet_data(aws: Clients) -> dict[str, Any]:
    data = example_sheet_data(aws, votes_divisor=5, viewers_divisor=100)
    # The compute tiers only: the data tier has its own tests (test_infra_data_tier.py),
    # since moto can't delete a cache subnet group or finish deleting a replication group.
    del data["data"]
    data["app"]["redis_url"] = "redis+cluster://redis.internal:6379"
    return data


@pytest.fixture
def sheet(sheet_data: dict[str, Any]) -> RunSheet:
    return parse(sheet_data)


def tagged_instances(
    aws: Clients, show: str, tier: str, states: tuple[str, ...] = ("running", "pending")
) -> list[dict[str, Any]]:
    res = aws.ec2.describe_instances(
        Filters=[
            {"Name": "tag:buzzer:show", "Values": [show]},
            {"Name": "tag:buzzer:tier", "Values": [tier]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for r in res["Reservations"] for i in r["Instances"]]


def records(aws: Clients, sheet: RunSheet) -> list[dict[str, Any]]:
    rrs = aws.route53.list_resource_record_sets(HostedZoneId=sheet.dns.zone_id)
    return [
        r for r in rrs["ResourceRecordSets"] if r.get("SetIdentifier", "").startswith("buzzer-")
    ]


def groups(aws: Clients, show: str) -> dict[str, dict[str, Any]]:
    res = aws.autoscaling.describe_auto_scaling_groups(
        Filters=[{"Name": "tag:buzzer:show", "Values": [show]}]
    )
    return {g["AutoScalingGroupName"]: g for g in res["AutoScalingGroups"]}


def inventory(aws: Clients) -> dict[str, int]:
    """Counts of everything infra makes, to compare runs."""
    sgs = aws.ec2.describe_security_groups(Filters=[{"Name": "tag-key", "Values": ["buzzer:show"]}])
    lts = aws.ec2.describe_launch_templates(
        Filters=[{"Name": "tag-key", "Values": ["buzzer:show"]}]
    )
    hcs = aws.route53.list_health_checks()["HealthChecks"]
    asgs = aws.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    acts = aws.autoscaling.describe_scheduled_actions()["ScheduledUpdateGroupActions"]
    nodes = aws.ec2.describe_instances(
        Filters=[
            {"Name": "tag:buzzer:tier", "Values": ["haproxy"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return {
        "sg": len(sgs["SecurityGroups"]),
        "lt": len(lts["LaunchTemplates"]),
        "asg": len(asgs),
        "actions": len(acts),
        "haproxy": sum(len(r["Instances"]) for r in nodes["Reservations"]),
        "health_checks": len(hcs),
    }


def test_apply_creates_the_planned_fleet(aws: Clients, sheet: RunSheet) -> None:
    tl = timeline.build(sheet)
    commands.apply(sheet, aws, NOW, quiet())

    nodes = tagged_instances(aws, sheet.show, "haproxy")
    assert len(nodes) == tl.haproxy_nodes >= 2
    slots = sorted(next(t["Value"] for t in i["Tags"] if t["Key"] == "buzzer:slot") for i in nodes)
    assert slots == sorted(f"haproxy-{i}" for i in range(tl.haproxy_nodes))
    assert {i["SubnetId"] for i in nodes} == set(sheet.network.subnets)

    asgs = groups(aws, sheet.show)
    assert set(asgs) == {f"buzzer-{sheet.show}-{t}" for t in ("ingest", "tally", "push")}
    for tier in ("ingest", "tally", "push"):
        g = asgs[f"buzzer-{sheet.show}-{tier}"]
        assert g["MinSize"] == g["DesiredCapacity"] == tl.idle[tier]  # type: ignore[index]
        assert g["MaxSize"] == tl.max_size(tier)  # type: ignore[arg-type]
        assert g["LaunchTemplate"]["LaunchTemplateName"] == f"buzzer-{sheet.show}-{tier}"
        assert set(g["VPCZoneIdentifier"].split(",")) == set(sheet.network.private_subnets)
        tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in g["Tags"]}
        assert tags["buzzer:show"] == (sheet.show, True)
        assert tags["buzzer:tier"] == (tier, True)
        acts = aws.autoscaling.describe_scheduled_actions(
            AutoScalingGroupName=g["AutoScalingGroupName"]
        )["ScheduledUpdateGroupActions"]
        want = tl.actions(tier, NOW)  # type: ignore[arg-type]
        got = sorted(
            (
                a["ScheduledActionName"],
                a["StartTime"].astimezone(UTC),
                a["MinSize"],
                a["DesiredCapacity"],
            )
            for a in acts
        )
        prefix = f"{g['AutoScalingGroupName']}-"
        assert got == sorted((prefix + a.name, a.at, a.min_size, a.desired) for a in want)
        assert any(a.name == "scalein" and a.desired == 0 for a in want)
    push_warmup = [a for a in tl.actions("push", NOW) if a.name == "warmup"][0]
    assert push_warmup.at == sheet.on_air - timedelta(minutes=20)
    assert push_warmup.desired > 1

    rrs = records(aws, sheet)
    assert len(rrs) == tl.haproxy_nodes
    ips = {i["PublicIpAddress"] for i in nodes}
    assert {r["ResourceRecords"][0]["Value"] for r in rrs} == ips
    assert all(r["Weight"] == 100 and r["TTL"] == 30 and r["Type"] == "A" for r in rrs)
    assert len({r["SetIdentifier"] for r in rrs}) == len(rrs)
    hcs = {h["Id"]: h for h in aws.route53.list_health_checks()["HealthChecks"]}
    for r in rrs:
        cfg = hcs[r["HealthCheckId"]]["HealthCheckConfig"]
        assert cfg["IPAddress"] == r["ResourceRecords"][0]["Value"]
        assert cfg["ResourcePath"] == "/lb-healthz"
    tags = aws.route53.list_tags_for_resource(
        ResourceType="healthcheck", ResourceId=rrs[0]["HealthCheckId"]
    )
    assert {"Key": "buzzer:show", "Value": sheet.show} in tags["ResourceTagSet"]["Tags"]

    sgs = aws.ec2.describe_security_groups(
        Filters=[{"Name": "tag:buzzer:show", "Values": [sheet.show]}]
    )
    by_tier = {
        next(t["Value"] for t in g["Tags"] if t["Key"] == "buzzer:tier"): g
        for g in sgs["SecurityGroups"]
    }

    def sources(tier: str) -> set[tuple[int, str]]:
        return {
            (p["FromPort"], src)
            for p in by_tier[tier]["IpPermissions"]
            for src in [r["CidrIp"] for r in p.get("IpRanges", [])]
            + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
            + [g["GroupId"] for g in p.get("UserIdGroupPairs", [])]
        }

    # Votes and websockets from anywhere; HAProxy's exporter only from Prometheus's range.
    monitoring = sheet.network.monitoring_cidr
    assert monitoring is not None
    anywhere = {(port, cidr) for port in (80, 443) for cidr in ("0.0.0.0/0", "::/0")}
    assert sources("haproxy") == anywhere | {(8404, monitoring)}
    assert sources("ingest") == {(8081, by_tier["haproxy"]["GroupId"]), (8081, monitoring)}
    assert sources("tally") == {(8090, monitoring)}


def test_apply_twice_creates_nothing(aws: Clients, sheet: RunSheet) -> None:
    first = commands.apply(sheet, aws, NOW, quiet())
    assert first and {c.action for c in first} == {"create", "update"}
    before = inventory(aws)
    assert commands.apply(sheet, aws, NOW, quiet()) == []
    assert inventory(aws) == before
    assert commands.plan(sheet, aws, NOW, echo=lambda _: None) == []


def test_plan_lists_changes_without_making_them(aws: Clients, sheet: RunSheet) -> None:
    lines: list[str] = []
    changes = commands.plan(sheet, aws, NOW, echo=lines.append)
    assert inventory(aws) == dict.fromkeys(
        ("sg", "lt", "asg", "actions", "haproxy", "health_checks"), 0
    )
    kinds = {c.kind for c in changes}
    assert kinds == {
        "security-group",
        "launch-template",
        "auto-scaling-group",
        "scheduled-action",
        "instance",
        "health-check",
        "dns-record",
    }
    assert any(line.startswith("  + auto-scaling-group buzzer-") for line in lines)


def test_runsheet_edit_updates_and_removes(aws: Clients, sheet_data: dict[str, Any]) -> None:
    sheet = parse(sheet_data)
    commands.apply(sheet, aws, NOW, quiet())
    sheet_data["polls"] = sheet_data["polls"][:1]
    sheet_data["traffic"]["min_haproxy_nodes"] = 1
    smaller = parse(sheet_data)
    changes = commands.apply(smaller, aws, NOW, quiet())
    deleted = {(c.kind, c.name.split()[0]) for c in changes if c.action == "delete"}
    group = f"buzzer-{sheet.show}-ingest"
    assert ("scheduled-action", f"{group}/{group}-cta-final") in deleted
    tl = timeline.build(smaller)
    assert len(tagged_instances(aws, sheet.show, "haproxy")) == tl.haproxy_nodes
    assert len(records(aws, sheet)) == tl.haproxy_nodes
    assert commands.plan(smaller, aws, NOW, echo=lambda _: None) == []


def test_on_air_apply_never_lowers_or_removes(aws: Clients, sheet_data: dict[str, Any]) -> None:
    sheet = parse(sheet_data)
    commands.apply(sheet, aws, NOW, quiet())
    on_air = sheet.on_air + timedelta(minutes=5)
    name = f"buzzer-{sheet.show}-ingest"
    aws.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=9, MaxSize=20, DesiredCapacity=9
    )
    sheet_data["traffic"]["min_haproxy_nodes"] = 1
    sheet_data["polls"] = sheet_data["polls"][:1]
    changes = commands.apply(parse(sheet_data), aws, on_air, quiet())
    assert groups(aws, sheet.show)[name]["DesiredCapacity"] == 9
    assert not [c for c in changes if c.action == "delete"]
    assert [c for c in changes if c.action == "hold"]


def test_destroy_removes_everything_of_the_show(aws: Clients, sheet: RunSheet) -> None:
    commands.apply(sheet, aws, NOW, quiet())
    assert commands.destroy(sheet, aws, quiet(), confirm=lambda _: False) is None
    assert inventory(aws)["asg"] == 3
    asked: list[str] = []
    done = commands.destroy(sheet, aws, quiet(), confirm=lambda q: bool(asked.append(q)) or True)
    assert done and all(c.action in ("delete", "update") for c in done)
    assert "destroy these" in asked[0]
    assert inventory(aws) == dict.fromkeys(
        ("sg", "lt", "asg", "actions", "haproxy", "health_checks"), 0
    )
    assert records(aws, sheet) == []
    assert commands.destroy(sheet, aws, quiet(), confirm=lambda _: True) == []


def raiser(code: str, op: str) -> Any:
    def raise_(**_: Any) -> None:
        raise ClientError({"Error": {"Code": code, "Message": "injected"}}, op)

    return raise_


def test_interrupted_apply_converges_on_rerun(aws: Clients, sheet: RunSheet) -> None:
    calls: list[str] = []

    def second_group_fails(**_: Any) -> None:
        calls.append("call")
        if len(calls) == 2:
            raise ClientError(
                {"Error": {"Code": "InternalFailure", "Message": "boom"}}, "CreateAutoScalingGroup"
            )

    event = "before-call.auto-scaling.CreateAutoScalingGroup"
    aws.autoscaling.meta.events.register(event, second_group_fails)
    with pytest.raises(InfraError) as exc:
        commands.apply(sheet, aws, NOW, quiet())
    assert "InternalFailure" in str(exc.value) and "create auto-scaling-group" in str(exc.value)
    assert "re-run `buzzer infra apply`" in str(exc.value)
    assert len(groups(aws, sheet.show)) == 1
    aws.autoscaling.meta.events.unregister(event, second_group_fails)

    commands.apply(sheet, aws, NOW, quiet())
    tl = timeline.build(sheet)
    assert inventory(aws)["asg"] == 3
    assert inventory(aws)["sg"] == 4 and inventory(aws)["lt"] == 4
    assert len(tagged_instances(aws, sheet.show, "haproxy")) == tl.haproxy_nodes
    assert commands.apply(sheet, aws, NOW, quiet()) == []


def test_interrupted_after_health_check_converges(aws: Clients, sheet: RunSheet) -> None:
    """Cut between a health check's creation and its tagging: found again by reference."""
    hook = raiser("InternalFailure", "ChangeTagsForResource")
    event = "before-call.route53.ChangeTagsForResource"
    aws.route53.meta.events.register(event, hook)
    with pytest.raises(InfraError):
        commands.apply(sheet, aws, NOW, quiet())
    aws.route53.meta.events.unregister(event, hook)
    commands.apply(sheet, aws, NOW, quiet())
    tl = timeline.build(sheet)
    assert inventory(aws)["health_checks"] == tl.haproxy_nodes
    assert commands.plan(sheet, aws, NOW, echo=lambda _: None) == []


@pytest.mark.parametrize(
    ("code", "op", "expect"),
    [
        ("UnauthorizedOperation", "RunInstances", "permission denied for RunInstances"),
        ("InstanceLimitExceeded", "RunInstances", "quota or capacity reached for RunInstances"),
        ("AccessDenied", "CreateHealthCheck", "permission denied for CreateHealthCheck"),
    ],
)
def test_aws_refusals_become_one_line(
    aws: Clients, sheet: RunSheet, code: str, op: str, expect: str
) -> None:
    service = "ec2" if op == "RunInstances" else "route53"
    client = aws.ec2 if service == "ec2" else aws.route53
    client.meta.events.register(f"before-call.{service}.{op}", raiser(code, op))
    with pytest.raises(InfraError) as exc:
        commands.apply(sheet, aws, NOW, quiet())
    msg = str(exc.value)
    assert expect in msg and "\n" not in msg


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def test_throttling_retries_then_explains(aws_env: None, sheet_data: dict[str, Any]) -> None:
    from botocore.awsrequest import AWSResponse

    aws = Clients.create(REGION, max_attempts=2)
    sent: list[str] = []

    def throttle(request: Any, **_: Any) -> AWSResponse:
        # Answer before anything leaves the process: the retry handler sees a real
        # 400 RequestLimitExceeded and backs off as it would against AWS.
        sent.append(request.url)
        body = (
            b"<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
            b"<Message>Request limit exceeded.</Message></Error></Errors>"
            b"<RequestID>r</RequestID></Response>"
        )
        return AWSResponse(request.url, 400, {}, _Raw(body))

    aws.ec2.meta.events.register("before-send.ec2", throttle)
    with pytest.raises(InfraError) as exc:
        commands.apply(parse(sheet_data), aws, NOW, quiet())
    assert len(sent) == 2
    assert "throttled DescribeSecurityGroups" in str(exc.value)
    assert "after 2 attempts" in str(exc.value)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["infra", *argv])
    rc: int = args.func(args)
    return rc


def test_cli_without_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for k in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Belt and braces: if a request were ever signed, it would go nowhere.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert run_cli("apply", str(EXAMPLE)) == 1
    err = capsys.readouterr().err
    assert err.startswith("buzzer infra apply: no AWS credentials found")
    assert err.count("\n") == 1


def test_cli_apply_status_destroy(
    sheet_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sheet.yaml"
    path.write_text(yaml.safe_dump(sheet_data))
    now = NOW.isoformat()
    assert run_cli("status", str(path), "--now", now) == 3
    assert run_cli("apply", str(path), "--now", now) == 0
    assert run_cli("apply", str(path), "--now", now) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_cli("status", str(path), "--now", now) == 0
    assert "live fleet matches the plan" in capsys.readouterr().out
    assert run_cli("plan", str(path), "--now", now) == 0
    assert "no changes" in capsys.readouterr().out
    monkey_input: list[str] = []
    import builtins

    real_input = builtins.input
    builtins.input = lambda prompt="": monkey_input.append(prompt) or "no"  # type: ignore[assignment]
    try:
        assert run_cli("destroy", str(path)) == 1
    finally:
        builtins.input = real_input
    assert monkey_input and "not confirmed" in capsys.readouterr().err
    assert run_cli("destroy", str(path), "--yes") == 0
    assert run_cli("status", str(path), "--now", now) == 3


def test_lb_sync_discovers_the_web_nodes(aws: Clients, sheet: RunSheet) -> None:
    """The tags apply puts on ASG instances are what `buzzer lb sync --source ec2:` reads."""
    from lb.inventory import Ec2TagInventory, parse_source

    commands.apply(sheet, aws, NOW, quiet())
    ports = {"ingest": 8081, "push": 8082}
    source = parse_source(discovery_source(sheet.show), ports)
    assert isinstance(source, Ec2TagInventory)
    # Same moto backend, and the region the nodes' user data exports.
    inv = Ec2TagInventory({"buzzer:show": sheet.show}, ports, client=aws.ec2)
    for tier in ("ingest", "push"):
        servers = inv.servers(tier)
        live = tagged_instances(aws, sheet.show, tier, ("running",))
        assert len(servers) == len(live) == timeline.build(sheet).idle[tier]  # type: ignore[index]
        assert {s.host for s in servers} == {i["PrivateIpAddress"] for i in live}
        assert {s.port for s in servers} == {ports[tier]}
    # HAProxy nodes are tagged with the show too, but never as a backend tier.
    assert all(
        s.host not in {i["PrivateIpAddress"] for i in tagged_instances(aws, sheet.show, "haproxy")}
        for s in inv.servers("ingest")
    )
