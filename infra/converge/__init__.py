"""Make AWS match a :class:`~infra.desired.Desired`, or say what that would take: one
module per kind of AWS resource around the shared runner (``runner.py``, which says how
to add one). ``STEPS`` is the forward order: groups before the data tier (whose
endpoints the user data needs) before templates before ASGs before nodes before DNS."""

from __future__ import annotations

from infra.aws import Clients
from infra.converge import (
    autoscaling,
    elasticache,
    launch_templates,
    nodes,
    rds,
    route53,
    security_groups,
)
from infra.converge.runner import Change, Options, Run, Step, now_utc
from infra.desired import Desired

STEPS: tuple[Step, ...] = (
    security_groups.converge,
    elasticache.converge,
    rds.converge,
    launch_templates.converge,
    autoscaling.converge,
    nodes.converge,
    route53.health_checks,
    route53.records,
)


class Converger(Run):
    """One run over every resource module in ``STEPS`` order."""

    def run(self) -> list[Change]:
        return self.execute(STEPS)


def converge(aws: Clients, want: Desired, opts: Options) -> list[Change]:
    return Converger(aws, want, opts).run()


__all__ = ["STEPS", "Change", "Converger", "Options", "Run", "converge", "now_utc"]
