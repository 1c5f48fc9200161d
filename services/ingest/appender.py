"""Coalesced appends: the Redis calls of concurrent requests share one round trip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

log = logging.getLogger("buzzer.ingest.appender")

Arg = str | int | bytes


class Overloaded(Exception):
    """Too many calls waiting for Redis in this process."""


class Unavailable(Exception):
    """Redis did not answer; the call may or may not have run."""


class Appender:
    """Queues script calls and sends everything queued in one event-loop turn as one
    pipeline; each caller's future resolves with its own reply.

    Calls are only ever scripts that are safe to re-run (the vote script is idempotent
    by vote id), which is what makes a resend after NOSCRIPT or a reconnect harmless.
    """

    def __init__(self, redis: Redis, max_inflight: int, max_pipelines: int = 16) -> None:
        self._redis = redis
        self._max_inflight = max_inflight
        # Pipelines in flight at once; past it, calls wait and go in the next, bigger one,
        # which is also what keeps the connection pool from running dry under a spike.
        self._max_pipelines = max_pipelines
        self._queue: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.inflight = 0
        self.flushes = 0
        self.sent = 0

    def submit(self, script: AsyncScript, keys: Sequence[Arg], args: Sequence[Arg]) -> asyncio.Future[Any]:
        if self.inflight >= self._max_inflight:
            raise Overloaded
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, fut))
        self.inflight += 1
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        busy = sum(1 for t in self._tasks if not t.done())
        if not self._queue or busy >= self._max_pipelines:
            return  # a finishing pipeline flushes what is queued
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, batch: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]]
    ) -> None:
        self.flushes += 1
        self.sent += len(batch)
        try:
            replies = await self._execute(batch)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # Redis restarted and lost its script cache: load, resend those calls.
                for script in {batch[i][0] for i in missing}:
                    script.sha = await self._redis.script_load(script.script)
                again = await self._execute([batch[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    replies[i] = r
        except (RedisError, OSError) as exc:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(Unavailable(str(exc)))
        except BaseException as exc:  # cancelled at shutdown: callers must not hang
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(Unavailable(repr(exc)))
            raise
        else:
            for (*_, fut), reply in zip(batch, replies, strict=True):
                if fut.done():
                    continue
                if isinstance(reply, Exception):
                    fut.set_exception(Unavailable(str(reply)))
                else:
                    fut.set_result(reply)
        finally:
            self.inflight -= len(batch)
            if self._queue and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _execute(
        self, batch: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]]
    ) -> list[Any]:
        # A pipeline by hand on one pooled connection: hiredis packs the commands in C,
        # ten times cheaper than redis-py's Python packer, which was the largest cost
        # of a vote. Error replies are kept per call, like pipeline(raise_on_error=False).
        data = b"".join(
            [pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))  # type: ignore[arg-type]
             for script, keys, args, _ in batch]
        )
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(data, check_health=False)
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            # The connection's read position is unknown now: never reuse it.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        return replies

    async def drain(self, timeout: float) -> None:
        """Wait for every queued call to be answered (graceful shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._queue or self._tasks:
            if self._queue and not self._tasks:
                self._flush()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await asyncio.wait(list(self._tasks), timeout=remaining)
