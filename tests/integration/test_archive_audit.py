"""``buzzer audit``: the recount of a closed poll equals its frozen result, and a vote
changed, added or removed afterwards makes it fail, naming the changed row."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from buzzer import audit
from tests.integration.test_archive import _cast, _run_until_sealed
from tests.support.tally import TallyEnv, cast_vote, create_poll

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def _sealed_poll(env: TallyEnv) -> str:
    pdef = await create_poll(env)
    await _cast(env, pdef.id, 120, seed=11)
    await _run_until_sealed(env, env.tally(), pdef.id)
    return pdef.id


async def _recount(env: TallyEnv, poll: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = await audit.recount(env.dsn, poll, out)
    return rc, out.getvalue()


async def test_recount_of_an_untouched_archive_passes(env: TallyEnv) -> None:
    poll = await _sealed_poll(env)
    rc, text = await _recount(env, poll)
    assert rc == 0, text
    assert "recount OK" in text and "DIFFERENT" not in text


async def test_a_changed_row_fails_the_recount_and_is_named(env: TallyEnv) -> None:
    poll = await _sealed_poll(env)
    victim = await env.pool.fetchrow(
        "SELECT vote_id, device, option_key FROM vote_archive WHERE poll_id = $1"
        " ORDER BY random() LIMIT 1",
        poll,
    )
    other = "opt0" if victim["option_key"] != "opt0" else "opt1"
    await env.pool.execute(
        "UPDATE vote_archive SET option_key = $3 WHERE poll_id = $1 AND vote_id = $2",
        poll,
        victim["vote_id"],
        other,
    )
    rc, text = await _recount(env, poll)
    assert rc == audit.EXIT_DIFFERENT, text
    assert "RECOUNT FAILED" in text
    assert f"vote_id={victim['vote_id']} device={victim['device']}" in text
    assert f"option {other}: archive" in text
    assert "digest differs" in text


async def test_a_changed_count_with_its_hash_recomputed_still_fails_on_the_digest(
    env: TallyEnv,
) -> None:
    poll = await _sealed_poll(env)
    # A row removed and one added with a made-up vote: the totals may even match,
    # the digest frozen with the result does not.
    victim = await env.pool.fetchrow(
        "SELECT * FROM vote_archive WHERE poll_id = $1 ORDER BY random() LIMIT 1", poll
    )
    async with env.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM vote_archive WHERE poll_id = $1 AND stream_id = $2",
            poll,
            victim["stream_id"],
        )
        await conn.execute(
            "INSERT INTO vote_archive SELECT poll_id, 'forged-device', vote_id, stream_id,"
            " option_key, count, client_ts, recv_ts, partition, row_hash, archived_at"
            " FROM (SELECT $1::text AS poll_id, $2::text AS vote_id, $3::text AS stream_id,"
            " $4::text AS option_key, $5::int AS count, 0::bigint AS client_ts,"
            " 0::bigint AS recv_ts, 0 AS partition, $6::bytea AS row_hash,"
            " now() AS archived_at) f",
            poll,
            victim["vote_id"],
            victim["stream_id"],
            victim["option_key"],
            victim["count"],
            victim["row_hash"],
        )
    rc, text = await _recount(env, poll)
    assert rc == audit.EXIT_DIFFERENT, text
    assert "digest differs" in text
    assert "device=forged-device" in text


async def test_an_open_poll_cannot_be_recounted(env: TallyEnv) -> None:
    pdef = await create_poll(env)
    await cast_vote(env, pdef.id, "opt0")
    rc, text = await _recount(env, pdef.id)
    assert rc == audit.EXIT_UNUSABLE and "no frozen result" in text
    rc, text = await _recount(env, "no-such-poll")
    assert rc == audit.EXIT_UNUSABLE and "no poll" in text


async def test_export_is_the_digested_csv(env: TallyEnv, tmp_path: Path) -> None:
    poll = await _sealed_poll(env)
    target = tmp_path / "votes.csv"
    out = io.StringIO()
    assert await audit.export(env.dsn, poll, target, out) == 0, out.getvalue()
    digest = await env.pool.fetchval("SELECT archive_digest FROM polls WHERE id = $1", poll)
    data = target.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    rows = await env.pool.fetchval("SELECT count(*) FROM vote_archive WHERE poll_id = $1", poll)
    assert data.count(b"\n") == rows + 1
    # The digest file is in sha256sum's format, so the scrutineer needs nothing of ours.
    check = await asyncio.to_thread(
        subprocess.run,
        ["sha256sum", "-c", "votes.csv.sha256"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_the_command_line_exits_1_on_a_tampered_archive(env: TallyEnv) -> None:
    poll = await _sealed_poll(env)
    await env.pool.execute(
        "UPDATE vote_archive SET count = count + 1 WHERE poll_id = $1 AND stream_id ="
        " (SELECT min(stream_id) FROM vote_archive WHERE poll_id = $1)",
        poll,
    )

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "buzzer", "audit", "recount", poll, "--database-url", env.dsn],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = await asyncio.to_thread(run)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "row changed since it was archived" in proc.stdout
