"""``buzzer``: one console script for every process and tool.

Quick start::

    buzzer db migrate          # create/upgrade the PostgreSQL schema
    buzzer up                  # the whole local stack, behind HAProxy
    buzzer demo                # a show with open polls, and the curl lines to vote

Each area registers its own subcommands through ``add_parser(subparsers)`` in its
``cli`` module, named by an entry point of the group ``buzzer.commands``; heavy imports
happen inside the handlers, so ``buzzer --help`` is fast.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata

GROUP = "buzzer.commands"


def missing_extra(extras: Sequence[str], requires: Sequence[str]) -> str | None:
    """The first of ``extras`` with a requirement (of the distribution's ``requires``)
    that is not installed.

    An area such as the load tests imports its heavy dependencies only in its handlers,
    so importing its module is not enough to know that it can run.
    """
    for extra in extras:
        marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
        for req in requires:
            if not marker.search(req):
                continue
            name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
            try:
                metadata.distribution(name.group(0) if name else req)
            except metadata.PackageNotFoundError:
                return extra
    return None


def _areas() -> Iterator[tuple[metadata.EntryPoint, str | None]]:
    for ep in metadata.entry_points(group=GROUP):
        requires = (ep.dist.requires or []) if ep.dist is not None else []
        yield ep, missing_extra(ep.extras, requires)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buzzer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    skipped: list[str] = []
    for ep, extra in _areas():
        if extra is not None:
            skipped.append(f"{ep.name} (pip install 'buzzer[{extra}]')")
            continue
        try:
            add_parser = ep.load()
        except ModuleNotFoundError as exc:
            # The area's package is not in this install (the production image ships
            # neither the benchmarks nor the load tests); any other missing module is a bug.
            if not exc.name or not (ep.module + ".").startswith(exc.name + "."):
                raise
            skipped.append(f"{ep.name} (not installed)")
            continue
        add_parser(sub)
    if skipped:
        parser.epilog = "not available here: " + ", ".join(skipped)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except Exception as exc:
        message = _settings_refused(exc)
        if message is None:
            raise
        print(f"buzzer {args.command}: {message}", file=sys.stderr)
        rc = 2
    sys.exit(rc or 0)


def _settings_refused(exc: Exception) -> str | None:
    # Imported here: most commands never build settings, and `buzzer --help` stays quick.
    from pydantic import ValidationError

    from services.common.settings import refused

    return refused(exc) if isinstance(exc, ValidationError) else None


if __name__ == "__main__":
    main()
