"""The one reader of the updates stream per push process: ``XREAD BLOCK`` from the
stream's end at start, each entry's payload handed to a callback (the hub's fan-out)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from services.common.redisconn import REDIS_AWAY

log = logging.getLogger("buzzer.push")


def _reraise_cancel(exc: BaseException) -> None:
    """redis-py can turn a cancellation that lands mid-read into a connection error:
    retrying would swallow the cancel, and a push process told to stop would hang in its
    cleanup (seen as `bench push`'s TimeoutError at shutdown)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


class UpdatesReader:
    """:param redis: client
    :param stream: the updates stream key
    :param on_update: called with each entry's ``d`` field, in stream order
    """

    def __init__(self, redis: Redis, stream: str, on_update: Callable[[bytes], None]) -> None:
        self.redis = redis
        self.stream = stream
        self.on_update = on_update

    async def run(self, block_ms: int = 1000, count: int = 1000) -> None:
        """Read until cancelled; Redis being away is waited out with a growing backoff."""
        last = await self._stream_end()
        backoff = 0.1
        while True:
            try:
                reply: Any = await self.redis.xread(
                    {self.stream: last}, count=count, block=block_ms
                )
                backoff = 0.1
            except REDIS_AWAY as exc:
                _reraise_cancel(exc)
                log.warning(
                    "updates stream unavailable", extra={"error": str(exc), "retry_s": backoff}
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    data = fields.get(b"d")
                    if data is not None:
                        self.on_update(data)

    async def _stream_end(self) -> bytes | str:
        # Not "$" on every call: entries added between two XREADs would be lost.
        while True:
            try:
                tail: Any = await self.redis.xrevrange(self.stream, count=1)
                return tail[0][0] if tail else "0-0"
            except REDIS_AWAY as exc:
                _reraise_cancel(exc)
                log.warning("redis unavailable at start", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
