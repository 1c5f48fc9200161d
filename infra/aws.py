"""boto3 clients for one region, and AWS failures turned into one line a human can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "PriorRequestNotComplete",
        "Rate exceeded",
    }
)
DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    }
)
QUOTA = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "LimitExceeded",
        "LimitExceededException",
        "RulesPerSecurityGroupLimitExceeded",
        "SecurityGroupLimitExceeded",
        "TooManyHealthChecks",
        "InsufficientInstanceCapacity",
        "MaxSpotInstanceCountExceeded",
        "NodeQuotaForClusterExceeded",
        "NodeQuotaForCustomerExceeded",
        "ClusterQuotaForCustomerExceeded",
        "InsufficientCacheClusterCapacity",
        "InstanceQuotaExceeded",
        "StorageQuotaExceeded",
        "InsufficientDBInstanceCapacity",
    }
)


class InfraError(Exception):
    """A failure already explained in one line; the CLI prints it and exits non-zero."""


@dataclass
class Clients:
    region: str
    ec2: Any
    autoscaling: Any
    route53: Any
    elasticache: Any = None
    rds: Any = None

    @classmethod
    def create(
        cls, region: str | None, profile: str | None = None, max_attempts: int = 8
    ) -> Clients:
        """Credentials and (unless given) region from boto3's standard chain.

        Standard retry mode backs off on throttling and transient errors; after
        ``max_attempts`` the error reaches :func:`explain`.
        """
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=profile, region_name=region)
        if not session.region_name:
            raise InfraError(
                "no AWS region: set `region:` in the run sheet, AWS_REGION, or a profile region"
            )
        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            user_agent_extra="buzzer-infra",
        )
        return cls(
            region=session.region_name,
            ec2=session.client("ec2", config=config),
            autoscaling=session.client("autoscaling", config=config),
            route53=session.client("route53", config=config),
            elasticache=session.client("elasticache", config=config),
            rds=session.client("rds", config=config),
        )


def explain(exc: BaseException, doing: str, command: str) -> str:
    """One line: what failed, why, and what the operator does next."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        WaiterError,
    )

    resume = f"what was made so far is tagged and reused: re-run `buzzer infra {command}` to resume"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (
            "no AWS credentials found (env AWS_ACCESS_KEY_ID/AWS_PROFILE, ~/.aws, or an"
            " instance role); nothing was changed"
        )
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach AWS while {doing}: {exc}; {resume}"
    if isinstance(exc, WaiterError):
        return f"timed out while {doing}: {exc.last_response.get('Error', exc)}; {resume}"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        msg = str(err.get("Message", "")).strip()
        op = exc.operation_name
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if code in DENIED:
            return f"permission denied for {op} while {doing} ({code}: {msg}); {resume}"
        if code in QUOTA:
            return (
                f"AWS quota or capacity reached for {op} while {doing} ({code}: {msg});"
                f" request a limit increase or change instance types, then re-run"
                f" `buzzer infra {command}`"
            )
        if code in THROTTLING:
            return (
                f"AWS throttled {op} while {doing}, still after {attempts + 1} attempts"
                f" ({code}); wait a minute and re-run `buzzer infra {command}`: it resumes"
            )
        return f"AWS error {code} in {op} while {doing}: {msg}; {resume}"
    return f"{type(exc).__name__} while {doing}: {exc}; {resume}"
