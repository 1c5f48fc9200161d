"""``buzzer audit devices POLL``: the accounts and source addresses with the most devices
and votes in a poll, for the scrutineer looking for farmed devices.

Votes come from PostgreSQL's vote archive (per device), who registered each device and
from where from its registration record in Redis (kept as long as its token is valid:
devices whose token expired since are counted as "no record"). Accounts are shown
hashed when the deployment asks for privacy (``BUZZER_HASH_ACCOUNTS=true``) or with
``--hash-accounts``: the same account gets the same hash, so the ranking is intact.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TextIO

ANONYMOUS = "(anonymous)"
NO_RECORD = "(no record)"


def add_parser(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    dev = asub.add_parser(
        "devices", help="accounts and sources with the most devices and votes in a poll"
    )
    dev.add_argument("poll")
    dev.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    dev.add_argument(
        "--hash-accounts",
        action="store_true",
        default=None,
        help="show accounts hashed (default: BUZZER_HASH_ACCOUNTS)",
    )
    dev.add_argument("--json", action="store_true", help="machine-readable output")
    dev.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    dev.add_argument("--redis-url", help="Redis URL (default: REDIS_URL)")
    dev.set_defaults(func=_devices)


@dataclass
class Row:
    name: str
    devices: int = 0
    votes: int = 0


@dataclass
class DevicesReport:
    poll: str
    devices: int
    votes: int
    unrecorded: int
    accounts: list[Row] = field(default_factory=list)
    sources: list[Row] = field(default_factory=list)


def _hashed(account: str) -> str:
    from services.common.oidc import account_key

    return "sha256:" + account_key(account)[:16]


def rank(
    votes: dict[str, int],
    records: dict[str, tuple[str, str]],
    *,
    top: int,
    hash_accounts: bool,
    poll: str = "",
) -> DevicesReport:
    """``votes``: per device; ``records``: per device, (account, source)."""
    accounts: dict[str, Row] = defaultdict(lambda: Row(""))
    sources: dict[str, Row] = defaultdict(lambda: Row(""))
    for device, n in votes.items():
        rec = records.get(device)
        if rec is None:
            acc, src = NO_RECORD, NO_RECORD
        else:
            acc = (_hashed(rec[0]) if hash_accounts else rec[0]) if rec[0] else ANONYMOUS
            src = rec[1]
        for table, name in ((accounts, acc), (sources, src)):
            row = table[name]
            row.name, row.devices, row.votes = name, row.devices + 1, row.votes + n

    def ordered(table: dict[str, Row]) -> list[Row]:
        return sorted(table.values(), key=lambda r: (-r.devices, -r.votes, r.name))[:top]

    return DevicesReport(
        poll=poll,
        devices=len(votes),
        votes=sum(votes.values()),
        unrecorded=sum(1 for d in votes if d not in records),
        accounts=ordered(accounts),
        sources=ordered(sources),
    )


async def devices_report(
    dsn: str, redis_url: str, prefix: str, poll: str, *, top: int, hash_accounts: bool
) -> DevicesReport | None:
    import asyncpg

    from services.common import redisconn
    from services.common.devices import device_records
    from services.common.messages import Keys

    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM polls WHERE id = $1", poll) is None:
            return None
        rows = await conn.fetch(
            "SELECT device, sum(count)::bigint AS votes FROM vote_archive"
            " WHERE poll_id = $1 GROUP BY device",
            poll,
        )
    finally:
        await conn.close()
    votes = {r["device"]: int(r["votes"]) for r in rows}
    redis = redisconn.connect(redis_url)
    try:
        recs = await device_records(redis, Keys(prefix=prefix, partitions=1), votes)
    finally:
        await redis.aclose()
    records = {d: (r.account, r.source) for d, r in recs.items()}
    return rank(votes, records, top=top, hash_accounts=hash_accounts, poll=poll)


def print_report(report: DevicesReport, out: TextIO, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(asdict(report), indent=2), file=out)
        return
    print(
        f"poll {report.poll}: {report.devices} voting devices, {report.votes} votes"
        f" ({report.unrecorded} devices without a registration record)",
        file=out,
    )
    for title, rows in (("accounts", report.accounts), ("sources", report.sources)):
        print(f"\n{title} with the most devices", file=out)
        print(f"{'devices':>8}  {'votes':>8}  {title[:-1]}", file=out)
        for r in rows:
            print(f"{r.devices:>8}  {r.votes:>8}  {r.name}", file=out)


def _devices(args: argparse.Namespace) -> int:
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    dsn = args.database_url or settings.database_url.get_secret_value()
    redis_url = args.redis_url or settings.redis_url
    hash_accounts = settings.hash_accounts if args.hash_accounts is None else True
    report = asyncio.run(
        devices_report(
            dsn,
            redis_url,
            settings.key_prefix,
            args.poll,
            top=args.top,
            hash_accounts=hash_accounts,
        )
    )
    if report is None:
        print(f"error: no poll {args.poll!r}", file=sys.stderr)
        return 2
    print_report(report, sys.stdout, args.json)
    return 0
