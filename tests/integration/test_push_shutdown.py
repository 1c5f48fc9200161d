"""SIGTERM on a real push process: every client gets 1001, the process drains and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from bench.tools import wsclient
from bench.tools.tally import LiveTally
from tests.support.push import push_settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_closes_clients_with_going_away_then_exits() -> None:
    prefix = f"tpush{uuid.uuid4().hex[:10]}"
    settings = push_settings(prefix)
    redis = aioredis.from_url(settings.redis_url)
    sim = LiveTally(redis, settings.keys())
    await sim.define("p1", ["a", "b"])
    port = _free_port()
    env = {
        **os.environ,
        "BUZZER_KEY_PREFIX": prefix,
        "BUZZER_PORT": str(port),
        "BUZZER_ADMIN_TOKEN": "t" * 32,
        "BUZZER_TOKEN_SECRET": "s" * 32,
        "BUZZER_INSTANCE_ID": "sigterm-test",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from services.common.settings import PushSettings\n"
        "from services.push.main import run\n"
        "run(PushSettings())",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "push did not start"
                await asyncio.sleep(0.05)
        clients = [
            await wsclient.connect(f"ws://127.0.0.1:{port}/v1/polls/p1/live") for _ in range(3)
        ]
        for c in clients:
            assert json.loads(await asyncio.wait_for(c.messages.get(), 5))["type"] == "snapshot"
        proc.send_signal(signal.SIGTERM)
        for c in clients:
            assert await asyncio.wait_for(c.closed, 10) == (1001, "server shutdown")
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        lines = [
            json.loads(line)
            for line in (await proc.stderr.read()).decode().splitlines()
            if line.startswith("{")
        ]
        summary = [
            x for x in lines if x.get("message") == "push shutdown: clients closed with 1001"
        ]
        assert summary and summary[0]["clients"] == 3, lines
        assert await redis.hget(f"{prefix}:viewers", "sigterm-test") is None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sim.cleanup()
        await redis.aclose()
