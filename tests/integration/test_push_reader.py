"""Push's updates reader waits out every error a Redis that is away raises, the cluster
client's own included, and goes on reading from where it was."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import SlotNotCoveredError

from services.common.redisconn import ResilientConnection
from services.push.reader import UpdatesReader
from tests.support import eventually

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class FailingOver(aioredis.Redis):
    """A real client whose next read fails as redis-py's cluster client fails while it
    rebuilds its slot map in a failover: ``SlotNotCoveredError``, not a ``RedisError``."""

    failures = 1

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise SlotNotCoveredError('Slot "2" not covered by the cluster.')
        return await super().xread(*args, **kwargs)


async def test_the_reader_outlives_a_slot_map_being_rebuilt() -> None:
    stream = f"test-reader-{uuid.uuid4().hex[:8]}:updates"
    # The connections every process uses (services.common.redisconn): with redis-py's
    # own, the cancel below was dropped one time in a few hundred and the reader read on.
    client = FailingOver.from_pool(
        ConnectionPool.from_url(REDIS_URL, connection_class=ResilientConnection)
    )
    got: list[bytes] = []
    task = asyncio.create_task(UpdatesReader(client, stream, got.append).run(block_ms=100))
    try:
        await eventually(lambda: _true(client.failures == 0), 10)
        await client.xadd(stream, {"d": b"after the failover"})
        await eventually(lambda: _true(got == [b"after the failover"]), 10)
        assert not task.done()
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the reader went on after it was cancelled"
        await client.delete(stream)
        await client.aclose()


async def _true(value: bool) -> bool:
    return value
