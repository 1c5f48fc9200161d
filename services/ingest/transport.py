"""How the appender's calls reach Redis: one hand-packed pipeline per node per flush.

The appender decides WHAT to send (one packed ``vote_batch.lua`` call per partition);
a transport decides HOW: on one server, all calls go as one pipeline on one of the
transport's own connections, written before ``execute`` returns; on a Redis Cluster,
the calls are grouped by the primary that owns their partition's slot, and each primary
gets one pipeline, all sent concurrently. With
``ack_replicas`` > 0 every pipeline ends with one ``WAIT``, so its replies count only
once that many replicas hold its writes.

Replies come back per partition, an exception standing for a partition whose reply
is unknown or refused; the appender answers those votes 503, and the client's retry
with the same vote id is safe because the script is idempotent by vote id.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import Any, Protocol

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from services.common.redisconn import REDIS_AWAY, AnyRedis

log = logging.getLogger("buzzer.ingest.transport")

Call = tuple[str, bytes]
"""A key of the partition (its slot routes the call) and the packed command."""

REDIRECTS = 3
"""MOVED/ASK hops followed for one call within one flush; past that it is a 503."""


class NotReplicated(RedisError):
    """WAIT timed out: the writes may live on the primary alone. The vote gets 503."""


class SlotUnavailable(RedisError):
    """No reachable primary serves the slot now (failover in progress)."""


class Transport(Protocol):
    def execute(self, calls: dict[int, Call]) -> Awaitable[dict[int, Any]]:
        """The replies of ``calls``, per partition. Whatever can be written at once is
        written before this returns (:class:`SingleNode`); the rest, when awaited."""
        ...

    async def aclose(self) -> None: ...


def _wait_tail(ack_key: str, replicas: int, timeout_ms: int) -> tuple[bytes, int]:
    # WAIT covers the writes made on this connection. A pipeline that only replays
    # earlier votes (retries answered from the dedupe key) writes nothing, so WAIT
    # would return at once although the original write may still sit on the primary
    # alone; one tiny write per pipeline makes WAIT cover everything the primary had
    # executed before, the original included. Two extra replies to read.
    return (
        pack_command(("SET", ack_key, b"1", "PX", 60_000))  # type: ignore[arg-type]
        + pack_command(("WAIT", replicas, timeout_ms)),  # type: ignore[arg-type]
        2,
    )


def _check_wait(replies: list[Any], replicas: int) -> NotReplicated | None:
    reached = replies[-1]
    if isinstance(reached, Exception) or int(reached) < replicas:
        return NotReplicated(f"WAIT reached {reached!r} of {replicas} replicas")
    return None


def ack_key(slot_key: str) -> str:
    # Same hash tag as the partition's keys, so the same slot and node.
    return f"{slot_key}:ack"


def write_now(conn: Connection, payload: bytes) -> bool | None:
    """Write ``payload`` on ``conn`` in this very step if it is connected: True. False:
    it is not connected, None: the write failed; either way the caller connects afresh
    and sends it. The stream buffers what the socket does not take at once."""
    writer = conn._writer
    if writer is None or writer.transport.is_closing():
        return False
    try:
        writer.write(payload)
    except (RuntimeError, OSError):
        # uvloop's write to a transport whose peer just went away.
        return None
    return True


async def _read(conn: Connection, n: int) -> list[Any]:
    """Read ``n`` replies, error replies kept, under one deadline (the connection's
    socket timeout) for them all, instead of redis-py's one per reply: a flush reads a
    reply per partition, and each deadline is a timer armed and cancelled on the event
    loop. Past it, ``TimeoutError`` (an ``OSError``) is the 503 of a Redis that stopped
    answering."""
    try:
        async with asyncio.timeout(conn.socket_timeout):
            out: list[Any] = []
            for _ in range(n):
                try:
                    out.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:
                    out.append(exc)
            return out
    except BaseException:
        # The connection's read position is unknown now: never reuse it as it is.
        await conn.disconnect()
        raise


async def _pipeline(conn: Connection, payload: bytes, n: int) -> list[Any]:
    """Send ``payload`` (``n`` commands), connecting first if need be, and read its
    ``n`` replies (:func:`_read`)."""
    try:
        async with asyncio.timeout(conn.socket_timeout):
            await conn.send_packed_command(payload, check_health=False)
    except BaseException:
        await conn.disconnect()
        raise
    return await _read(conn, n)


async def _replies_of(conn: Connection, payload: bytes, n: int, written: bool | None) -> list[Any]:
    """The ``n`` replies of ``payload`` on ``conn``, given what :func:`write_now` made of
    it: written already, or sent now (on a fresh connection after a failed write)."""
    if written:
        return await _read(conn, n)
    if written is None:
        await conn.disconnect()
    return await _pipeline(conn, payload, n)


class SingleNode:
    """One server: the whole flush is one pipeline on one connection.

    The pipeline is written to the socket before :meth:`execute` returns whenever one
    of its connections is idle and connected (the usual case), and only the replies are
    awaited. The appender flushes a full batch from inside the handler that filled it,
    so Redis runs that batch's script while this process goes on parsing the requests
    behind it; written at the end of the event-loop turn instead, every batch of a turn
    waited for the whole turn, and Redis and ingest took turns being idle (figures in
    :class:`~services.ingest.appender.Appender`).

    The transport keeps its own connections, made by the client's pool (same class,
    address, credentials and TLS) and at most one per pipeline in flight, which the
    appender bounds. redis-py has no synchronous send, so the fast path writes to the
    connection's stream writer itself (``_writer``: a test fails if redis-py renames
    it); a connection that is not connected takes the awaited path, which connects.
    """

    def __init__(self, redis: Redis, ack_replicas: int = 0, ack_timeout_ms: int = 500) -> None:
        self._redis = redis
        self._replicas = ack_replicas
        self._timeout_ms = ack_timeout_ms
        self._idle: list[Connection] = []

    def execute(self, calls: dict[int, Call]) -> Awaitable[dict[int, Any]]:
        order = list(calls)
        payload = b"".join(c for _, c in calls.values())
        extra = 0
        if self._replicas:
            tail, extra = _wait_tail(ack_key(calls[order[0]][0]), self._replicas, self._timeout_ms)
            payload += tail
        n = len(order) + extra
        conn = self._idle.pop() if self._idle else self._redis.connection_pool.make_connection()
        return self._replies(conn, order, payload, n, write_now(conn, payload))

    async def _replies(
        self, conn: Connection, order: list[int], payload: bytes, n: int, written: bool | None
    ) -> dict[int, Any]:
        try:
            replies = await _replies_of(conn, payload, n, written)
        finally:
            # Disconnected on error: its next use connects afresh.
            self._idle.append(conn)
        if n > len(order):
            failed = _check_wait(replies, self._replicas)
            if failed is not None:
                return dict.fromkeys(order, failed)
        return dict(zip(order, replies, strict=False))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()


Sent = dict[ClusterNode, tuple[list[int], Awaitable[list[Any]]]]
"""Per primary: its partitions and the replies of their pipeline, once awaited."""


class ClusterNodes:
    """A Redis Cluster: one pipeline per primary, sent concurrently; redirections followed.

    As on one server, the first pipeline to each primary is written before
    :meth:`execute` returns wherever that primary's connection is connected (after the
    first call has loaded the slot map); redirections and reconnections are awaited.
    """

    def __init__(
        self, cluster: RedisCluster, ack_replicas: int = 0, ack_timeout_ms: int = 500
    ) -> None:
        self._cluster = cluster
        self._replicas = ack_replicas
        self._timeout_ms = ack_timeout_ms
        self._refreshing: asyncio.Task[None] | None = None
        self._ready = False
        self.redirects = 0
        self.refreshes = 0

    def execute(self, calls: dict[int, Call]) -> Awaitable[dict[int, Any]]:
        if not self._ready:
            return self._execute(calls, None)
        answered: dict[int, Any] = {}
        try:
            groups = self._group(calls, {}, answered)
        except RedisError:  # the slot map is being rebuilt: the awaited path answers
            return self._execute(calls, None)
        sent: Sent = {
            node: (ps, self._send(node, ps, calls, {}, now=True)) for node, ps in groups.items()
        }
        return self._execute(calls, (answered, sent))

    def _group(
        self, todo: dict[int, Call], asking: dict[int, ClusterNode], replies: dict[int, Any]
    ) -> dict[ClusterNode, list[int]]:
        """The partitions of ``todo`` by the primary that serves them; those no primary
        serves now are answered in ``replies``."""
        groups: dict[ClusterNode, list[int]] = {}
        for p, (key, _) in todo.items():
            node = asking.get(p)
            if node is None:
                try:
                    node = self._cluster.get_node_from_key(key)
                except SlotNotCoveredError as exc:
                    replies[p] = SlotUnavailable(str(exc))
                    continue
                if node is None:
                    replies[p] = SlotUnavailable(key)
                    continue
            groups.setdefault(node, []).append(p)
        return groups

    async def _execute(
        self, calls: dict[int, Call], first: tuple[dict[int, Any], Sent] | None
    ) -> dict[int, Any]:
        if first is None:
            await self._cluster.initialize()
            self._ready = True
        replies: dict[int, Any] = {}
        todo = dict(calls)
        asking: dict[int, ClusterNode] = {}
        for hop in range(REDIRECTS + 1):
            if not todo:
                break
            if hop == 0 and first is not None:
                answered, sent = first
                replies.update(answered)
                groups = {node: ps for node, (ps, _) in sent.items()}
                pending = [replies_of for _, replies_of in sent.values()]
            else:
                groups = self._group(todo, asking, replies)
                pending = [self._send(node, ps, todo, asking) for node, ps in groups.items()]
            results = await asyncio.gather(*pending, return_exceptions=True)
            retry: dict[int, Call] = {}
            next_asking: dict[int, ClusterNode] = {}
            for (_node, ps), result in zip(groups.items(), results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    # The node is gone or hung: its calls may or may not have run;
                    # answer 503 and let the slot map catch up with the failover.
                    self._refresh()
                    for p in ps:
                        replies[p] = SlotUnavailable(f"{_node.name}: {result!r}")
                    continue
                for p, reply in zip(ps, result, strict=True):
                    if isinstance(reply, MovedError):
                        # The slot lives elsewhere for good (failover or resharding).
                        await self._cluster.nodes_manager.move_slot(reply)
                        self.redirects += 1
                        retry[p] = todo[p]
                    elif isinstance(reply, AskError):
                        # The slot is migrating: this one call goes to the target node.
                        target = self._cluster.get_node(host=reply.host, port=reply.port)
                        if target is None:
                            target = ClusterNode(
                                reply.host,
                                reply.port,
                                **self._cluster.nodes_manager.connection_kwargs,
                            )
                        next_asking[p] = target
                        self.redirects += 1
                        retry[p] = todo[p]
                    elif isinstance(reply, (ClusterDownError, TryAgainError)):
                        self._refresh()
                        replies[p] = SlotUnavailable(str(reply))
                    else:
                        replies[p] = reply
            todo, asking = retry, next_asking
        for p in todo:
            replies[p] = SlotUnavailable("too many redirections")
        return replies

    def _send(
        self,
        node: ClusterNode,
        ps: list[int],
        calls: dict[int, Call],
        asking: dict[int, ClusterNode],
        now: bool = False,
    ) -> Awaitable[list[Any]]:
        """The replies of ``ps``'s calls on ``node``, in order; with ``now``, written
        before this returns if a connected connection is free."""
        chunks: list[bytes] = []
        index: list[int | None] = []  # reply position -> partition (None: ASKING's OK)
        for p in ps:
            if p in asking:
                chunks.append(pack_command(("ASKING",)))
                index.append(None)
            chunks.append(calls[p][1])
            index.append(p)
        extra = 0
        if self._replicas:
            tail, extra = _wait_tail(ack_key(calls[ps[0]][0]), self._replicas, self._timeout_ms)
            chunks.append(tail)
        payload = b"".join(chunks)
        conn: Connection | None = None
        written: bool | None = False
        if now:
            try:
                conn = node.acquire_connection()
            except RedisError:  # none free: the awaited path tries again and answers
                pass
            else:
                written = write_now(conn, payload)
        return self._replies(node, conn, index, extra, payload, written)

    async def _replies(
        self,
        node: ClusterNode,
        conn: Connection | None,
        index: list[int | None],
        extra: int,
        payload: bytes,
        written: bool | None,
    ) -> list[Any]:
        if conn is None:  # none was taken when the pipeline was built
            conn = node.acquire_connection()
        try:
            raw = await _replies_of(conn, payload, len(index) + extra, written)
        finally:
            node.release(conn)
        if extra:
            failed = _check_wait(raw, self._replicas)
            if failed is not None:
                return [failed] * sum(1 for i in index if i is not None)
        return [r for i, r in zip(index, raw, strict=False) if i is not None]

    def _refresh(self) -> None:
        # One slot-map refresh at a time, off the vote path: until it lands, calls for
        # the failed slots keep answering 503 quickly instead of piling up behind it.
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._do_refresh())

    async def _do_refresh(self) -> None:
        self.refreshes += 1
        try:
            await self._cluster.nodes_manager.initialize()
        except REDIS_AWAY as exc:
            log.warning("cluster slot map refresh failed", extra={"error": str(exc)})
        # A refresh right after a node died may still list it as primary (the failover
        # takes about twice cluster-node-timeout); the next failure refreshes again.
        await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)


def transport_for(
    redis: AnyRedis | Redis, ack_replicas: int = 0, ack_timeout_ms: int = 500
) -> Transport:
    if isinstance(redis, RedisCluster):
        return ClusterNodes(redis, ack_replicas, ack_timeout_ms)
    return SingleNode(redis, ack_replicas, ack_timeout_ms)
