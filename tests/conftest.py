"""Shared fixtures: real Redis and PostgreSQL, isolated per test by key prefix and database."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from services.common.messages import Keys
from tests.support import delete_prefix
from tests.support.tally import TallyEnv, migrated_database, tally_database, tally_env

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DB = os.environ.get("TEST_DATABASE", "buzzer_test")

# Tables a test may have written, emptied before each test that asks for the database.
_TABLES = "vote_archive, archive_partition_closed, audit_log, outbox_watermark, applied_outbox, poll_partition_closed, rate_buckets, totals, options, polls, shows"


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A test that runs a command in process may configure logging
    (observability.configure_logging): its handler writes to that test's captured
    stderr, closed once the test ends, and every later test in the worker that logs
    would print a logging error into its own output. Each test starts from the same
    root logger."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The session's database, its name unique to this run: two runs at once (CI and a
    developer) never empty each other's tables."""
    with migrated_database(TEST_DB) as dsn:
        yield dsn


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"TRUNCATE {_TABLES} CASCADE")
    yield conn
    await conn.close()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(prefix=key_prefix, partitions=4)


@pytest.fixture
async def redis(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await delete_prefix(client, key_prefix)
    await client.aclose()


ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex
TOKEN_SECRET = "test-secret-" + uuid.uuid4().hex


@pytest.fixture
def ingest_settings(pg_dsn: str, key_prefix: str):  # type: ignore[no-untyped-def]
    from services.common.settings import IngestSettings

    return IngestSettings(
        redis_url=REDIS_URL,
        database_url=SecretStr(pg_dsn),
        key_prefix=key_prefix,
        partitions=4,
        token_secret=SecretStr(TOKEN_SECRET),
        admin_token=SecretStr(ADMIN_TOKEN),
    )


@pytest.fixture(scope="module")
def tally_dsn() -> Iterator[str]:
    """A database of the module's own: tally tests drop theirs when done."""
    yield from tally_database()


@pytest.fixture
async def env(tally_dsn: str) -> AsyncIterator[TallyEnv]:
    async with tally_env(tally_dsn) as e:
        yield e
