"""Overload: offered load three times what the stack sustains. The tally is paused
(SIGSTOP), so over the test window the stack sustains exactly its unapplied-vote
bound (``BUZZER_MAX_BACKLOG``); the load generator offers three times that, open loop.
The excess gets a fast 503 with Retry-After, accepted votes stay fast, ingest memory
stays flat, and once the tally resumes the stack takes votes again without a restart."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REDIS_URL
from tests.support import eventually
from tests.support.faults import (
    VoteLog,
    backlog,
    child,
    counted,
    new_devices,
    open_poll,
    p99,
    post_vote,
    rss_kb,
)
from tests.support.stack import RunningStack, local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

MAX_BACKLOG = 300
OFFERED = 3 * MAX_BACKLOG
RATE_PER_S = 400
CLIENT_TIMEOUT_S = 5.0


async def scenario(rs: RunningStack) -> None:
    async with aiohttp.ClientSession() as s:
        poll = await open_poll(s, rs)
        tokens = await new_devices(s, rs.ingest_urls[0], 20)
    ingest_pids = [child(rs, f"ingest-{i + 1}").pid for i in range(2)]
    tally = child(rs, "tally")
    rss_before = {pid: rss_kb(pid) for pid in ingest_pids}
    rss_peak = dict(rss_before)

    tally.send_signal(signal.SIGSTOP)
    log = VoteLog()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as s:
            tasks = []
            start = time.monotonic()
            for i in range(OFFERED):
                # Open loop: requests go out on schedule whatever the answers are.
                await asyncio.sleep(max(0.0, start + i / RATE_PER_S - time.monotonic()))
                tasks.append(
                    asyncio.create_task(
                        post_vote(
                            s,
                            rs.ingest_urls[i % 2],
                            poll,
                            tokens[i % len(tokens)],
                            str(uuid.uuid4()),
                            log,
                            timeout=CLIENT_TIMEOUT_S,
                        )
                    )
                )
                if i % 50 == 0:
                    for pid in ingest_pids:
                        rss_peak[pid] = max(rss_peak[pid], rss_kb(pid))
            await asyncio.gather(*tasks)
        accepted = len(log.acked)
        # The excess was refused, fast, with Retry-After; nothing failed otherwise.
        assert set(log.statuses) == {202, 503}, log.statuses
        assert log.missing_retry_after == 0
        assert log.statuses[503] >= OFFERED // 2, log.statuses
        # Admission stops at the bound, give or take one 250 ms refresh of the backlog.
        assert MAX_BACKLOG <= accepted <= MAX_BACKLOG + RATE_PER_S * 0.5 + 20, log.statuses
        assert p99(log.latencies[503]) < CLIENT_TIMEOUT_S / 10, p99(log.latencies[503])
        assert p99(log.latencies[202]) < 1.0, p99(log.latencies[202])
        for pid in ingest_pids:
            grown_mb = (rss_peak[pid] - rss_before[pid]) / 1024
            assert grown_mb < 64, (pid, rss_before[pid], rss_peak[pid])
        assert await backlog(REDIS_URL, rs.prefix) == accepted
    finally:
        tally.send_signal(signal.SIGCONT)

    # Load drops and the tally is back: the backlog drains and votes get 202 again,
    # with no restart of anything.
    async def drained() -> bool:
        return await backlog(REDIS_URL, rs.prefix) == 0

    await eventually(drained, timeout=30)
    after = VoteLog()
    async with aiohttp.ClientSession() as s:

        async def takes_votes() -> bool:
            # Each process sees the drained backlog at its next 250 ms refresh.
            return all(
                [
                    await post_vote(s, url, poll, tokens[0], str(uuid.uuid4()), after) == 202
                    for url in rs.ingest_urls
                ]
            )

        await eventually(takes_votes, timeout=10)
        for i in range(20):
            assert (
                await post_vote(s, rs.ingest_urls[i % 2], poll, tokens[i], str(uuid.uuid4()), after)
                == 202
            )
    total = accepted + len(after.acked)

    async def exact() -> bool:
        return await counted(REDIS_URL, rs.prefix, poll) == total

    await eventually(exact, timeout=30)
    for pid in ingest_pids:
        assert child(rs, f"ingest-{ingest_pids.index(pid) + 1}").poll() is None


def test_overload_three_times_capacity_sheds_fast_and_recovers(tmp_path: Path) -> None:
    with local_stack(
        tmp_path,
        database="buzzer_test_faults",
        ingest=2,
        extra_env={
            "BUZZER_MAX_BACKLOG": str(MAX_BACKLOG),
            "BUZZER_DEVICE_RATE_PER_S": "100000",
        },
    ) as rs:
        asyncio.run(scenario(rs))
