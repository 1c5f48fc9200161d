"""``buzzer``: one console script for every process and tool.

Quick start::

    buzzer db migrate          # create/upgrade the PostgreSQL schema
    buzzer up                  # the whole local stack, behind HAProxy
    buzzer demo                # a show with open polls, and the curl lines to vote

Each area registers its own subcommands through ``add_parser(subparsers)`` in its
``cli`` module; heavy imports happen inside the handlers, so ``buzzer --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands; each has add_parser(subparsers).
_AREAS = (
    "services.cli",  # serve, db
    "buzzer.stack",  # up, demo
    "buzzer.bench",  # bench
    "lb.cli",  # lb
    "infra.cli",  # infra
    "loadtest.cli",  # loadtest
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buzzer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc = args.func(args)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
