"""``buzzer audit``: the scrutineer's tools, reading PostgreSQL's vote archive alone.

``recount POLL`` counts a closed poll from its archived votes, prints the count next
to the frozen result, checks every row's hash and the digest frozen with the result,
and exits 1 on any difference. ``export POLL -o FILE`` writes the poll's votes as CSV
with ``FILE.sha256`` beside it (``sha256sum -c`` checks it); the digest is the one
frozen with the result when nothing was changed since.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TextIO

EXIT_DIFFERENT = 1
EXIT_UNUSABLE = 2


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    audit = sub.add_parser("audit", help="recount and export a poll from the vote archive")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    rec = asub.add_parser("recount", help="recount a closed poll; exit 1 on any difference")
    rec.add_argument("poll")
    rec.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    rec.set_defaults(func=_recount)
    exp = asub.add_parser("export", help="write a poll's votes as CSV, with its digest")
    exp.add_argument("poll")
    exp.add_argument("-o", "--output", type=Path, required=True, help="CSV file to write")
    exp.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    exp.set_defaults(func=_export)
    from buzzer import audit_devices

    audit_devices.add_parser(asub)


def _dsn(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    from services.common.settings import CommonSettings

    return CommonSettings().database_url.get_secret_value()


def _recount(args: argparse.Namespace) -> int:
    return asyncio.run(recount(_dsn(args), args.poll, sys.stdout))


def _export(args: argparse.Namespace) -> int:
    return asyncio.run(export(_dsn(args), args.poll, args.output, sys.stdout))


async def recount(dsn: str, poll: str, out: TextIO) -> int:
    """Print the recount of ``poll`` beside its frozen result; 0 only if they agree."""
    import asyncpg

    from services.common.archive import recount as count_archive

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT final, final_result, archive_digest FROM polls WHERE id = $1", poll
        )
        if row is None:
            print(f"error: no poll {poll!r}", file=out)
            return EXIT_UNUSABLE
        if not row["final"]:
            print(f"error: poll {poll!r} has no frozen result yet (is it closed?)", file=out)
            return EXIT_UNUSABLE
        options = [
            r["key"]
            for r in await conn.fetch(
                "SELECT key FROM options WHERE poll_id = $1 ORDER BY position, key", poll
            )
        ]
        result = await count_archive(conn, poll)
    finally:
        await conn.close()
    frozen = json.loads(row["final_result"])
    frozen_counts: dict[str, int] = {k: int(v) for k, v in frozen.get("counts", {}).items()}
    problems: list[str] = []
    keys = options + sorted((set(frozen_counts) | set(result.counts)) - set(options))
    width = max([len("option"), *(len(k) for k in keys)])
    print(f"poll {poll}: recount from the archive ({result.rows} rows)", file=out)
    print(f"{'option':<{width}}  {'archive':>10}  {'frozen':>10}", file=out)
    for k in keys:
        a, f = result.counts.get(k, 0), frozen_counts.get(k, 0)
        mark = "" if a == f else f"  DIFFERENT ({a - f:+d})"
        print(f"{k:<{width}}  {a:>10}  {f:>10}{mark}", file=out)
        if a != f:
            problems.append(f"option {k}: archive {a}, frozen {f}")
    f_total = int(frozen.get("total", 0))
    print(f"{'total':<{width}}  {result.total:>10}  {f_total:>10}", file=out)
    if result.total != f_total:
        problems.append(f"total: archive {result.total}, frozen {f_total}")
    sealed = row["archive_digest"]
    print(f"digest of the archive: {result.digest}", file=out)
    print(f"digest frozen with the result: {sealed or '(none yet)'}", file=out)
    if sealed is None:
        problems.append("no digest was frozen with the result (archive still catching up?)")
    elif sealed != result.digest:
        problems.append("the archive's digest differs from the one frozen with the result")
    for v in result.changed:
        problems.append(
            f"row changed since it was archived: vote_id={v.vote_id} device={v.device}"
            f" partition={v.partition} stream_id={v.stream_id}"
            f" (now option={v.option} count={v.count})"
        )
    if problems:
        print("RECOUNT FAILED:", file=out)
        for p in problems:
            print(f"  {p}", file=out)
        return EXIT_DIFFERENT
    print("recount OK: the archive equals the frozen result", file=out)
    return 0


async def export(dsn: str, poll: str, path: Path, out: TextIO) -> int:
    """Write the poll's votes to ``path`` and their digest to ``path.sha256``."""
    import asyncpg

    from services.common.archive import recount as count_archive

    conn = await asyncpg.connect(dsn)
    try:
        sealed = await conn.fetchval("SELECT archive_digest FROM polls WHERE id = $1", poll)
        with path.open("wb") as sink:
            result = await count_archive(conn, poll, sink)
    finally:
        await conn.close()
    digest_file = path.with_name(path.name + ".sha256")
    digest_file.write_text(f"{result.digest}  {path.name}\n")
    print(f"wrote {result.rows} votes to {path}", file=out)
    print(f"sha256 {result.digest} (in {digest_file})", file=out)
    if sealed is not None and sealed != result.digest:
        print(f"WARNING: the digest frozen with the result is {sealed}", file=out)
        return EXIT_DIFFERENT
    if sealed is None:
        print("note: no digest frozen yet (poll open, or its archive still catching up)", file=out)
    return 0
