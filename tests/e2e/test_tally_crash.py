"""The tally as a real process: SIGKILLed while votes flow, totals still exact; SIGTERM drains.

Votes are appended exactly as ingest appends them (vote_batch.lua); the test keeps its
own count of what was accepted and compares it with the Redis counters, the
PostgreSQL totals and the frozen final result.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buzzer import audit
from services.common.messages import ARCHIVE_GROUP, PG_GROUP, TALLY_GROUP
from services.common.polls import close_poll_redis
from tests.support import eventually
from tests.support.archive import archive_counts, duplicated_votes
from tests.support.tally import (
    TallyEnv,
    cast_vote,
    close_poll_pg,
    create_poll,
    pending,
    pg_counts,
    redis_counts,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TallyProcess:
    env: TallyEnv
    consumer: str
    log_dir: Path
    extra: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"tally-{self.consumer}-{self.starts}.log"

    async def start(self) -> None:
        self.starts += 1
        env = self.env.env_vars(
            BUZZER_CONSUMER=self.consumer,
            BUZZER_TALLY_PORT=str(_free_port()),
            BUZZER_CLAIM_IDLE_MS="1000",
            BUZZER_TRIM_INTERVAL_S="0.5",
            BUZZER_RECONCILE_INTERVAL_S="1.0",
            **self.extra,
        )
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.tally",
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )

    async def signal(self, sig: signal.Signals, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@dataclass
class Producer:
    """~2,000 votes/s over 8 options, with retried vote ids mixed in."""

    env: TallyEnv
    poll: str
    total: int
    accepted: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    async def run(self) -> None:
        rng = random.Random(7)
        sent_ids: list[tuple[str, str, str, int]] = []

        async def one() -> None:
            if sent_ids and rng.random() < 0.05:
                device, vote_id, opt, cnt = rng.choice(sent_ids)  # a client retry
            else:
                device, vote_id = uuid.uuid4().hex, str(uuid.uuid4())
                opt, cnt = f"opt{rng.randrange(8)}", rng.randint(1, 3)
                sent_ids.append((device, vote_id, opt, cnt))
            n = await cast_vote(self.env, self.poll, opt, cnt, device=device, vote_id=vote_id)
            assert n >= 0, n
            self.accepted[opt] += n

        # 50 at a time: the client's pool holds 100 connections, and the test polls too.
        while self.sent < self.total:
            batch = min(50, self.total - self.sent)
            await asyncio.gather(*(one() for _ in range(batch)))
            self.sent += batch
            await asyncio.sleep(0.02)


async def _converged(env: TallyEnv, poll: str, expected: Counter[str]) -> bool:
    if await redis_counts(env, poll) != dict(expected):
        return False
    if await pg_counts(env, poll) != dict(expected):
        return False
    for p in range(env.keys.partitions):
        if await pending(env, env.keys.votes(p), TALLY_GROUP):
            return False
        if await pending(env, env.keys.applied(p), PG_GROUP):
            return False
    return True


async def _close_and_check_final(env: TallyEnv, poll: str, expected: Counter[str]) -> None:
    await close_poll_pg(env, poll)
    await close_poll_redis(env.redis, env.keys, env.scripts, poll)

    async def final() -> bool:
        return bool(await env.pool.fetchval("SELECT final FROM polls WHERE id = $1", poll))

    await eventually(final, timeout=20)
    raw = await env.pool.fetchval("SELECT final_result FROM polls WHERE id = $1", poll)
    result = json.loads(raw)
    assert {k: v for k, v in result["counts"].items() if v} == dict(expected)
    assert result["total"] == sum(expected.values())


async def test_sigkill_at_random_moments_totals_exact(env: TallyEnv, tmp_path: Path) -> None:
    pdef = await create_poll(env)
    tally = TallyProcess(env, "crashy", tmp_path)
    producer = Producer(env, pdef.id, 20_000)
    rng = random.Random()
    kills = 0
    try:
        await tally.start()

        async def chaos() -> None:
            nonlocal kills
            for _ in range(5):
                await asyncio.sleep(rng.uniform(0.8, 2.2))
                await tally.signal(signal.SIGKILL)
                kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                await tally.start()

        await asyncio.gather(producer.run(), chaos())
        assert kills == 5 and producer.sent == 20_000
        await eventually(lambda: _converged(env, pdef.id, producer.accepted), timeout=40)
        assert sum(producer.accepted.values()) > 20_000  # counts of 1-3, minus retries

        # The archiver dies with the tally (it is one of its loops): its archive is as
        # exact as the totals, no vote missing and none twice.
        async def archived() -> bool:
            for p in range(env.keys.partitions):
                if await pending(env, env.keys.votes(p), ARCHIVE_GROUP):
                    return False
            return await archive_counts(env.pool, pdef.id) == producer.accepted

        await eventually(archived, timeout=40)
        assert await duplicated_votes(env.pool, pdef.id) == 0
        await _close_and_check_final(env, pdef.id, producer.accepted)

        # Archive = frozen result = the accepted votes, and the scrutineer's recount agrees.
        async def sealed() -> bool:
            digest = await env.pool.fetchval(
                "SELECT archive_digest FROM polls WHERE id = $1", pdef.id
            )
            return digest is not None

        await eventually(sealed, timeout=20)
        out = io.StringIO()
        assert await audit.recount(env.dsn, pdef.id, out) == 0, out.getvalue()
        assert await tally.signal(signal.SIGTERM) == 0
    finally:
        await tally.ensure_dead()
    stopped = [line for line in tally.log_lines() if line.get("message") == "tally stopped"]
    assert len(stopped) == 1


async def test_survivor_claims_dead_consumers_entries(env: TallyEnv, tmp_path: Path) -> None:
    pdef = await create_poll(env)
    doomed = TallyProcess(env, "doomed", tmp_path)
    survivor = TallyProcess(env, "survivor", tmp_path)
    producer = Producer(env, pdef.id, 12_000)
    try:
        await doomed.start()
        await survivor.start()

        async def holding() -> bool:
            for p in range(env.keys.partitions):
                for stream, group in (
                    (env.keys.votes(p), TALLY_GROUP),
                    (env.keys.applied(p), PG_GROUP),
                ):
                    with contextlib.suppress(Exception):
                        summary = await env.redis.xpending(stream, group)
                        if any(
                            c["name"] == b"doomed" and c["pending"] for c in summary["consumers"]
                        ):
                            return True
            return False

        left_pending = False

        async def kill_one() -> None:
            # Kill it while it holds entries, so that only a claim can recover them;
            # a kill that happens to land between batches is retried.
            nonlocal left_pending
            for _ in range(10):
                await asyncio.sleep(random.uniform(0.3, 0.8))
                await eventually(holding, timeout=20, interval=0.001)
                await doomed.signal(signal.SIGKILL)
                if left_pending := await holding():
                    return
                await doomed.start()

        await asyncio.gather(producer.run(), kill_one())
        assert left_pending, "never caught the doomed tally holding entries"
        await eventually(lambda: _converged(env, pdef.id, producer.accepted), timeout=40)
        await _close_and_check_final(env, pdef.id, producer.accepted)
        assert await survivor.signal(signal.SIGTERM) == 0
    finally:
        await doomed.ensure_dead()
        await survivor.ensure_dead()
    claimed = [
        line
        for line in survivor.log_lines()
        if line.get("message") == "claimed pending entries of an idle consumer"
    ]
    stopped = [line for line in survivor.log_lines() if line.get("message") == "tally stopped"]
    assert len(stopped) == 1
    assert claimed and stopped[0]["claimed"], "the survivor never claimed anything"


async def test_sigterm_finishes_batch_in_hand_and_logs_summary(
    env: TallyEnv, tmp_path: Path
) -> None:
    pdef = await create_poll(env)
    tally = TallyProcess(env, "graceful", tmp_path)
    producer = Producer(env, pdef.id, 6_000)
    try:
        await tally.start()
        flow = asyncio.create_task(producer.run())

        async def applying() -> bool:
            return sum((await redis_counts(env, pdef.id)).values()) > 1000

        await eventually(applying, timeout=20)
        started = time.monotonic()
        assert await tally.signal(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        await flow
    finally:
        await tally.ensure_dead()
    stopped = [line for line in tally.log_lines() if line.get("message") == "tally stopped"]
    assert len(stopped) == 1
    summary = stopped[0]
    for key in ("applied", "batches", "pg_batches", "pg_entries", "published", "pending_left"):
        assert key in summary, key
    assert summary["pending_left"] == 0
    assert isinstance(summary["applied"], int) and summary["applied"] > 0
    for p in range(env.keys.partitions):
        for stream, group in ((env.keys.votes(p), TALLY_GROUP), (env.keys.applied(p), PG_GROUP)):
            rows = await env.redis.xpending_range(stream, group, "-", "+", 10, "graceful")
            assert rows == [], (stream, rows)
    # What it applied before stopping is in Redis and PostgreSQL alike; a successor
    # picks up the rest, exactly.
    successor = TallyProcess(env, "successor", tmp_path)
    try:
        await successor.start()
        await eventually(lambda: _converged(env, pdef.id, producer.accepted), timeout=30)
        assert await successor.signal(signal.SIGTERM) == 0
    finally:
        await successor.ensure_dead()
