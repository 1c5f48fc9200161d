"""``buzzer infra``: pre-scale a show's fleet on EC2 from its run sheet.

Quick start::

    buzzer infra plan examples/runsheet.yaml            # timeline + what apply would change
    buzzer infra apply examples/runsheet.yaml           # make it so (idempotent)
    buzzer infra status examples/runsheet.yaml          # live vs plan; exit 3 on drift
    buzzer infra chart examples/runsheet.yaml -o capacity.png
    buzzer infra destroy examples/runsheet.yaml         # asks first, unless --yes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_RUNSHEET = 2
EXIT_DRIFT = 3

if TYPE_CHECKING:
    from infra.aws import Clients
    from infra.runsheet import RunSheet

    Body = Callable[[RunSheet, Clients | None, datetime], int]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infra",
        help="pre-scale a show's fleet on EC2 from its run sheet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = p.add_subparsers(dest="infra_command", required=True, metavar="SUBCOMMAND")

    def command(
        name: str, help: str, handler: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = cmds.add_parser(name, help=help)
        c.add_argument("runsheet", metavar="RUNSHEET", help="the show's run sheet (YAML)")
        c.add_argument("--profile", help="AWS profile (default: boto3's standard chain)")
        c.add_argument("--region", help="overrides the run sheet's region")
        c.add_argument(
            "--max-attempts",
            type=int,
            default=8,
            help="per AWS call, with backoff, before throttling is an error (default: %(default)s)",
        )
        c.add_argument(
            "--now",
            type=_utc,
            default=None,
            help="plan as if it were this UTC time (ISO-8601), e.g. for a rehearsal (default: now)",
        )
        c.set_defaults(func=handler)
        return c

    pl = command(
        "plan",
        "print the timeline (instances per tier), the peak fleet and what apply would change",
        _plan,
    )
    pl.add_argument(
        "--offline", action="store_true", help="no AWS call: the timeline and resources only"
    )
    command("apply", "create or update everything of the show (idempotent)", _apply)
    command("status", "compare the live fleet with the plan (exit 3 on drift)", _status)
    d = command("destroy", "remove everything of the show", _destroy)
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ch = command("chart", "draw the capacity timeline against the expected load", _chart)
    ch.add_argument("-o", "--output", required=True, help="PNG file to write")


def _utc(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _echo(line: str) -> None:
    print(line, flush=True)


def _fail(command: str, message: str) -> None:
    print(f"buzzer infra {command}: {message}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, command: str, body: Body, aws: bool = True) -> int:
    """Load the sheet, make clients, run ``body``; every failure becomes one line."""
    from infra.aws import Clients, InfraError, explain
    from infra.runsheet import RunSheetError, load

    try:
        sheet = load(args.runsheet)
    except RunSheetError as exc:
        _fail(command, str(exc))
        return EXIT_RUNSHEET
    now = args.now or datetime.now(UTC)
    if not aws:
        return body(sheet, None, now)

    from botocore.exceptions import BotoCoreError, ClientError

    try:
        clients = Clients.create(
            args.region or sheet.region, profile=args.profile, max_attempts=args.max_attempts
        )
        return body(sheet, clients, now)
    except InfraError as exc:
        _fail(command, str(exc))
    except (BotoCoreError, ClientError) as exc:
        _fail(command, explain(exc, "reading the live fleet", command))
    return EXIT_FAILED


def _plan(args: argparse.Namespace) -> int:
    from infra import commands, timeline
    from infra.capacity import describe_peak

    def body(sheet: RunSheet, aws: Clients | None, now: datetime) -> int:
        _echo(f"show {sheet.show}: on air {sheet.on_air:%Y-%m-%d %H:%M} UTC")
        _echo("")
        tl = timeline.build(sheet)
        _echo(timeline.describe(tl))
        _echo("")
        _echo(f"peak fleet, at {sheet.traffic.headroom:.0%} utilisation:")
        _echo(describe_peak(sheet, tl.peak))
        _echo("")
        if aws is None:
            _echo("(offline: not compared with AWS)")
            return EXIT_OK
        _echo(f"changes in {aws.region}:")
        if not commands.plan(sheet, aws, now, echo=_echo):
            _echo("no changes: the live fleet matches the plan")
        return EXIT_OK

    return _run(args, "plan", body, aws=not args.offline)


def _apply(args: argparse.Namespace) -> int:
    from infra import commands
    from infra.converge import Options

    def body(sheet: RunSheet, aws: Clients | None, now: datetime) -> int:
        assert aws is not None
        changes = commands.apply(sheet, aws, now, Options(echo=_echo, command="apply"))
        _echo(f"applied {len(changes)} change(s)" if changes else "nothing to do")
        return EXIT_OK

    return _run(args, "apply", body)


def _status(args: argparse.Namespace) -> int:
    from infra import commands

    def body(sheet: RunSheet, aws: Clients | None, now: datetime) -> int:
        assert aws is not None
        return EXIT_DRIFT if commands.status(sheet, aws, now, echo=_echo) else EXIT_OK

    return _run(args, "status", body)


def _destroy(args: argparse.Namespace) -> int:
    from infra import commands
    from infra.converge import Options

    def body(sheet: RunSheet, aws: Clients | None, now: datetime) -> int:
        assert aws is not None

        def confirm(question: str) -> bool:
            if args.yes:
                return True
            _echo(question)
            try:
                return input(f"type {sheet.show!r} to confirm: ").strip() == sheet.show
            except EOFError:
                return False

        done = commands.destroy(sheet, aws, Options(echo=_echo, command="destroy"), confirm)
        if done is None:
            _fail("destroy", "not confirmed; nothing was changed")
            return EXIT_FAILED
        return EXIT_OK

    return _run(args, "destroy", body)


def _chart(args: argparse.Namespace) -> int:
    from pathlib import Path

    from infra import chart, timeline

    def body(sheet: RunSheet, aws: Clients | None, now: datetime) -> int:
        out = chart.render(timeline.build(sheet), Path(args.output))
        _echo(f"wrote {out}")
        return EXIT_OK

    return _run(args, "chart", body, aws=False)
