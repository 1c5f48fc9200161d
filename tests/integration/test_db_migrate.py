"""`buzzer db migrate`: versioned, idempotent, creates its database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import asyncpg
import pytest

from services.common.db import migrate, migrations
from tests.conftest import PG_ADMIN_DSN

pytestmark = pytest.mark.integration


async def test_migrate_creates_the_database_and_is_idempotent() -> None:
    name = f"buzzer_test_mig_{uuid.uuid4().hex[:8]}"
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        first = await migrate(dsn)
        assert first == [v for v, _, _ in migrations()]
        assert await migrate(dsn) == []
        conn = await asyncpg.connect(dsn)
        try:
            versions = [
                r["version"]
                for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            ]
            assert versions == first
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert {
                "shows",
                "polls",
                "options",
                "totals",
                "rate_buckets",
                "applied_outbox",
            } <= tables
        finally:
            await conn.close()
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "buzzer", "db", "migrate"],
            capture_output=True,
            text=True,
            env={"DATABASE_URL": dsn, "PATH": ""},
            check=True,
        )
        assert "up to date" in out.stdout
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
