"""The appender and its single-server transport against the real Redis: a full batch is
written before the event-loop turn ends, and a connection Redis dropped costs one 503,
then reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.messages import Keys, VoteEntry
from services.common.scripts import Scripts, VoteOutcome, VoteRules, vote_call
from services.ingest.appender import Appender
from services.ingest.transport import SingleNode, write_now
from tests.conftest import REDIS_URL
from tests.support import wait_blocking

pytestmark = pytest.mark.integration


def _call(keys: Keys, p: int, poll: str) -> tuple[int, object]:
    now = int(time.time() * 1000)
    entry = VoteEntry(poll, "o1", 1, f"d{uuid.uuid4().hex[:12]}", uuid.uuid4().hex, now, now)
    return p, vote_call(keys, p, entry, VoteRules())


async def test_a_full_batch_goes_to_redis_before_the_turn_ends(
    redis: aioredis.Redis, keys: Keys
) -> None:
    scripts = Scripts.register(redis)
    await redis.script_load(scripts.vote_batch.script)
    await redis.set(keys.state(0, "poll"), "open")
    transport = SingleNode(redis)
    appender = Appender(redis, scripts, keys, max_inflight=100, flush_at=4, transport=transport)
    try:
        # The transport connects on its first pipeline; from then on it writes at once.
        assert (await appender.submit(*_call(keys, 0, "poll"))).outcome is VoteOutcome.ACCEPTED  # type: ignore[arg-type]
        assert appender.flushes == 1
        # No await between the submits: all of this runs in one step of one task.
        futs = [appender.submit(*_call(keys, 0, "poll")) for _ in range(4)]  # type: ignore[arg-type]
        assert appender.flushes == 2, "the fourth vote should have flushed the batch at once"
        # Redis runs them while this task has not yet given the loop a turn.
        sync = redis_sync.Redis.from_url(REDIS_URL)
        try:
            written = wait_blocking(lambda: sync.xlen(keys.votes(0)) == 5)
        finally:
            sync.close()
        # A pipeline is in flight: the next full batch waits for the end of the turn.
        futs += [appender.submit(*_call(keys, 0, "poll")) for _ in range(4)]  # type: ignore[arg-type]
        assert appender.flushes == 2
        results = await asyncio.gather(*futs)
        assert written, "the batch reached Redis only once the loop ran"
        assert [r.outcome for r in results] == [VoteOutcome.ACCEPTED] * 8
        assert appender.flushes == 3
        assert await redis.xlen(keys.votes(0)) == 9
    finally:
        await appender.aclose()


async def test_a_pipeline_is_written_in_the_callers_step_on_a_connected_connection(
    redis: aioredis.Redis,
) -> None:
    # The transport's one reach into redis-py (its stream writer): this fails if
    # redis-py renames it, before any vote could.
    conn = redis.connection_pool.make_connection()
    try:
        assert write_now(conn, pack_command(("PING",))) is False  # not connected yet
        await conn.connect()
        assert write_now(conn, pack_command(("PING",))) is True
        assert await conn.read_response() == b"PONG"
    finally:
        await conn.disconnect()


async def test_a_connection_redis_dropped_costs_one_refusal_then_reconnects(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    transport = SingleNode(redis)
    key = f"{key_prefix}:{{p0}}:votes"
    try:
        first = await transport.execute({0: (key, pack_command(("CLIENT", "ID")))})
        assert await redis.client_kill_filter(_id=first[0]) == 1
        # The drop may or may not be seen before the next write: either that call is
        # refused (a 503 for its votes) or it already goes on a new connection.
        with contextlib.suppress(RedisConnectionError, OSError):
            await transport.execute({0: (key, pack_command(("PING",)))})
        again = await transport.execute({0: (key, pack_command(("CLIENT", "ID")))})
        assert isinstance(again[0], int) and again[0] != first[0]
    finally:
        await transport.aclose()
