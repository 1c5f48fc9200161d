"""The floor for ``bench ingest``: the bare handler (bench.tools.bare) that also waits,
like a vote, for one durable Redis round trip shared by every request of its loop turn.

What is left between this and the vote endpoint is Buzzer's own work per vote (token,
validation, idempotency keys and arguments, the script's reply, security headers,
metrics) and the vote script's time in Redis; what is left between the bare handler and
this is aiohttp's cost of a request that suspends, plus the round trip. Each batch is one
``XADD`` (the same AOF write and fsync as a batch of votes) through redis-py's client,
which costs more per batch than ingest's own transport: the floor errs low, not high.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler

from bench.tools import bare

REDIS = web.AppKey("redis", aioredis.Redis)
WAITING = web.AppKey("waiting", list)


async def _one_round_trip(
    r: aioredis.Redis, stream: str, batch: list[asyncio.Future[None]]
) -> None:
    try:
        await r.xadd(stream, {"n": len(batch)}, maxlen=1000, approximate=True)
    except Exception as exc:  # every waiting request gets it: none hangs
        for f in batch:
            f.set_exception(exc)
        return
    for f in batch:
        f.set_result(None)


def _turn_ended(app: web.Application, stream: str) -> None:
    waiting = app[WAITING]  # the same list for the app's life: a started app is frozen
    batch = waiting.copy()
    waiting.clear()
    asyncio.get_running_loop().create_task(_one_round_trip(app[REDIS], stream, batch))


def make_vote(stream: str) -> Handler:
    async def vote(request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        app = request.app
        waiting = app[WAITING]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not waiting:
            asyncio.get_running_loop().call_soon(_turn_ended, app, stream)
        waiting.append(fut)
        await fut
        return bare.accepted(body)

    return vote


def main(port: int, redis_url: str, stream: str) -> None:
    app = web.Application()
    app[WAITING] = []

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = aioredis.from_url(redis_url)
        yield
        await app[REDIS].aclose()

    app.cleanup_ctx.append(redis_ctx)
    bare.run(app, port, make_vote(stream))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
