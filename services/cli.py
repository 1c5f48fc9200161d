"""``buzzer serve ...`` and ``buzzer db ...``."""

from __future__ import annotations

import argparse
import asyncio


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    serve = sub.add_parser("serve", help="run one service process")
    serve.add_argument("service", choices=["ingest", "tally", "push"])
    serve.add_argument("--port", type=int, help="override BUZZER_PORT")
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="PostgreSQL schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    mig = dbsub.add_parser("migrate", help="apply pending migrations (idempotent)")
    mig.set_defaults(func=_migrate)


def _serve(args: argparse.Namespace) -> int:
    overrides = {"port": args.port} if args.port else {}
    if args.service == "ingest":
        from services.common.settings import IngestSettings
        from services.ingest.main import run

        run(IngestSettings(**overrides))
    elif args.service == "tally":
        from services.common.settings import TallySettings
        from services.tally.main import run as run_tally

        run_tally(TallySettings(**overrides))
    else:
        from services.common.settings import PushSettings
        from services.push.main import run as run_push

        run_push(PushSettings(**overrides))
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from services.common.db import migrate
    from services.common.observability import configure_logging
    from services.common.settings import CommonSettings

    settings = CommonSettings()  # refused before anything is set up (buzzer.cli.main)
    configure_logging("INFO", "db")
    applied = asyncio.run(migrate(settings.database_url.get_secret_value()))
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0
