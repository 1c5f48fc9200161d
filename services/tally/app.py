"""The tally process as an aiohttp application: health, readiness, metrics, workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.common import redisconn
from services.common.db import LazyPool
from services.common.observability import setup_observability
from services.common.settings import TallySettings
from services.tally.keys import PG, REDIS, SETTINGS, TALLY
from services.tally.metrics import TallyMetrics
from services.tally.service import Tally

log = logging.getLogger("buzzer.tally")

CHECK_TIMEOUT_S = 2.0


def create_app(settings: TallySettings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings

    async def check_redis() -> None:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await app[REDIS].ping()

    async def check_postgres() -> None:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            pool = await app[PG].pool()
            await pool.fetchval("SELECT 1")

    # PostgreSQL is optional for readiness: without it the tally still applies votes to
    # Redis (live counts stay exact) and the outbox waits; the status says "degraded".
    obs = setup_observability(
        app,
        "tally",
        {"redis": check_redis, "postgres": check_postgres},
        optional=frozenset({"postgres"}),
    )
    metrics = TallyMetrics(obs.registry)

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        client = redisconn.connect(settings.redis_url)
        app[REDIS] = client
        yield
        await client.aclose()

    async def pg_ctx(app: web.Application) -> AsyncIterator[None]:
        pg = LazyPool(settings.database_url.get_secret_value(), settings.pg_pool_size)
        app[PG] = pg
        try:
            async with asyncio.timeout(settings.pg_timeout_s):
                await pg.pool()
        except Exception as exc:
            # Votes keep being applied to Redis; the outbox waits for PostgreSQL.
            log.warning(
                "postgres unavailable at start",
                extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
            )
        yield
        await pg.close()

    async def tally_ctx(app: web.Application) -> AsyncIterator[None]:
        tally = Tally(app[REDIS], app[PG], settings, metrics)
        app[TALLY] = tally
        await tally.start()
        for task in tally.tasks:
            obs.essential(task)
        yield
        await tally.stop()

    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(pg_ctx)
    app.cleanup_ctx.append(tally_ctx)
    return app
