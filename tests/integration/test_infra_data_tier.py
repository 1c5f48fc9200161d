"""The data tier against moto's ElastiCache, RDS and EC2: the real boto3 code path.

Where moto lacks a call (resharding, deleting a cache subnet group) or never finishes
one (a replication group stays "deleting"), the ElastiCache client is a botocore
Stubber fed with what moto answered before, so the code under test is still the one
that talks to AWS.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

pytestmark = pytest.mark.integration

moto = pytest.importorskip("moto")

from botocore.stub import Stubber  # noqa: E402

from infra import commands, timeline  # noqa: E402
from infra.aws import Clients, InfraError  # noqa: E402
from infra.capacity import postgres_instance_class  # noqa: E402
from infra.desired import cache_group_id, slot_ranges  # noqa: E402
from infra.runsheet import RunSheet, parse  # noqa: E402
from tests.support.infra_aws import (  # noqa: E402
    NOW,
    example_sheet_data,
    mocked_aws,
    quiet,
    set_aws_env,
)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    set_aws_env(monkeypatch)
    with mocked_aws() as clients:
        yield clients


@pytest.fixture
def sheet_data(aws: Clients) -> dict[str, Any]:
    """With a final of 40,000 votes/s: several shards, a handful of instances."""
    data = example_sheet_data(aws, votes_divisor=3, viewers_divisor=300)
    data["capacity"]["figures"] = {"redis_votes_per_s": 10_000}
    return data


@pytest.fixture
def sheet(sheet_data: dict[str, Any]) -> RunSheet:
    return parse(sheet_data)


def replication_group(aws: Clients, sheet: RunSheet) -> dict[str, Any]:
    group: dict[str, Any] = aws.elasticache.describe_replication_groups(
        ReplicationGroupId=cache_group_id(sheet.show)
    )["ReplicationGroups"][0]
    return group


def db_instance(aws: Clients, sheet: RunSheet) -> dict[str, Any]:
    db: dict[str, Any] = aws.rds.describe_db_instances(
        DBInstanceIdentifier=f"buzzer-{sheet.show}-postgres"
    )["DBInstances"][0]
    return db


def user_data(aws: Clients, sheet: RunSheet, tier: str) -> str:
    v = aws.ec2.describe_launch_template_versions(
        LaunchTemplateName=f"buzzer-{sheet.show}-{tier}", Versions=["$Default"]
    )["LaunchTemplateVersions"][0]
    return base64.b64decode(v["LaunchTemplateData"]["UserData"]).decode()


def security_group(aws: Clients, sheet: RunSheet, tier: str) -> dict[str, Any]:
    groups = aws.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"buzzer-{sheet.show}-{tier}"]}]
    )["SecurityGroups"]
    assert len(groups) == 1, tier
    group: dict[str, Any] = groups[0]
    return group


def test_apply_makes_the_planned_cluster_and_database(aws: Clients, sheet: RunSheet) -> None:
    tl = timeline.build(sheet)
    changes = commands.apply(sheet, aws, NOW, quiet())
    kinds = {(c.action, c.kind) for c in changes}
    for kind in ("replication-group", "cache-subnet-group", "db-instance", "db-subnet-group"):
        assert ("create", kind) in kinds

    shards = tl.peak.redis_shards
    assert shards > 1  # the sheet is sized so that cluster mode really shards
    g = replication_group(aws, sheet)
    assert len(g["NodeGroups"]) == shards
    assert [n["Slots"] for n in g["NodeGroups"]] == list(
        slot_ranges(tl.peak.partitions, shards) or ()
    )
    assert all(len(n["NodeGroupMembers"]) == 2 for n in g["NodeGroups"])  # primary + replica
    assert g["MultiAZ"] == "enabled" and g["AutomaticFailover"] == "enabled"
    assert g["TransitEncryptionEnabled"] is True and g["ClusterEnabled"] is True
    assert g["CacheNodeType"] == "cache.r7g.large"
    tags = aws.elasticache.list_tags_for_resource(ResourceName=g["ARN"])["TagList"]
    assert {"Key": "buzzer:show", "Value": sheet.show} in tags
    subnets = aws.elasticache.describe_cache_subnet_groups(
        CacheSubnetGroupName=f"buzzer-{sheet.show}-redis"
    )["CacheSubnetGroups"][0]["Subnets"]
    assert sorted(s["SubnetIdentifier"] for s in subnets) == sorted(sheet.network.private_subnets)

    db = db_instance(aws, sheet)
    assert db["DBInstanceClass"] == postgres_instance_class(sheet, tl.peak)
    assert db["MultiAZ"] is True and db["Engine"] == "postgres"
    assert db["DBSubnetGroup"]["DBSubnetGroupName"] == f"buzzer-{sheet.show}-postgres"
    assert {"Key": "buzzer:show", "Value": sheet.show} in db["TagList"]
    assert db["MasterUserSecret"]["SecretArn"]

    # Only the service tiers reach the data tier, each on its port.
    ids = {t: security_group(aws, sheet, t)["GroupId"] for t in ("ingest", "tally", "push")}
    assert [v["VpcSecurityGroupId"] for v in db["VpcSecurityGroups"]] == [
        security_group(aws, sheet, "postgres")["GroupId"]
    ]
    for tier, port in (("redis", 6379), ("postgres", 5432)):
        sg = security_group(aws, sheet, tier)
        perms = sg["IpPermissions"]
        assert {p["FromPort"] for p in perms} == {port}
        assert {pair["GroupId"] for p in perms for pair in p["UserIdGroupPairs"]} == set(
            ids.values()
        )
        assert not any(p.get("IpRanges") for p in perms)


def test_user_data_gets_the_endpoints_and_no_password(aws: Clients, sheet: RunSheet) -> None:
    commands.apply(sheet, aws, NOW, quiet())
    endpoint = replication_group(aws, sheet)["ConfigurationEndpoint"]
    db = db_instance(aws, sheet)
    secret = db["MasterUserSecret"]["SecretArn"]
    password = aws_secret_password(aws, secret)
    for tier in ("ingest", "tally", "push", "haproxy"):
        text = user_data(aws, sheet, tier)
        assert f"REDIS_URL=rediss+cluster://{endpoint['Address']}:6379" in text, tier
        assert "@BUZZER_" not in text, tier
        assert password not in text, tier
    tally = user_data(aws, sheet, "tally")
    assert "BUZZER_ACK_REPLICAS=1" in tally
    assert f"--secret-id {secret}" in tally
    assert f"rds_url.py {db['Endpoint']['Address']}:5432 buzzer" in tally


def aws_secret_password(aws: Clients, arn: str) -> str:
    import json

    import boto3

    sm = boto3.client("secretsmanager", region_name=aws.region)
    password: str = json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])["password"]
    assert password
    return password


def test_plan_makes_nothing_and_a_second_apply_is_empty(aws: Clients, sheet: RunSheet) -> None:
    planned = commands.plan(sheet, aws, NOW, echo=lambda _: None)
    assert {("create", "replication-group"), ("create", "db-instance")} <= {
        (c.action, c.kind) for c in planned
    }
    assert not aws.elasticache.describe_cache_subnet_groups()["CacheSubnetGroups"]
    assert not aws.rds.describe_db_instances()["DBInstances"]
    commands.apply(sheet, aws, NOW, quiet())
    assert commands.apply(sheet, aws, NOW, quiet()) == []
    assert commands.plan(sheet, aws, NOW, echo=lambda _: None) == []


def test_other_private_subnets_update_both_subnet_groups(
    aws: Clients, sheet_data: dict[str, Any]
) -> None:
    commands.apply(parse(sheet_data), aws, NOW, quiet())
    network = sheet_data["network"]
    added = aws.ec2.create_subnet(
        VpcId=network["vpc_id"], CidrBlock="10.0.9.0/24", AvailabilityZone=f"{aws.region}c"
    )["Subnet"]["SubnetId"]
    network["private_subnets"] = [*network["private_subnets"], added]
    # Planned only: moto can't modify a subnet group.
    planned = commands.plan(parse(sheet_data), aws, NOW, echo=lambda _: None)
    subnets = ", ".join(sorted(network["private_subnets"]))
    updates = {(c.kind, c.detail) for c in planned if c.action == "update"}
    assert {("cache-subnet-group", subnets), ("db-subnet-group", subnets)} <= updates


def test_status_shows_the_shards_and_drift(aws: Clients, sheet: RunSheet) -> None:
    lines: list[str] = []
    assert commands.status(sheet, aws, NOW, echo=lines.append)
    shards = timeline.build(sheet).peak.redis_shards
    assert any(line.split()[:3] == ["redis", str(shards), "missing"] for line in lines)
    commands.apply(sheet, aws, NOW, quiet())
    lines.clear()
    assert commands.status(sheet, aws, NOW, echo=lines.append) == []
    row = next(line for line in lines if line.startswith("redis"))
    assert row.split() == ["redis", str(shards), str(shards), "shards", "available"]


def test_an_existing_database_is_used_not_made(aws: Clients, sheet_data: dict[str, Any]) -> None:
    sheet_data["data"]["postgres"] = {"existing_url_ssm": "/shared/pg/DATABASE_URL"}
    sheet = parse(sheet_data)
    changes = commands.apply(sheet, aws, NOW, quiet())
    assert not any(c.kind.startswith("db-") for c in changes)
    assert not aws.rds.describe_db_instances()["DBInstances"]
    assert "DATABASE_URL=$(fetch /shared/pg/DATABASE_URL)" in user_data(aws, sheet, "tally")


def test_a_group_of_that_name_not_of_the_show_is_refused(aws: Clients, sheet: RunSheet) -> None:
    aws.elasticache.create_replication_group(
        ReplicationGroupId=cache_group_id(sheet.show),
        ReplicationGroupDescription="someone else's",
        Engine="redis",
        ClusterMode="enabled",
        NumNodeGroups=1,
    )
    with pytest.raises(InfraError, match="not tagged buzzer:show="):
        commands.apply(sheet, aws, NOW, quiet())
    assert replication_group(aws, sheet)["Description"] == "someone else's"


def test_on_air_a_new_node_type_is_held_not_applied(
    aws: Clients, sheet_data: dict[str, Any]
) -> None:
    commands.apply(parse(sheet_data), aws, NOW, quiet())
    sheet_data["data"]["redis"]["node_type"] = "cache.r7g.xlarge"
    sheet_data["data"]["postgres"]["instance_class"] = "db.r7g.4xlarge"
    sheet = parse(sheet_data)
    on_air = sheet.on_air + timedelta(minutes=5)
    changes = commands.apply(sheet, aws, on_air, quiet())
    held = {c.kind for c in changes if c.action == "hold"}
    assert {"replication-group", "db-instance"} <= held
    assert replication_group(aws, sheet)["CacheNodeType"] == "cache.r7g.large"
    assert db_instance(aws, sheet)["DBInstanceClass"] != "db.r7g.4xlarge"
    # Off air the same sheet changes both.
    changes = commands.apply(sheet, aws, NOW, quiet())
    assert replication_group(aws, sheet)["CacheNodeType"] == "cache.r7g.xlarge"
    assert db_instance(aws, sheet)["DBInstanceClass"] == "db.r7g.4xlarge"


def _moto_answer(client: Any, op: str, **kwargs: Any) -> dict[str, Any]:
    response: dict[str, Any] = getattr(client, op)(**kwargs)
    response.pop("ResponseMetadata", None)
    return response


def _stubbed_elasticache(aws: Clients) -> tuple[Any, Stubber]:
    import boto3

    client = boto3.client("elasticache", region_name=aws.region)
    return client, Stubber(client)


def test_more_shards_reshard_the_live_group_online(
    aws: Clients, sheet_data: dict[str, Any]
) -> None:
    sheet = parse(sheet_data)
    commands.apply(sheet, aws, NOW, quiet())
    before = timeline.build(sheet).peak.redis_shards
    group_id = cache_group_id(sheet.show)
    live = _moto_answer(aws.elasticache, "describe_replication_groups", ReplicationGroupId=group_id)
    arn = live["ReplicationGroups"][0]["ARN"]
    tags = _moto_answer(aws.elasticache, "list_tags_for_resource", ResourceName=arn)
    subnet_group = f"buzzer-{sheet.show}-redis"
    subnets = _moto_answer(
        aws.elasticache, "describe_cache_subnet_groups", CacheSubnetGroupName=subnet_group
    )

    sheet_data["data"]["redis"]["shards"] = before + 2
    bigger = parse(sheet_data)
    client, stub = _stubbed_elasticache(aws)
    stub.add_response("describe_replication_groups", live, {"ReplicationGroupId": group_id})
    stub.add_response("list_tags_for_resource", tags, {"ResourceName": arn})
    stub.add_response(
        "describe_cache_subnet_groups", subnets, {"CacheSubnetGroupName": subnet_group}
    )
    stub.add_response(
        "modify_replication_group_shard_configuration",
        {"ReplicationGroup": live["ReplicationGroups"][0]},
        {"ReplicationGroupId": group_id, "NodeGroupCount": before + 2, "ApplyImmediately": True},
    )
    aws.elasticache = client
    with stub:
        changes = commands.apply(bigger, aws, NOW, quiet())
    stub.assert_no_pending_responses()
    assert any(
        c.kind == "replication-group" and f"shards {before} -> {before + 2}" in c.detail
        for c in changes
    )


def test_destroy_removes_the_data_tier(aws: Clients, sheet: RunSheet) -> None:
    commands.apply(sheet, aws, NOW, quiet())
    group_id = cache_group_id(sheet.show)
    live = _moto_answer(aws.elasticache, "describe_replication_groups", ReplicationGroupId=group_id)
    arn = live["ReplicationGroups"][0]["ARN"]
    tags = _moto_answer(aws.elasticache, "list_tags_for_resource", ResourceName=arn)
    subnet_group = f"buzzer-{sheet.show}-redis"
    subnets = _moto_answer(
        aws.elasticache, "describe_cache_subnet_groups", CacheSubnetGroupName=subnet_group
    )

    client, stub = _stubbed_elasticache(aws)
    # Twice: destroy first lists what it would remove, then removes it.
    for _ in range(2):
        stub.add_response("describe_replication_groups", live, {"ReplicationGroupId": group_id})
        stub.add_response("list_tags_for_resource", tags, {"ResourceName": arn})
        stub.add_response(
            "describe_cache_subnet_groups", subnets, {"CacheSubnetGroupName": subnet_group}
        )
    deleting = {**live["ReplicationGroups"][0], "Status": "deleting"}
    stub.add_response(
        "delete_replication_group", {"ReplicationGroup": deleting}, {"ReplicationGroupId": group_id}
    )
    # The waiter's first look finds it gone.
    stub.add_client_error(
        "describe_replication_groups",
        service_error_code="ReplicationGroupNotFoundFault",
        http_status_code=404,
        expected_params={"ReplicationGroupId": group_id},
    )
    stub.add_response("delete_cache_subnet_group", {}, {"CacheSubnetGroupName": subnet_group})
    aws.elasticache = client
    with stub:
        done = commands.destroy(sheet, aws, quiet(), confirm=lambda _: True)
    stub.assert_no_pending_responses()
    assert done is not None
    deleted = {(c.kind, c.name) for c in done if c.action == "delete"}
    assert ("replication-group", group_id) in deleted
    assert ("cache-subnet-group", subnet_group) in deleted

    assert not aws.rds.describe_db_instances()["DBInstances"]
    assert not aws.rds.describe_db_subnet_groups()["DBSubnetGroups"]
    # The show's results live in PostgreSQL: the instance goes with a final snapshot.
    snapshots = aws.rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    assert [s["DBSnapshotIdentifier"].rsplit("-", 1)[0] for s in snapshots] == [
        f"buzzer-{sheet.show}-postgres-final"
    ]
    left = aws.ec2.describe_security_groups(
        Filters=[{"Name": "tag:buzzer:show", "Values": [sheet.show]}]
    )["SecurityGroups"]
    assert left == []
