"""Closed websockets leave no cyclic garbage in push.

Reference counting frees an acyclic object at once; an object in a reference cycle waits
for a collection of the generation it has aged into, for a long-lived socket the oldest,
rare and slow with thousands of viewers (services/push/cycles.py). The collector is off
while sockets come and go, so that what a collection then finds is all the cyclic
garbage they made.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
import uvloop

from bench.tools import wsclient
from bench.tools.tally import LiveTally
from tests.support.push import push_settings, running_push

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

SOCKETS = 50


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def cyclic_garbage() -> Counter[str]:
    """What a full collection finds unreachable now, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)


@pytest.mark.parametrize("ending", ["close", "lost"])
def test_subscribe_update_and_close_leave_no_cyclic_garbage(ending: str) -> None:
    # On uvloop, as the service runs (runner.py): asyncio's own transports have a cycle
    # of their own (_SelectorSocketTransport and its bound read callback).
    garbage = uvloop.run(_sockets_come_and_go(ending))
    # Each socket used to leave 29 (close) or 56 (lost) objects; allow a little that is
    # not per socket (the Redis client, the event loop).
    assert sum(garbage.values()) < SOCKETS, garbage.most_common(10)
    assert not {t for t in garbage if t.startswith(("aiohttp.", "uvloop."))}, garbage


async def _sockets_come_and_go(ending: str) -> Counter[str]:
    redis = aioredis.from_url(REDIS_URL)
    sim = LiveTally(redis, push_settings(f"tpushgc{uuid.uuid4().hex[:10]}").keys())
    try:
        await sim.define("p1", ["red", "blue"])
        await sim.add_votes("p1", {"red": 1})
        await sim.publish("p1")
        async with running_push(push_settings(sim.keys.prefix)) as push:
            server = push.runner.server
            assert server is not None
            # Once per process, not per socket: scripts loaded (NOSCRIPT errors), pools filled.
            warm = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
            await asyncio.wait_for(warm.messages.get(), 5)
            warm.close(1000)
            await asyncio.wait_for(asyncio.shield(warm.closed), 5)
            del warm
            await until(lambda: not server.connections, "the first connection to be lost")
            gc.collect()
            gc.disable()
            try:
                clients = [
                    await wsclient.connect(f"{push.ws}/v1/polls/p1/live") for _ in range(SOCKETS)
                ]
                for c in clients:
                    assert b'"snapshot"' in await asyncio.wait_for(c.messages.get(), 5)
                await sim.add_votes("p1", {"blue": 1})
                await sim.publish("p1")
                for c in clients:
                    assert b'"update"' in await asyncio.wait_for(c.messages.get(), 5)
                for c in clients:
                    if ending == "close":
                        c.close(1000)
                    else:  # the peer vanishes: no close frame, the server's writes fail
                        c.abort()
                if ending == "close":
                    for c in clients:
                        await asyncio.wait_for(asyncio.shield(c.closed), 5)
                del clients, c
                await until(lambda: not push.hub.clients, "handlers to return")
                await until(lambda: not server.connections, "connections to be lost")
                return cyclic_garbage()
            finally:
                gc.enable()
    finally:
        await sim.cleanup()
        await redis.aclose()
