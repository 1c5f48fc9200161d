"""Fault-injection helpers: a private Redis we may kill, a TCP proxy we may cut, a vote
driver that records every answer, and audits of what Redis holds afterwards.

Nothing here touches the shared Redis at 6379 or stops the shared PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from buzzer.ports import free_port
from services.common.messages import Keys
from tests.support.stack import RunningStack, api, create_open_poll

REDIS_SERVER = "/usr/bin/redis-server"


# --------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A ``redis-server`` of our own on a free port, with its own directory and AOF."""

    def __init__(self, directory: Path, appendfsync: str = "always") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self._log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not up in {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or fsync anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 20) -> str:
        if not self._log.exists():
            return "(no log)"
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def private_redis(directory: Path, appendfsync: str = "always") -> Iterator[PrivateRedis]:
    r = PrivateRedis(directory, appendfsync)
    r.start()
    try:
        yield r
    finally:
        r.stop()


# --------------------------------------------------------------------------- TCP proxy


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, on its own thread and event loop.

    ``cut()`` resets every open connection and stops listening, so new connections are
    refused (what a client sees when the server is down); ``restore()`` listens again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_w))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers.discard(writer)
        self._writers.discard(up_w)


# --------------------------------------------------------------------------- votes


@dataclass
class VoteLog:
    """Every answer a driver saw: the ids answered 202 (with when), and the rest."""

    acked: dict[str, float] = field(default_factory=dict)
    """vote id -> monotonic time of its first 202."""
    replayed: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    """HTTP status (0: connection error or timeout) -> how many."""
    tried: set[str] = field(default_factory=set)
    missing_retry_after: int = 0
    latencies: dict[int, list[float]] = field(default_factory=dict)

    def record(self, status: int, seconds: float) -> None:
        self.statuses[status] += 1
        self.latencies.setdefault(status, []).append(seconds)


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


async def post_vote(
    session: aiohttp.ClientSession,
    base: str,
    poll: str,
    token: str,
    vote_id: str,
    log: VoteLog,
    option: str = "o0",
    count: int = 1,
    timeout: float = 5.0,
) -> int:
    """One attempt; returns the status (0 when the connection failed)."""
    log.tried.add(vote_id)
    start = time.monotonic()
    try:
        async with session.post(
            f"{base}/v1/polls/{poll}/votes",
            json={"option": option, "count": count, "vote_id": vote_id},
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            body = await r.read()
            status = r.status
            if status == 202:
                if vote_id not in log.acked:
                    log.acked[vote_id] = time.monotonic()
                if r.headers.get("Idempotent-Replayed") == "true":
                    log.replayed += 1
            elif status in (429, 503) and "Retry-After" not in r.headers:
                log.missing_retry_after += 1
            assert r.content_type == "application/json", (status, body[:200])
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        status = 0
    log.record(status, time.monotonic() - start)
    return status


async def vote_until_acked(
    session: aiohttp.ClientSession,
    bases: list[str],
    poll: str,
    token: str,
    log: VoteLog,
    stop: asyncio.Event,
    vote_id: str | None = None,
    pause: float = 0.05,
) -> str:
    """What the app does: one vote id, resent (to the next address) until a 202 or ``stop``."""
    vid = vote_id or str(uuid.uuid4())
    i = 0
    while True:
        status = await post_vote(session, bases[i % len(bases)], poll, token, vid, log)
        if status == 202 or stop.is_set():
            return vid
        assert status in (0, 429, 503), status
        i += 1
        await asyncio.sleep(pause)


async def new_devices(session: aiohttp.ClientSession, base: str, n: int) -> list[str]:
    return [
        (await api(session, "POST", f"{base}/v1/devices", expect=201))["token"] for _ in range(n)
    ]


async def open_poll(session: aiohttp.ClientSession, rs: RunningStack, **rules: Any) -> str:
    poll = await create_open_poll(session, rs, options=2, **rules)
    return str(poll["id"])


# --------------------------------------------------------------------------- audits


async def dedupe_ids(redis_url: str, prefix: str, poll: str) -> set[str]:
    """Vote ids Redis accepted for ``poll``: the dedupe key ``vid:<poll>:<device>:<id>``
    is written by vote_batch.lua in the same atomic step as the append, and unlike the
    stream entry it is not trimmed once applied."""
    client = aioredis.from_url(redis_url)
    try:
        out = set()
        async for key in client.scan_iter(match=f"{prefix}:*:vid:{poll}:*", count=1000):
            out.add(key.decode().rsplit(":", 1)[1])
        return out
    finally:
        await client.aclose()


async def counted(redis_url: str, prefix: str, poll: str, partitions: int = 4) -> int:
    keys = Keys(prefix=prefix, partitions=partitions)
    client = aioredis.from_url(redis_url)
    try:
        total = 0
        for p in range(partitions):
            total += sum(int(v) for v in (await client.hgetall(keys.counts(p, poll))).values())
        return total
    finally:
        await client.aclose()


async def backlog(redis_url: str, prefix: str, partitions: int = 4) -> int:
    keys = Keys(prefix=prefix, partitions=partitions)
    client = aioredis.from_url(redis_url)
    try:
        total = 0
        for p in range(partitions):
            try:
                groups = await client.xinfo_groups(keys.votes(p))
            except Exception:
                continue
            # As ingest's bound counts it: the slowest group (tally or archiver) of each
            # partition, since each group holds the same entries.
            total += max(
                (int(g.get("lag") or 0) + int(g.get("pending") or 0) for g in groups), default=0
            )
        return total
    finally:
        await client.aclose()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def child(rs: RunningStack, name: str) -> subprocess.Popen[bytes]:
    for c in rs.stack.children:
        if c.name == name:
            assert c.proc is not None
            return c.proc
    raise KeyError(name)


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5), **kw) as r:
        return r.status, await r.json(content_type=None)


def log_files(rs: RunningStack) -> list[Path]:
    return sorted((rs.stack.state_dir / "logs").glob("*.log"))


def env_flag(name: str, default: float) -> float:
    return float(os.environ.get(name, default))
