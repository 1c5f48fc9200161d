"""moto's AWS for the infra tests (tests/integration/test_infra_*.py): fake credentials,
the mocked clients, and the example run sheet placed in a moto VPC and hosted zone.

Import it after ``pytest.importorskip("moto")``: it needs moto to run, not to import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.aws import Clients
from infra.converge import Options

EXAMPLE = Path(__file__).parents[2] / "examples" / "runsheet.yaml"
REGION = "eu-west-1"
NOW = datetime.now(UTC).replace(microsecond=0)


def set_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and the test region, so that nothing can reach a real account."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@contextmanager
def mocked_aws() -> Iterator[Clients]:
    """The infra's clients against moto (after :func:`set_aws_env`)."""
    import moto

    with moto.mock_aws():
        yield Clients.create(REGION, max_attempts=2)


def example_sheet_data(
    aws: Clients, *, votes_divisor: float, viewers_divisor: int
) -> dict[str, Any]:
    """The example sheet, three hours before air, in a new moto VPC (two public and two
    private subnets) and hosted zone, its polls made smaller by the divisors (a few
    instances keep moto fast) and sized from the historical profile: the measured one
    changes whenever ``buzzer bench`` runs."""
    ec2 = aws.ec2
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")[
            "Subnet"
        ]["SubnetId"]
        for i, az in enumerate("abab")
    ]
    zone = aws.route53.create_hosted_zone(Name="example.com", CallerReference="t")["HostedZone"]
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["capacity"]["profile"] = "historical"
    shift = NOW + timedelta(hours=3) - data["on_air"]
    for key in ("on_air", "off_air"):
        data[key] += shift
    for poll in data["polls"]:
        for key in ("opens", "call_to_action", "closes"):
            poll[key] += shift
        poll["peak_votes_per_s"] = poll["peak_votes_per_s"] / votes_divisor
        poll["viewers"] = poll["viewers"] // viewers_divisor
    data["network"].update(
        vpc_id=vpc,
        subnets=subnets[:2],
        private_subnets=subnets[2:],
        ami="ami-12c6146b",  # one of moto's bundled AMIs
    )
    data["dns"]["zone_id"] = zone["Id"].split("/")[-1]
    return data


def quiet() -> Options:
    """Converge options for tests: no output, short polls and timeouts."""
    return Options(echo=lambda _: None, poll_s=0.01, timeout_s=5)
