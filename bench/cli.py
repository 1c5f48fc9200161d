"""``buzzer bench ...``: benchmarks that print ratios against a baseline from the same run.

Each benchmark is a module of this package with a docstring (its first line is the
help), ``add_arguments(parser)`` and ``run(args) -> exit code``; adding one is one line
in :data:`BENCHES`.
"""

from __future__ import annotations

import argparse
import importlib
import re

# Subcommand -> module. A module missing from this install is left out of the help.
BENCHES: dict[str, str] = {
    "ingest": "bench.ingest",
    "lb": "bench.lb",
    "push": "bench.push",
    "stack": "bench.stack",
    "redis": "bench.redis",
    "archive": "bench.archive",
    "tally": "bench.tally",
    "cost": "bench.cost",
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    bench = sub.add_parser("bench", help="benchmarks (ratios against a same-run baseline)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, module_name in BENCHES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        first = (module.__doc__ or name).strip().splitlines()[0]
        p = bsub.add_parser(name, help=re.sub(r"^``buzzer bench \w+``:\s*", "", first))
        module.add_arguments(p)
        p.set_defaults(func=module.run)
