"""The shared runner of ``infra/converge``: one run over the resource modules, making AWS
match a :class:`~infra.desired.Desired`, or saying what that would take (dry run).

Everything is found by the show's tags (Route 53 by SetIdentifier and CallerReference,
which can't carry tags at creation), so a second run finds the first run's resources
and an interrupted run's leftovers alike. Creates and updates go forward, module by
module in ``STEPS`` order (``infra/converge/__init__.py``); removals are queued with an
order and run backwards afterwards, so nothing is deleted while something still points
at it.

Adding a resource (say ``elasticache.py``):

1. Write ``infra/converge/<resource>.py`` with one ``def converge(run: Run) -> None``.
   Read the live resources by the show's tags (:meth:`Run.filters`, :meth:`Run.tags_of`);
   for each desired one that is missing or differs, call
   ``run.do(Change("create"|"update", kind, name, detail), boto_call, **kwargs)``, which
   records it, prints it and (unless a dry run) makes it; for each live one nobody wants,
   ``run.later(order, Change("delete", ...), fn)``, which holds it while the show is on.
   Call :meth:`Run.read` before each describe, so an AWS error names what was being read.
2. Put what later modules need (ids, endpoints) in a field of :class:`Outputs`; read
   what you need from earlier ones there (``run.out.sg_ids`` for security groups).
3. Add ``<resource>.converge`` to ``STEPS`` after what it depends on, and pick a
   removal order below that of whatever it depends on (see ``REMOVAL_ORDER``).
4. Test it with moto in tests/integration/test_infra_aws.py: a dry run changes
   nothing, a second apply is empty, a teardown removes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, TypeVar

from infra.aws import Clients, InfraError, explain
from infra.desired import SHOW_TAG, Desired
from infra.runsheet import GroupKey

T = TypeVar("T")
Action = Literal["create", "update", "replace", "delete", "hold"]
SYMBOL: dict[Action, str] = {
    "create": "+",
    "update": "~",
    "replace": "-/+",
    "delete": "-",
    "hold": "!",
}

REMOVAL_ORDER: dict[str, int] = {
    "dns-record": 10,
    "health-check": 15,
    "instance": 20,
    "instances-gone": 25,
    "scheduled-action": 30,
    "auto-scaling-group": 40,
    "security-group-rule": 50,
    "security-group-all-rules": 60,
    "replication-group": 61,
    "db-instance": 61,
    "cache-subnet-group": 63,
    "db-subnet-group": 63,
    "launch-template": 65,
    "security-group": 70,
}
"""When queued removals run, lowest first: what points at a resource goes before it."""


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        out = f"{SYMBOL[self.action]:>3} {self.kind} {self.name}"
        return f"{out}: {self.detail}" if self.detail else out


@dataclass
class Options:
    dry_run: bool = False
    poll_s: float = 5.0
    """Between describe calls while waiting for AWS (instances, group deletion)."""
    timeout_s: float = 900.0
    echo: Callable[[str], None] = print
    command: str = "apply"
    """Named in error messages: what to re-run."""


@dataclass
class Node:
    """An HAProxy node as the DNS steps need it."""

    slot: str
    instance_id: str | None
    ip: str | None


@dataclass
class Outputs:
    """What one module found or made that a later module needs."""

    sg_ids: dict[GroupKey, str] = field(default_factory=dict)
    """Security group id per tier (``(new name)`` in a dry run)."""
    endpoints: dict[str, str] = field(default_factory=dict)
    """The data tier's, for user data: keys of :data:`infra.userdata.SLOTS`."""
    digests: dict[str, str] = field(default_factory=dict)
    """Spec digest per launch template name."""
    nodes: dict[str, Node] = field(default_factory=dict)
    """HAProxy node per slot."""
    checks: dict[str, str | None] = field(default_factory=dict)
    """Route 53 health check id per slot (None in a dry run when new)."""


Step = Callable[["Run"], None]


@dataclass
class Run:
    aws: Clients
    want: Desired
    opts: Options = field(default_factory=Options)
    changes: list[Change] = field(default_factory=list)
    out: Outputs = field(default_factory=Outputs)
    doing: str = "starting"
    _removals: list[tuple[int, Change | None, Callable[[], object] | None]] = field(
        default_factory=list
    )

    def execute(self, steps: Iterable[Step]) -> list[Change]:
        """Every step forward, then the queued removals; AWS errors become one
        :class:`InfraError` naming what was being done and what to re-run."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for step in steps:
                step(self)
            for _, change, fn in sorted(self._removals, key=lambda r: r[0]):
                if change is not None:
                    self.do(change, fn)
                elif fn is not None and not self.opts.dry_run:
                    fn()
        except (BotoCoreError, ClientError, TimeoutError, RuntimeError) as exc:
            raise InfraError(explain(exc, self.doing, self.opts.command)) from exc
        return self.changes

    def do(self, change: Change, fn: Callable[..., T] | None = None, /, **kwargs: Any) -> T | None:
        """Record ``change``; unless this is a dry run, make it with ``fn(**kwargs)``."""
        self.changes.append(change)
        self.opts.echo(str(change))
        if self.opts.dry_run or fn is None:
            return None
        self.doing = f"{change.action} {change.kind} {change.name}"
        return fn(**kwargs)

    def later(self, order: int, change: Change | None, fn: Callable[[], object] | None) -> None:
        """Queue a removal; lower ``order`` runs first (``REMOVAL_ORDER``). While the show
        is on, deletions are recorded as held and not made."""
        if change is not None and self.want.frozen and change.action == "delete":
            change = Change("hold", change.kind, change.name, "kept: the show is on")
            fn = None
        self._removals.append((order, change, fn))

    def read(self, what: str) -> None:
        self.doing = f"reading {what}"

    def filters(self, **tags: str) -> list[dict[str, Any]]:
        """EC2-style filters: the show's tag and any others."""
        f = [{"Name": f"tag:{SHOW_TAG}", "Values": [self.want.show]}]
        f += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        return f

    @staticmethod
    def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

    @staticmethod
    def tags_of(resource: dict[str, Any]) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}

    def wait(self, what: str, done: Callable[[], bool]) -> None:
        self.doing = f"waiting for {what}"
        deadline = time.monotonic() + self.opts.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not done after {self.opts.timeout_s:.0f} s")
            time.sleep(self.opts.poll_s)

    def waiter_config(self) -> dict[str, int]:
        """For boto3 waiters: the run's poll interval and timeout."""
        return {
            "Delay": max(1, int(self.opts.poll_s)),
            "MaxAttempts": max(1, int(self.opts.timeout_s / max(1.0, self.opts.poll_s))),
        }


def error_code(exc: Exception) -> str | None:
    """The AWS error code of a failed call (``DBInstanceNotFound``, ...), else None."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code"))
    return None


SubnetGroupApi = Literal["Cache", "DB"]
"""ElastiCache's subnet-group calls and fields are named ``Cache…``, RDS's ``DB…``; the
rest of their shape is the same."""


def _subnet_group_label(api: SubnetGroupApi) -> str:
    return f"{'cache' if api == 'Cache' else api} subnet group"


def converge_subnet_group(
    run: Run, client: Any, api: SubnetGroupApi, name: str, tier: GroupKey, description: str
) -> None:
    """Make the subnet group ``name`` (ElastiCache's or RDS's, by ``api``) hold exactly
    the run's private subnets: created with the tier's tags if missing, else its subnets
    replaced if they differ."""
    snake = api.lower()
    kind = f"{snake}-subnet-group"
    subnets = sorted(run.want.private_subnets)
    run.read(f"{_subnet_group_label(api)} {name}")
    try:
        live = getattr(client, f"describe_{snake}_subnet_groups")(
            **{f"{api}SubnetGroupName": name}
        )[f"{api}SubnetGroups"][0]
    except Exception as exc:
        if error_code(exc) != f"{api}SubnetGroupNotFoundFault":
            raise
        run.do(
            Change("create", kind, name, ", ".join(subnets)),
            getattr(client, f"create_{snake}_subnet_group"),
            **{f"{api}SubnetGroupName": name, f"{api}SubnetGroupDescription": description},
            SubnetIds=subnets,
            Tags=run.tag_list(run.want.tags(tier)),
        )
        return
    have = sorted(s["SubnetIdentifier"] for s in live.get("Subnets", []))
    if have != subnets:
        run.do(
            Change("update", kind, name, ", ".join(subnets)),
            getattr(client, f"modify_{snake}_subnet_group"),
            **{f"{api}SubnetGroupName": name},
            SubnetIds=subnets,
        )


def remove_subnet_group(run: Run, client: Any, api: SubnetGroupApi, name: str) -> None:
    """Queue the removal of the subnet group ``name`` if it exists; looked for on its own,
    as an interrupted destroy may have left only the subnet group."""
    snake = api.lower()
    kind = f"{snake}-subnet-group"
    run.read(f"{_subnet_group_label(api)} {name}")
    try:
        getattr(client, f"describe_{snake}_subnet_groups")(**{f"{api}SubnetGroupName": name})
    except Exception as exc:
        if error_code(exc) == f"{api}SubnetGroupNotFoundFault":
            return
        raise
    run.later(
        REMOVAL_ORDER[kind],
        Change("delete", kind, name),
        partial(getattr(client, f"delete_{snake}_subnet_group"), **{f"{api}SubnetGroupName": name}),
    )


def now_utc() -> datetime:
    return datetime.now(UTC)
