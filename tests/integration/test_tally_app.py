"""The tally app in-process: loops running, health, readiness, metrics, publishing."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.messages import decode_update
from services.tally.app import create_app
from tests.support import eventually
from tests.support.tally import (
    TallyEnv,
    cast_vote,
    create_poll,
    pg_counts,
    redis_counts,
)

pytestmark = pytest.mark.integration


async def test_running_tally_applies_publishes_and_reports(
    env: TallyEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="buzzer.tally")
    pdef = await create_poll(env)
    app = create_app(env.settings(publish_interval_ms=100))
    async with TestClient(TestServer(app)) as client:
        expected: Counter[str] = Counter()
        started = asyncio.get_running_loop().time()
        for burst in range(10):
            for i in range(100):
                opt = f"opt{(i * 7 + burst) % 8}"
                expected[opt] += await cast_vote(env, pdef.id, opt, 1 + i % 3)
            await asyncio.sleep(0.05)

        async def converged() -> bool:
            return await redis_counts(env, pdef.id) == dict(expected) and await pg_counts(
                env, pdef.id
            ) == dict(expected)

        await eventually(converged, timeout=15)
        await eventually(
            lambda: _last_update_total(env, pdef.id, sum(expected.values())), timeout=5
        )
        elapsed = asyncio.get_running_loop().time() - started

        resp = await client.get("/readyz")
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["checks"] == {"redis": "ok", "postgres": "ok"}
        metrics = await (await client.get("/metrics")).text()
        assert "buzzer_tally_applied_entries_total 1000.0" in metrics
        assert 'buzzer_stream_pending{partition="0",stream="votes"}' in metrics

        updates = [decode_update(f[b"d"]) for _, f in await env.redis.xrange(env.keys.updates)]
        assert updates
        versions = [u.version for u in updates]
        assert versions == sorted(versions)
        # At most one update per poll per 100 ms (plus one for the edges).
        assert len(updates) <= elapsed / 0.1 + 2
    stopped = [r for r in caplog.records if r.getMessage() == "tally stopped"]
    assert len(stopped) == 1
    assert stopped[0].applied == 1000  # type: ignore[attr-defined]
    assert stopped[0].pending_left == 0  # type: ignore[attr-defined]


async def _last_update_total(env: TallyEnv, poll: str, total: int) -> bool:
    last = await env.redis.xrevrange(env.keys.updates, count=1)
    return bool(last) and decode_update(last[0][1][b"d"]).total == total


async def test_postgres_down_is_degraded_while_redis_keeps_applying(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    settings = env.settings(
        database_url="postgresql://postgres@127.0.0.1:1/buzzer", pg_timeout_s=2.0
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        for i in range(50):
            await cast_vote(env, pdef.id, f"opt{i % 2}")

        async def applied() -> bool:
            return await redis_counts(env, pdef.id) == {"opt0": 25, "opt1": 25}

        await eventually(applied, timeout=10)
        resp = await client.get("/readyz")
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "degraded"
        assert body["checks"]["redis"] == "ok"
        assert body["checks"]["postgres"].startswith("unavailable")
        assert (await client.get("/healthz")).status == 200
