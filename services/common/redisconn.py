"""The one place a process opens Redis: one server, or a Redis Cluster.

``REDIS_URL=redis://host:6379/0`` is one server (the default). A ``redis+cluster://``
(or ``rediss+cluster://``) URL lists seed nodes, ``redis+cluster://h1:7000,h2:7000``;
the client discovers the rest of the cluster from any of them. Nothing here connects:
the clients connect on first use, inside the caller's cleanup context.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast
from urllib.parse import urlsplit

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig

SOCKET_TIMEOUT_S = 5.0
"""How long a client waits for a reply before it gives up on the connection (redis-py's
own default, made explicit so that the waits the settings allow stay under it)."""

AnyRedis = Redis | RedisCluster
"""What a process may hold; code that routes by node checks with :func:`is_cluster`."""

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class ResilientWrites(AbstractConnection):
    """A connection whose writes end the way the caller can act on.

    * Under uvloop, writing to a transport the peer already closed raises RuntimeError,
      and a connection torn down during redis-py's connect handshake writes to a writer
      that is already None (AttributeError); redis-py lets both through, so a killed
      node would turn into a 500 instead of the 503 every Redis outage must be: both
      become ``ConnectionError``.
    * redis-py writes each command through ``asyncio.wait_for`` when a socket timeout is
      set (5 s by default in the redis-py this project locks). On Python 3.11,
      ``wait_for`` returns the write's result and drops a cancel that arrives as the
      write completes (CPython gh-86296, fixed in 3.12). The task then goes on as if
      never told to stop: push's updates reader, cancelled at shutdown, read on for
      ever (CI hung 120 s in tests/integration/test_push_reader.py; one cancel in a
      few hundred did it). The dropped cancel is raised again here, after closing the
      connection, whose reply to the command just written would otherwise be read as
      the answer to the next.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            await super().send_packed_command(command, check_health)
        except (RuntimeError, AttributeError) as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection closed by the server: {exc}") from exc
        if task is not None and task.cancelling() > cancels:
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError


class ResilientConnection(ResilientWrites, Connection):
    """A TCP connection with :class:`ResilientWrites`'s writes."""


class ResilientSSLConnection(ResilientWrites, SSLConnection):
    """A TLS connection (``rediss://``) with :class:`ResilientWrites`'s writes."""


_RESILIENT: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: ResilientConnection,
    SSLConnection: ResilientSSLConnection,
}

REDIS_AWAY: tuple[type[Exception], ...] = (RedisError, OSError, RedisClusterException)
"""What a call raises when Redis is away, to be waited out or answered 503. redis-py's
cluster client raises ``RedisClusterException``, which is not a ``RedisError``, while
it rebuilds its slot map in a failover (``SlotNotCoveredError``) or finds no node to
ask: caught as ``(RedisError, OSError)`` it ended push's updates reader for good, and
viewers' counts froze (seen in tests/cluster/test_push_failover.py)."""


_STREAM_READS = ("XREAD", "XREADGROUP")


def stream_read_keys(args: tuple[Any, ...]) -> list[Any]:
    """The stream keys of an ``XREAD``/``XREADGROUP`` call (``args`` after the command):
    the first half of what follows ``STREAMS``, the rest being their ids."""
    for i, arg in enumerate(args):
        word = arg.decode() if isinstance(arg, bytes) else str(arg)
        if word.upper() == "STREAMS":
            rest = args[i + 1 :]
            return list(rest[: len(rest) // 2])
    return []


class Cluster(RedisCluster):
    """redis-py's cluster client, routing stream reads without asking a server.

    redis-py finds the keys of ``XREAD`` and ``XREADGROUP`` (``movablekeys``) by sending
    ``COMMAND GETKEYS`` to the client's default node, before every read. When that node
    is the primary that failed over, the question fails as a connection error outside the
    step that marks the topology for refresh, so every later read asks the dead node
    again: a push process stopped streaming for good (seen in
    tests/cluster/test_push_failover.py). The keys follow ``STREAMS``; finding them here
    also saves a round trip per read.
    """

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if str(command).upper() in _STREAM_READS:
            slots = {self.keyslot(k) for k in stream_read_keys(args)}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def seed_nodes(url: str) -> list[tuple[str, int]]:
    """The ``host:port`` seeds of a cluster URL (a missing port is 6379)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    seeds = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        seeds.append((host.strip("[]"), int(port or 6379)))
    return seeds


def connect(url: str, **kwargs: Any) -> Redis:
    """A client for ``url``; keyword arguments are redis-py connection options.

    Typed as ``Redis``: the cluster client offers the same commands, pipelines and
    scripts for everything this project sends (each call's keys share one slot), so
    the functions that take a client need no second signature. Code that must know
    the difference (the appender's transport) asks :func:`is_cluster`.
    """
    kwargs.setdefault("socket_timeout", SOCKET_TIMEOUT_S)
    if not is_cluster_url(url):
        pool = ConnectionPool.from_url(url, **kwargs)
        # The URL's scheme chose redis-py's class (TLS for rediss://); ours adds to it.
        resilient = _RESILIENT.get(pool.connection_class)
        if resilient is not None and "connection_class" not in kwargs:
            pool.connection_class = resilient
        return Redis.from_pool(pool)
    parts = urlsplit(url)
    opts: dict[str, Any] = dict(kwargs)
    if parts.username:
        opts.setdefault("username", parts.username)
    if parts.password:
        opts.setdefault("password", parts.password)
    if parts.scheme.startswith("rediss"):
        opts.setdefault("ssl", True)
    # The pool size is per node in the cluster client; connections are made on demand.
    opts.pop("health_check_interval", None)
    cluster = Cluster(
        startup_nodes=[ClusterNode(h, p) for h, p in seed_nodes(url)],
        # Slots whose primary is down must fail alone (503 for their votes), while the
        # other shards keep taking votes.
        require_full_coverage=False,
        # Its handshake is one more round trip per new connection, to a node that may
        # be dying; these notifications are for managed clusters moving endpoints.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        **opts,
    )
    # RedisCluster takes no connection class: nodes it discovers later are built from
    # these kwargs, the seed nodes were built already.
    resilient = ResilientSSLConnection if opts.get("ssl") else ResilientConnection
    cluster.connection_kwargs["connection_class"] = resilient
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = resilient
    return cast(Redis, cluster)


def connect_sync(url: str, **kwargs: Any) -> Any:
    """A blocking client for ``url`` (tools: the load test's audit), one server or a cluster."""
    import redis as redis_sync
    from redis.cluster import ClusterNode as SyncClusterNode
    from redis.cluster import RedisCluster as SyncRedisCluster

    if not is_cluster_url(url):
        return redis_sync.Redis.from_url(url, **kwargs)
    parts = urlsplit(url)
    return SyncRedisCluster(
        startup_nodes=[SyncClusterNode(h, p) for h, p in seed_nodes(url)],
        require_full_coverage=False,
        username=parts.username,
        password=parts.password,
        ssl=parts.scheme.startswith("rediss"),
        **kwargs,
    )


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


class ReplicasBehind(RedisError):
    """``WAIT`` returned before enough replicas confirmed."""


async def wait_replicas(client: Redis, key: str, replicas: int, timeout_ms: int) -> None:
    """Return once ``replicas`` replicas of the node holding ``key`` have everything that
    node executed so far; raise :class:`ReplicasBehind` past ``timeout_ms``.

    WAIT covers the writes made on its own connection, so one tiny write to a key of
    the same slot goes first on that connection: the WAIT then covers every write the
    node had executed before it, whichever connection made them.
    """
    payload = pack_command(("SET", f"{key}:ack", b"1", "PX", 60_000)) + pack_command(  # type: ignore[arg-type]
        ("WAIT", replicas, timeout_ms)  # type: ignore[arg-type]
    )
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(key)
        if node is None:
            raise ReplicasBehind(f"no primary serves {key}")
        conn = node.acquire_connection()
        try:
            reached = await _send_wait(conn, payload)
        finally:
            node.release(conn)
    else:
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            reached = await _send_wait(conn, payload)
        finally:
            await pool.release(conn)
    if reached < replicas:
        raise ReplicasBehind(f"WAIT reached {reached} of {replicas} replicas")


async def _send_wait(conn: Any, payload: bytes) -> int:
    try:
        await conn.send_packed_command(payload, check_health=False)
        await conn.read_response()
        return int(await conn.read_response())
    except BaseException:
        # The connection's read position is unknown now: never reuse it.
        await conn.disconnect()
        raise
