"""SIGTERM under load: the ingest process stops accepting, answers what it holds, and
every vote it answered 202 is in the stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from buzzer.ports import free_port
from services.common.messages import Keys, VoteEntry
from tests.conftest import REDIS_URL
from tests.support import delete_prefix, eventually
from tests.support.stack import api

pytestmark = pytest.mark.e2e


async def scenario(
    port: int, proc: subprocess.Popen[bytes], env: dict[str, str]
) -> tuple[set[str], list[int]]:
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {env['BUZZER_ADMIN_TOKEN']}"}
    async with aiohttp.ClientSession() as s:

        async def up() -> bool:
            try:
                async with s.get(f"{base}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(up, timeout=20)
        show = await api(
            s, "POST", f"{base}/v1/admin/shows", headers=admin, json={"name": "x"}, expect=201
        )
        poll = await api(
            s,
            "POST",
            f"{base}/v1/admin/polls",
            headers=admin,
            expect=201,
            json={
                "show_id": show["id"],
                "title": "t",
                "options": [{"key": "a", "label": "A"}, {"key": "b", "label": "B"}],
                "max_votes_per_device": None,
                "max_count": 10,
            },
        )
        await api(s, "POST", f"{base}/v1/admin/polls/{poll['id']}/open", headers=admin)
        tokens = [
            (await api(s, "POST", f"{base}/v1/devices", expect=201))["token"] for _ in range(50)
        ]

    accepted: set[str] = set()
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client(i: int) -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                vid = str(uuid.uuid4())
                try:
                    async with s.post(
                        f"{base}/v1/polls/{poll['id']}/votes",
                        json={"option": "a", "vote_id": vid},
                        headers={"Authorization": f"Bearer {tokens[i]}"},
                    ) as r:
                        statuses.append(r.status)
                        if r.status == 202:
                            accepted.add(vid)
                except (TimeoutError, aiohttp.ClientError):
                    statuses.append(0)
                    await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(client(i)) for i in range(50)]

    async def flowing() -> bool:
        # Well past the 100 the test asks for, so 50 clients have votes in flight.
        return len(accepted) >= 300

    await eventually(flowing, timeout=30)
    proc.send_signal(signal.SIGTERM)
    await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
    stop.set()
    await asyncio.gather(*tasks)
    return accepted, statuses


def test_sigterm_answers_in_flight_votes_and_loses_none(tmp_path: Path, pg_dsn: str) -> None:
    port = free_port()
    prefix = f"e{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "BUZZER_KEY_PREFIX": prefix,
        "BUZZER_ADMIN_TOKEN": uuid.uuid4().hex,
        "BUZZER_TOKEN_SECRET": uuid.uuid4().hex * 2,
        "REDIS_URL": REDIS_URL,
        # The session's migrated test database: admin calls write to it.
        "DATABASE_URL": pg_dsn,
        "BUZZER_DEVICE_RATE_PER_S": "100000",
    }
    log = tmp_path / "ingest.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "buzzer", "serve", "ingest", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        accepted, statuses = asyncio.run(scenario(port, proc, env))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert len(accepted) > 100, statuses[-20:]
    # No client saw a 5xx from a handler cut in half; after the stop, connects are refused.
    assert not [s for s in statuses if s >= 500]

    async def stream_ids() -> set[str]:
        keys = Keys(prefix=prefix, partitions=4)
        client = aioredis.from_url(REDIS_URL)
        try:
            ids = set()
            for p in range(keys.partitions):
                for _, f in await client.xrange(keys.votes(p)):
                    if f[b"t"] == b"v":
                        ids.add(VoteEntry.from_fields(f).vote_id)
            await delete_prefix(client, prefix)
            return ids
        finally:
            await client.aclose()

    in_stream = asyncio.run(stream_ids())
    assert accepted <= in_stream
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    stopped = [entry for entry in lines if entry.get("message") == "ingest stopped"]
    assert stopped and stopped[0]["unanswered"] == 0
    assert stopped[0]["appended"] >= len(accepted)
