"""``buzzer serve ...`` and ``buzzer db ...``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


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
    from pydantic import ValidationError

    from services.common.settings import IngestSettings, PushSettings, TallySettings

    overrides = {"port": args.port} if args.port else {}
    kind = {"ingest": IngestSettings, "tally": TallySettings, "push": PushSettings}
    cls = kind[args.service]
    try:
        settings = cls(**overrides)
    except ValidationError as exc:
        print(refused_settings(args.service, exc), file=sys.stderr)
        return 2
    if isinstance(settings, IngestSettings):
        from services.ingest.main import run

        run(settings)
    elif isinstance(settings, TallySettings):
        from services.tally.main import run as run_tally

        run_tally(settings)
    else:
        from services.push.main import run as run_push

        run_push(settings)
    return 0


def refused_settings(service: str, exc: ValidationError) -> str:
    """One line per setting the environment got wrong, named as it is set
    (``BUZZER_ACK_TIMEOUT_MS``), without the value: it may be a secret."""
    lines = [f"buzzer serve {service}: settings refused"]
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        env = name if name.isupper() else f"BUZZER_{name.upper()}"
        lines.append(f"  {env}: {err['msg']}")
    return "\n".join(lines)


def _migrate(_: argparse.Namespace) -> int:
    from services.common.db import migrate
    from services.common.observability import configure_logging
    from services.common.settings import CommonSettings

    configure_logging("INFO", "db")
    applied = asyncio.run(migrate(CommonSettings().database_url.get_secret_value()))
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0
