"""PostgreSQL: versioned, idempotent migrations and the connection pool."""

from __future__ import annotations

import asyncio
import logging
import re
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("buzzer.db")

# Any constant works; it serializes concurrent `buzzer db migrate` runs.
_MIGRATION_LOCK = 0x62757A7A


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every file in ``migrations/``, in order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it is missing. True if created."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return False
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await admin.close()
    log.info("created database", extra={"database": name})
    return True


async def migrate(dsn: str) -> list[int]:
    """Apply every migration not yet applied, each in its own transaction."""
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    applied: list[int] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations(version, name) VALUES ($1, $2)", version, name
                )
            applied.append(version)
            log.info("applied migration", extra={"version": version, "migration": name})
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied


async def create_pool(dsn: str, size: int = 4, min_size: int = 1) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=size)
    assert pool is not None
    return pool


class LazyPool:
    """An asyncpg pool created on first use, never at start: a process whose main work
    doesn't need PostgreSQL (applying votes, taking votes) starts and keeps working while
    it is down, and its readiness reports it. A failed creation is retried on next use.

    :param dsn: PostgreSQL URL
    :param size: most connections
    :param min_size: connections opened when the pool is created
    """

    def __init__(self, dsn: str, size: int = 4, min_size: int = 1) -> None:
        self._dsn = dsn
        self._size = size
        self._min_size = min_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await create_pool(self._dsn, self._size, self._min_size)
        return self._pool

    async def close(self, timeout: float | None = None) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            async with asyncio.timeout(timeout):
                await pool.close()
