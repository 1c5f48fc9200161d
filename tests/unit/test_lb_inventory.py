from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from lb.inventory import Ec2TagInventory, LocalInventory, Server, parse_source

pytestmark = pytest.mark.unit


def test_server_parse() -> None:
    assert Server.parse("10.0.0.1:8081") == Server("10.0.0.1", 8081)
    assert Server.parse("[::1]:80") == Server("::1", 80)
    assert str(Server("10.0.0.1", 8081)) == "10.0.0.1:8081"
    for bad in ("10.0.0.1", ":80", "host:http"):
        with pytest.raises(ValueError):
            Server.parse(bad)


def test_local_inventory_rereads_its_file(tmp_path: Path) -> None:
    path = tmp_path / "inv.json"
    path.write_text(json.dumps({"ingest": ["127.0.0.1:8083", "127.0.0.1:8081",
                                           {"host": "127.0.0.1", "port": 8081}]}))  # fmt: skip
    inv = LocalInventory(path)
    assert inv.servers("ingest") == [Server("127.0.0.1", 8081), Server("127.0.0.1", 8083)]
    assert inv.servers("push") == []
    path.write_text(json.dumps({"ingest": ["127.0.0.1:8081"]}))
    assert inv.servers("ingest") == [Server("127.0.0.1", 8081)]


def test_local_inventory_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text("ingest:\n  - 10.0.0.1:8081\npush:\n  - 10.0.0.2:8082\n")
    assert LocalInventory(path).inventory() == {
        "ingest": [Server("10.0.0.1", 8081)],
        "push": [Server("10.0.0.2", 8082)],
    }


def test_parse_source(tmp_path: Path) -> None:
    listed = parse_source("local:127.0.0.1:1,127.0.0.1:2", {})
    assert listed.servers("ingest") == [Server("127.0.0.1", 1), Server("127.0.0.1", 2)]
    f = tmp_path / "x.json"
    f.write_text('{"push": ["127.0.0.1:3"]}')
    assert parse_source(f"local:{f}", {}).servers("push") == [Server("127.0.0.1", 3)]
    assert isinstance(parse_source("ec2:buzzer:show=final", {"ingest": 8081}), Ec2TagInventory)
    for bad in ("ec2:", "consul:x"):
        with pytest.raises(ValueError):
            parse_source(bad, {})


@pytest.fixture
def ec2():  # type: ignore[no-untyped-def]
    with mock_aws():
        yield boto3.client("ec2", region_name="eu-west-1")


def _launch(ec2, tags: dict[str, str], count: int = 1) -> list[str]:  # type: ignore[no-untyped-def]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    res = ec2.run_instances(
        ImageId=image, MinCount=count, MaxCount=count, InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )  # fmt: skip
    return [i["InstanceId"] for i in res["Instances"]]


def test_ec2_tag_inventory_finds_running_instances_of_the_show_and_tier(ec2) -> None:  # type: ignore[no-untyped-def]
    ingest = _launch(ec2, {"buzzer:show": "final", "buzzer:tier": "ingest"}, count=2)
    _launch(ec2, {"buzzer:show": "final", "buzzer:tier": "push"})
    _launch(ec2, {"buzzer:show": "semi", "buzzer:tier": "ingest"})
    stopped = _launch(ec2, {"buzzer:show": "final", "buzzer:tier": "ingest"})
    ec2.stop_instances(InstanceIds=stopped)

    inv = Ec2TagInventory({"buzzer:show": "final"}, {"ingest": 8081, "push": 8082}, client=ec2)
    described = ec2.describe_instances(InstanceIds=ingest)["Reservations"][0]["Instances"]
    expected = sorted(Server(i["PrivateIpAddress"], 8081) for i in described)
    assert inv.servers("ingest") == expected
    assert len(inv.servers("push")) == 1 and inv.servers("push")[0].port == 8082
    with pytest.raises(KeyError):
        inv.servers("tally")

    ec2.terminate_instances(InstanceIds=ingest[:1])
    assert len(inv.servers("ingest")) == 1
