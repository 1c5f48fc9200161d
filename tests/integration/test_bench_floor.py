"""``bench ingest``'s floor: every request waits for a Redis round trip that one batch of
requests shares, and answers as the bare handler does."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from buzzer.ports import free_port

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def floor() -> AsyncIterator[tuple[str, str]]:
    port, stream = free_port(), f"test-floor-{uuid.uuid4().hex[:8]}:floor"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-W", "error", "-m", "bench.tools.floor", str(port), REDIS_URL, stream),
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    redis = aioredis.from_url(REDIS_URL)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(f"{url}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the floor did not start")
        yield url, stream
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        await redis.delete(stream)
        await redis.aclose()
    assert b"Traceback" not in err, err.decode()


async def test_every_request_is_answered_after_a_round_trip_that_counts_it(
    floor: tuple[str, str],
) -> None:
    url, stream = floor
    ids = [str(uuid.uuid4()) for _ in range(20)]
    async with aiohttp.ClientSession() as s:

        async def vote(vote_id: str) -> tuple[int, object]:
            async with s.post(
                f"{url}/v1/polls/p/votes", json={"vote_id": vote_id, "count": 2}
            ) as r:
                return r.status, await r.json()

        answers = await asyncio.gather(*(vote(v) for v in ids))
    assert answers == [(202, {"vote_id": v, "accepted": 2}) for v in ids]
    redis = aioredis.from_url(REDIS_URL)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(stream)  # type: ignore[assignment]
    finally:
        await redis.aclose()
    # Each answer came after its batch's XADD, and the batches hold every request once.
    # (How many shared one depends on how the requests fell into loop turns.)
    assert sum(int(fields[b"n"]) for _, fields in entries) == len(ids)
