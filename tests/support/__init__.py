"""Small helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from buzzer.ports import bindable


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Poll ``check`` until it holds or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    """Delete every key a test made under its own prefix."""
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await client.delete(*batch)
            batch = []
    if batch:
        await client.delete(*batch)


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free ports, below the kernel's ephemeral range.

    Above 32768 every outgoing connection takes a port and leaves it in TIME_WAIT for a
    minute; a benchmark on the same machine can leave few runs of free ports there. Below
    it no client's port lands, as for the cluster nodes (buzzer/rediscluster.py).
    """
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(12_000, 32_768 - n)
        if all(bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1 below 32768")
