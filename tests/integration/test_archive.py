"""The archiver stores every accepted vote once, whatever is redelivered; the trimmer and
the backlog bound wait for it; the digest is frozen with the result once both are complete."""

from __future__ import annotations

import hashlib
import io
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest

from services.common.archive import HEADER, recount
from services.common.messages import ARCHIVE_GROUP, TALLY_GROUP
from services.common.polls import close_poll_redis
from services.common.scripts import trim_stream
from services.ingest.monitor import BacklogMonitor
from services.tally.service import Tally
from services.tally.streams import GroupReader
from tests.support import eventually
from tests.support.tally import TallyEnv, cast_vote, close_poll_pg, create_poll, pending

pytestmark = pytest.mark.integration


@dataclass(frozen=True, slots=True)
class CrashBeforeAck(GroupReader):
    """A reader whose process dies right after the PostgreSQL commit."""

    async def ack(self, ids: list[bytes] | list[str]) -> int:
        raise ConnectionError("killed between commit and ack")


async def _cast(env: TallyEnv, poll: str, n: int, seed: int = 1) -> Counter[str]:
    """``n`` votes, one in ten a client retry of an earlier vote id; the accepted counts."""
    rng = random.Random(seed)
    sent: list[tuple[str, str, str, int]] = []
    accepted: Counter[str] = Counter()
    for _ in range(n):
        if sent and rng.random() < 0.1:
            device, vid, opt, cnt = rng.choice(sent)
        else:
            device, vid = uuid.uuid4().hex, str(uuid.uuid4())
            opt, cnt = f"opt{rng.randrange(8)}", rng.randint(1, 3)
            sent.append((device, vid, opt, cnt))
        accepted[opt] += await cast_vote(env, poll, opt, cnt, device=device, vote_id=vid)
    return accepted


async def archive_counts(env: TallyEnv, poll: str) -> Counter[str]:
    rows = await env.pool.fetch(
        "SELECT option_key, sum(count) AS n FROM vote_archive WHERE poll_id = $1"
        " GROUP BY option_key",
        poll,
    )
    return Counter({r["option_key"]: int(r["n"]) for r in rows})


async def archive_rows(env: TallyEnv, poll: str) -> int:
    return int(
        await env.pool.fetchval("SELECT count(*) FROM vote_archive WHERE poll_id = $1", poll)
    )


async def stream_votes(env: TallyEnv, poll: str) -> int:
    n = 0
    for p in range(env.keys.partitions):
        for _, f in await env.redis.xrange(env.keys.votes(p)):
            n += f.get(b"poll") == poll.encode() and f.get(b"t") == b"v"
    return n


async def test_redelivered_votes_archived_once(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _cast(env, pdef.id, 300)
    entries_in_streams = await stream_votes(env, pdef.id)
    first = env.tally(consumer="a")
    await first.archiver.ensure_groups()
    for p in range(env.keys.partitions):
        r = first.archiver.readers[p]
        first.archiver.readers[p] = CrashBeforeAck(r.redis, r.stream, r.group, r.consumer)
        entries = await r.read_new(1000, None)
        assert entries
        with pytest.raises(ConnectionError):
            await first.archiver.handle(p, entries)
    # Committed, not acknowledged: the archive has everything...
    assert await archive_counts(env, pdef.id) == expected
    # ...and the restarted archiver (same name: its own pending list) adds nothing.
    restarted = env.tally(consumer="a")
    for p in range(env.keys.partitions):
        assert await restarted.archiver.recover(p) == 0
        assert await pending(env, env.keys.votes(p), ARCHIVE_GROUP) == 0
    assert await archive_counts(env, pdef.id) == expected
    assert await archive_rows(env, pdef.id) == entries_in_streams


async def test_claimed_votes_archived_once_and_stale_holder_adds_nothing(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _cast(env, pdef.id, 200, seed=2)
    stalled = env.tally(consumer="stalled")
    await stalled.archiver.ensure_groups()
    held = {p: await stalled.archiver.readers[p].read_new(1000, None) for p in range(4)}
    assert all(held.values())
    claimer = env.tally(consumer="claimer", claim_idle_ms=100)

    async def claimed_all() -> bool:
        for p in range(env.keys.partitions):
            await claimer.archiver.recover(p)
        return await archive_counts(env, pdef.id) == expected

    await eventually(claimed_all, timeout=10, interval=0.15)
    # The stalled holder wakes up and writes what it held: nothing new.
    for p, entries in held.items():
        assert await stalled.archiver.handle(p, entries) == 0
    assert await archive_counts(env, pdef.id) == expected
    assert await archive_rows(env, pdef.id) == await stream_votes(env, pdef.id)


async def test_trimmer_waits_for_the_archiver(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    await _cast(env, pdef.id, 50, seed=3)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    await tally.archiver.ensure_groups()
    for p in range(env.keys.partitions):
        while entries := await tally.consumer.readers[p].read_new(1000, None):
            await tally.consumer.apply(p, entries)
    before = await stream_votes(env, pdef.id)
    # Applied by the tally, not archived: nothing may go.
    await tally.trimmer.trim_all()
    assert await stream_votes(env, pdef.id) == before
    for p in range(env.keys.partitions):
        while entries := await tally.archiver.readers[p].read_new(1000, None):
            await tally.archiver.handle(p, entries)
    await tally.trimmer.trim_all()
    assert await stream_votes(env, pdef.id) == 0
    assert await archive_rows(env, pdef.id) == before


async def test_trim_needs_every_group(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    await cast_vote(env, pdef.id, "opt0", partition=0)
    stream = env.keys.votes(0)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    while entries := await tally.consumer.readers[0].read_new(1000, None):
        await tally.consumer.apply(0, entries)
    # No archive group yet (an older tally made the stream): nothing is trimmed.
    assert await trim_stream(env.redis, env.scripts, stream, [TALLY_GROUP, ARCHIVE_GROUP]) is None
    assert await env.redis.xlen(stream) == 1


async def test_backlog_counts_the_archive_lag(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    await _cast(env, pdef.id, 40, seed=4)
    n = await stream_votes(env, pdef.id)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    await tally.archiver.ensure_groups()
    monitor = BacklogMonitor(env.redis, env.keys)
    await monitor.refresh()
    assert monitor.backlog == n
    for p in range(env.keys.partitions):
        while entries := await tally.consumer.readers[p].read_new(1000, None):
            await tally.consumer.apply(p, entries)
    # The tally is done, the archive is not: the stream still holds every entry.
    await monitor.refresh()
    assert monitor.backlog == n
    for p in range(env.keys.partitions):
        while entries := await tally.archiver.readers[p].read_new(7, None):
            await tally.archiver.handle(p, entries)
    await monitor.refresh()
    assert monitor.backlog == 0


async def test_close_waits_for_earlier_votes_held_elsewhere(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    await cast_vote(env, pdef.id, "opt1", 2, partition=0)
    holder = env.tally(consumer="holder")
    await holder.archiver.ensure_groups()
    held = await holder.archiver.readers[0].read_new(1000, None)
    assert len(held) == 1
    await close_poll_pg(env, pdef.id)
    await close_poll_redis(env.redis, env.keys, env.scripts, pdef.id)
    other = env.tally(consumer="other")
    close = await other.archiver.readers[0].read_new(1000, None)
    assert len(close) == 1
    await other.archiver.handle(0, close)
    closed = "SELECT count(*) FROM archive_partition_closed WHERE poll_id = $1 AND partition = 0"
    assert await env.pool.fetchval(closed, pdef.id) == 0
    await holder.archiver.handle(0, held)
    await other.archiver.recover(0)
    assert await env.pool.fetchval(closed, pdef.id) == 1


async def _run_until_sealed(env: TallyEnv, tally: Tally, poll: str) -> None:
    await tally.start()
    try:
        await close_poll_pg(env, poll)
        await close_poll_redis(env.redis, env.keys, env.scripts, poll)

        async def sealed() -> bool:
            return (
                await env.pool.fetchval("SELECT archive_digest FROM polls WHERE id = $1", poll)
            ) is not None

        await eventually(sealed, timeout=20)
    finally:
        await tally.stop()


async def test_digest_frozen_with_the_result_equals_the_recount(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _cast(env, pdef.id, 250, seed=5)
    await _run_until_sealed(env, env.tally(), pdef.id)
    row = await env.pool.fetchrow(
        "SELECT final_result, archive_digest, archived_votes FROM polls WHERE id = $1", pdef.id
    )
    frozen = json.loads(row["final_result"])
    assert {k: v for k, v in frozen["counts"].items() if v} == dict(expected)
    assert row["archived_votes"] == frozen["total"] == sum(expected.values())
    async with env.pool.acquire() as conn:
        sink = io.BytesIO()
        result = await recount(conn, pdef.id, sink)
    assert result.counts == expected and not result.changed
    assert result.digest == row["archive_digest"]
    # The digest is the export's plain SHA-256: sha256sum checks it.
    data = sink.getvalue()
    assert data.startswith(HEADER) and data.count(b"\n") == result.rows + 1
    assert hashlib.sha256(data).hexdigest() == row["archive_digest"]


async def test_digest_waits_for_a_lagging_archive(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    expected = await _cast(env, pdef.id, 60, seed=6)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    await tally.writer.ensure_groups()
    await tally.archiver.ensure_groups()
    await close_poll_pg(env, pdef.id)
    await close_poll_redis(env.redis, env.keys, env.scripts, pdef.id)
    # Totals first: the result freezes without a digest, the archive being behind.
    for p in range(env.keys.partitions):
        while entries := await tally.consumer.readers[p].read_new(1000, None):
            await tally.consumer.apply(p, entries)
        while outbox := await tally.writer.readers[p].read_new(1000, None):
            await tally.writer.process(p, outbox)
    row = await env.pool.fetchrow("SELECT final, archive_digest FROM polls WHERE id = $1", pdef.id)
    assert row["final"] and row["archive_digest"] is None
    for p in range(env.keys.partitions):
        while entries := await tally.archiver.readers[p].read_new(1000, None):
            await tally.archiver.handle(p, entries)
    assert await tally.sealer.seal_pending() == [pdef.id]
    assert await tally.sealer.seal_pending() == []
    sealed = await env.pool.fetchrow(
        "SELECT archive_digest, archived_votes FROM polls WHERE id = $1", pdef.id
    )
    assert sealed["archived_votes"] == sum(expected.values())
    async with env.pool.acquire() as conn:
        assert (await recount(conn, pdef.id)).digest == sealed["archive_digest"]
