"""An ingest process killed with SIGKILL while requests are in flight: every vote that
got a 202 is in Redis, and the client's retry of an unanswered vote (same vote id, to
the other ingest process) is counted once. The audit of ids against Redis is exact."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REDIS_URL
from tests.support import eventually
from tests.support.faults import (
    VoteLog,
    child,
    counted,
    dedupe_ids,
    new_devices,
    open_poll,
    post_vote,
)
from tests.support.stack import RunningStack, local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

CLIENTS = 24


async def scenario(rs: RunningStack) -> None:
    first, second = rs.ingest_urls
    async with aiohttp.ClientSession() as s:
        poll = await open_poll(s, rs)
        tokens = await new_devices(s, first, CLIENTS)

    log = VoteLog()
    stop = asyncio.Event()
    retried_elsewhere: set[str] = set()
    victim = child(rs, "ingest-1")

    async def client(i: int) -> None:
        async with aiohttp.ClientSession() as s:
            n = 0
            while not stop.is_set():
                vid = f"{i:02x}{n:06x}-0000-4000-8000-000000000000"
                n += 1
                # First to ingest-1; an unanswered request (connection reset, refused) is
                # resent with the same vote id to ingest-2, as the app would.
                status = await post_vote(s, first, poll, tokens[i], vid, log, timeout=5)
                while status != 202:
                    assert status in (0, 503), status
                    retried_elsewhere.add(vid)
                    status = await post_vote(s, second, poll, tokens[i], vid, log, timeout=5)
                    if status != 202:
                        await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]

    async def warmed() -> bool:
        return len(log.acked) >= 300

    await eventually(warmed, timeout=20)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    acked_at_kill = len(log.acked)

    async def more() -> bool:
        return len(log.acked) >= acked_at_kill + 300

    await eventually(more, timeout=20)
    stop.set()
    await asyncio.gather(*tasks)

    assert log.statuses[0] > 0, log.statuses  # some requests really were cut mid-flight
    assert retried_elsewhere
    in_redis = await dedupe_ids(REDIS_URL, rs.prefix, poll)
    # Exact: the ids Redis took are exactly the ids clients got a 202 for. Every client
    # vote ended in a 202, so there is no vote of unknown outcome left over.
    assert set(log.acked) == in_redis, (len(log.acked), len(in_redis))
    assert len(log.acked) == len(log.tried)

    async def counted_once() -> bool:
        return await counted(REDIS_URL, rs.prefix, poll) == len(in_redis)

    await eventually(counted_once, timeout=30)
    await asyncio.sleep(0.5)
    assert await counted(REDIS_URL, rs.prefix, poll) == len(log.acked)


def test_ingest_sigkill_in_flight_no_acked_vote_lost_retry_counted_once(tmp_path: Path) -> None:
    with local_stack(
        tmp_path,
        database="buzzer_test_faults",
        ingest=2,
        extra_env={"BUZZER_DEVICE_RATE_PER_S": "100000"},
    ) as rs:
        asyncio.run(scenario(rs))
