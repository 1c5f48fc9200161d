"""Small helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis


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


def wait_blocking(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll ``check`` for up to ``seconds`` without ever yielding to the event loop, so
    that only bytes already written to a socket can make it true (the transports'
    early write)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False
