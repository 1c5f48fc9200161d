"""Votes flowing through a real stack on a real cluster while a primary is SIGKILLed.

The voters behave as the app does: a 503 or a lost answer is retried with the same
vote id until a 202 (or another final answer). What the show may count is then
exactly the set of vote ids that got a 202: each once, whichever attempt got it.
"""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from redis.cluster import key_slot

from buzzer.rediscluster import LocalCluster
from services.common.messages import Keys
from services.common.redisconn import connect
from tests.support import eventually
from tests.support.stack import RunningStack, api

OPTIONS = 4


@dataclass
class Voters:
    rs: RunningStack
    poll: str
    tokens: list[str]
    total: int
    concurrency: int = 32
    accepted: Counter[str] = field(default_factory=Counter)
    """Counts of every vote id that got a 202, once per vote id."""
    by_partition: Counter[int] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    done: int = 0
    last_refusal: Any = None
    """The body of the last 503/429, for the failure message of a vote that never landed."""

    async def run(self) -> None:
        rng = random.Random(11)
        work = [
            (self.tokens[i % len(self.tokens)], f"o{rng.randrange(OPTIONS)}", rng.randint(1, 3))
            for i in range(self.total)
        ]
        queue: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
        for item in work:
            queue.put_nowait(item)
        urls = self.rs.ingest_urls

        async def worker(session: aiohttp.ClientSession, w: int) -> None:
            while True:
                try:
                    token, option, count = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"option": option, "count": count, "vote_id": str(uuid.uuid4())}
                status = await self._until_final(session, urls[w % len(urls)], token, body)
                assert status == 202, status
                self.accepted[option] += count
                self.done += 1

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(worker(session, w) for w in range(self.concurrency)))

    async def _until_final(
        self, session: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any]
    ) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        for _attempt in range(600):
            try:
                async with session.post(
                    f"{url}/v1/polls/{self.poll}/votes",
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as r:
                    self.statuses[r.status] += 1
                    data = await r.json()
                    if r.status in (429, 503):
                        assert "Retry-After" in r.headers
                        self.last_refusal = data
                        await asyncio.sleep(0.05)
                        continue
                    if r.status == 202:
                        assert data == {"vote_id": body["vote_id"], "accepted": body["count"]}
                    return r.status
            except (aiohttp.ClientError, TimeoutError):
                # The answer was lost: the app resends the same vote id.
                self.statuses[0] += 1
                await asyncio.sleep(0.05)
        raise AssertionError(f"vote {body['vote_id']} never landed; last: {self.last_refusal}")


def shard_ports(cluster: LocalCluster, keys: Keys) -> dict[int, int]:
    """Partition -> port of the primary that holds it now."""
    return {
        p: cluster.primary_for_slot(key_slot(keys.votes(p).encode()))
        for p in range(keys.partitions)
    }


async def setup_poll(rs: RunningStack, devices: int = 200) -> tuple[str, list[str]]:
    base = rs.ingest_urls[0]
    async with aiohttp.ClientSession() as s:
        show = await api(
            s,
            "POST",
            f"{base}/v1/admin/shows",
            headers=rs.admin_headers,
            json={"name": "cluster"},
            expect=201,
        )
        poll = await api(
            s,
            "POST",
            f"{base}/v1/admin/polls",
            headers=rs.admin_headers,
            json={
                "show_id": show["id"],
                "title": "failover",
                "options": [{"key": f"o{i}", "label": f"Option {i}"} for i in range(OPTIONS)],
                "max_votes_per_device": None,
                "max_count": 100,
            },
            expect=201,
        )
        await api(s, "POST", f"{base}/v1/admin/polls/{poll['id']}/open", headers=rs.admin_headers)
        tokens = [
            (await api(s, "POST", f"{base}/v1/devices", expect=201))["token"]
            for _ in range(devices)
        ]
    return poll["id"], tokens


async def live_counts(rs: RunningStack, poll: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as s:
        t = await api(s, "GET", f"{rs.ingest_urls[0]}/v1/polls/{poll}/tally")
    return {k: v for k, v in t["counts"].items() if v}


async def redis_counts(rs: RunningStack, poll: str) -> dict[str, int]:
    keys = Keys(prefix=rs.prefix, partitions=4)
    client = connect(rs.env["REDIS_URL"])
    try:
        total: Counter[str] = Counter()
        for p in range(keys.partitions):
            for k, v in (await client.hgetall(keys.counts(p, poll))).items():
                total[k.decode()] += int(v)
        return dict(total)
    finally:
        await client.aclose()


async def close_and_final(rs: RunningStack, poll: str) -> dict[str, Any]:
    """Close the poll (retrying through a failover) and wait for the frozen result."""
    base = rs.ingest_urls[0]
    async with aiohttp.ClientSession() as s:

        async def closed() -> bool:
            async with s.post(f"{base}/v1/admin/polls/{poll}/close", headers=rs.admin_headers) as r:
                return r.status == 200

        await eventually(closed, timeout=30, interval=0.2)

        async def final() -> bool:
            async with s.get(
                f"{base}/v1/admin/polls/{poll}/result.json", headers=rs.admin_headers
            ) as r:
                return r.status == 200 and bool((await r.json()).get("final"))

        await eventually(final, timeout=60, interval=0.2)
        return dict(
            await api(
                s, "GET", f"{base}/v1/admin/polls/{poll}/result.json", headers=rs.admin_headers
            )
        )


def kill_tally(rs: RunningStack) -> None:
    tally = next(c for c in rs.stack.children if c.name == "tally")
    assert tally.proc is not None
    tally.proc.send_signal(signal.SIGKILL)
    tally.proc.wait(timeout=10)


def restart_tally(rs: RunningStack) -> None:
    tally = next(c for c in rs.stack.children if c.name == "tally")
    tally.start(rs.stack.state_dir / "logs")
