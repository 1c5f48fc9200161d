"""Push keeps streaming to its viewers across a failover of the primary that holds the
updates stream: the same websocket, without reconnecting, sees the final count."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.cluster import key_slot

from buzzer.rediscluster import LocalCluster
from services.common.messages import Keys
from tests.cluster.failover import Voters, setup_poll
from tests.support import eventually
from tests.support.stack import local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_viewer_keeps_receiving_across_a_failover(
    tmp_path: Path, fresh_redis_cluster: LocalCluster
) -> None:
    cluster = fresh_redis_cluster
    env = {"REDIS_URL": cluster.url, "BUZZER_ACK_REPLICAS": "0"}
    with local_stack(
        tmp_path, database="buzzer_test_cluster", ingest=1, push=True, extra_env=env
    ) as rs:

        async def run() -> None:
            poll, tokens = await setup_poll(rs, devices=50)
            keys = Keys(prefix=rs.prefix, partitions=4)
            victim = cluster.primary_for_slot(key_slot(keys.updates.encode()))
            seen: list[dict[str, Any]] = []
            url = f"ws://127.0.0.1:{rs.stack.push_port}/v1/polls/{poll}/live"
            async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
                snapshot = await ws.receive_json(timeout=10)
                assert snapshot["total"] == 0

                async def read() -> None:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            data = msg.json()
                            if "total" in data:
                                seen.append(data)

                reader = asyncio.create_task(read())
                first = Voters(rs, poll, tokens, total=300, concurrency=8)
                await first.run()
                await eventually(lambda: _reached(seen, sum(first.accepted.values())), 30)
                before = len(seen)
                cluster.kill(victim)
                await asyncio.to_thread(cluster.wait_promoted, victim, 30.0)
                second = Voters(rs, poll, tokens, total=300, concurrency=8)
                await second.run()
                total = sum(first.accepted.values()) + sum(second.accepted.values())
                await eventually(lambda: _reached(seen, total), 60)
                assert not ws.closed  # the same socket: no reconnect was needed
                reader.cancel()
            assert len(seen) > before
            assert seen[-1]["total"] == total

        asyncio.run(run())


async def _reached(seen: list[dict[str, Any]], total: int) -> bool:
    return bool(seen) and seen[-1]["total"] >= total
