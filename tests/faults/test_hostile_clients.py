"""Slow and hostile clients, through the generated HAProxy (as in production) and
straight at ingest: slow headers (slowloris), slow bodies, oversized headers and
bodies. Websocket clients that never read are push's: see
tests/integration/test_push_protocol.py (slow client tests)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support import eventually
from tests.support.faults import VoteLog, new_devices, open_poll, p99, post_vote
from tests.support.stack import RunningStack, local_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]

HTTP_REQUEST_TIMEOUT_S = 10  # lb/render.py: `timeout http-request 10s`


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with local_stack(
        tmp_path_factory.mktemp("hostile"),
        database="buzzer_test_faults",
        ingest=1,
        haproxy=True,
        extra_env={"BUZZER_DEVICE_RATE_PER_S": "100000"},
    ) as rs:
        asyncio.run(_wait_front(rs))
        yield rs


async def _wait_front(rs: RunningStack) -> None:
    async with aiohttp.ClientSession() as s:

        async def up() -> bool:
            try:
                async with s.get(f"{rs.url}/v1/openapi.json") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(up, timeout=20)


class Slow:
    """A raw connection that sends a request a few bytes at a time."""

    def __init__(self, port: int, head: bytes, drip: bytes) -> None:
        self.port, self.head, self.drip = port, head, drip
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.answer = b""
        self.closed_at: float | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.head)
        await self.writer.drain()

    async def trickle(self, stop: asyncio.Event, every: float = 1.0) -> None:
        assert self.reader is not None and self.writer is not None
        reading = asyncio.create_task(self.reader.read(4096))
        try:
            while not stop.is_set():
                done, _ = await asyncio.wait({reading}, timeout=every)
                if done:
                    self.answer = reading.result()
                    self.closed_at = time.monotonic()
                    return
                with contextlib.suppress(OSError):
                    self.writer.write(self.drip)
                    await self.writer.drain()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading
            self.writer.transport.abort()


async def slow_attack(rs: RunningStack) -> None:
    async with aiohttp.ClientSession() as s:
        poll = await open_poll(s, rs)
        tokens = await new_devices(s, rs.url, 10)
    ingest_port = rs.stack.ingest_ports[0]
    loris = (b"POST /v1/polls/" + poll.encode() + b"/votes HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n")
    body_head = (
        b"POST /v1/polls/" + poll.encode() + b"/votes HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + tokens[0].encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 300\r\n\r\n{"
    )
    front = [Slow(rs.stack.http_port, *loris) for _ in range(60)]
    front_bodies = [Slow(rs.stack.http_port, body_head, b" ") for _ in range(30)]
    direct = [Slow(ingest_port, *loris) for _ in range(30)]
    direct_bodies = [Slow(ingest_port, body_head, b" ") for _ in range(30)]
    attackers = front + front_bodies + direct + direct_bodies
    for a in attackers:
        await a.open()
    opened = time.monotonic()
    stop = asyncio.Event()
    trickling = [asyncio.create_task(a.trickle(stop)) for a in attackers]
    try:
        # Normal clients, through HAProxy and straight at ingest, are served as usual.
        log = VoteLog()
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> None:
                base = rs.url if i % 2 else f"http://127.0.0.1:{ingest_port}"
                assert await post_vote(s, base, poll, tokens[i % 10], str(uuid.uuid4()), log) == 202

            for _ in range(10):
                await asyncio.gather(*(one(i) for i in range(20)))
        assert log.statuses == {202: 200}, log.statuses
        assert p99(log.latencies[202]) < 1.0, p99(log.latencies[202])

        # HAProxy closes every slow header, and (it buffers the request body before
        # picking a server) every slow body, with 408 after `timeout http-request`.
        async def front_closed() -> bool:
            return all(a.closed_at is not None for a in front + front_bodies)

        await eventually(front_closed, timeout=HTTP_REQUEST_TIMEOUT_S + 10)
        for a in front + front_bodies:
            assert a.answer.startswith(b"HTTP/1.1 408"), a.answer[:100]
        assert (
            max(a.closed_at or 0 for a in front + front_bodies) - opened
            < HTTP_REQUEST_TIMEOUT_S + 5
        )
        # Still responsive afterwards.
        async with aiohttp.ClientSession() as s:
            assert await post_vote(s, rs.url, poll, tokens[1], str(uuid.uuid4()), log) == 202
        # Documented limit (docs/guarantees.md): ingest on its own times out neither
        # slow headers nor slow bodies; they only hold a connection, bounded by maxconn.
        assert not any(a.closed_at for a in direct + direct_bodies)
    finally:
        stop.set()
        await asyncio.gather(*trickling)


def test_slowloris_and_slow_bodies_leave_normal_clients_served(stack: RunningStack) -> None:
    asyncio.run(slow_attack(stack))


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.transport.abort()


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def oversized(rs: RunningStack) -> None:
    async with aiohttp.ClientSession() as s:
        poll = await open_poll(s, rs)
        token = (await new_devices(s, rs.url, 1))[0]
    path = f"/v1/polls/{poll}/votes".encode()
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n"
    for port in (rs.stack.http_port, rs.stack.ingest_ports[0]):
        # Headers over the limits: a 4xx from the HTTP parser (aiohttp 8 KiB per line,
        # HAProxy its buffer), before any application code runs.
        for header in (
            b"X-Big: " + b"a" * 9_000 + b"\r\n",
            b"X-Big: " + b"a" * 40_000 + b"\r\n",
            b"".join(b"X-H%d: v\r\n" % i for i in range(300)),
        ):
            status, _, _ = split(
                await raw(
                    port,
                    b"POST "
                    + path
                    + b" HTTP/1.1\r\nHost: x\r\n"
                    + auth
                    + header
                    + b"Content-Length: 2\r\n\r\n{}",
                )
            )
            assert status in (400, 413, 431), status
        # Bodies over the 4 KiB limit: 413, JSON naming the field, with or without a length.
        big = (
            b'{"option": "o0", "vote_id": "'
            + str(uuid.uuid4()).encode()
            + b'", "x": "'
            + b"a" * 100_000
            + b'"}'
        )
        for framing in (
            b"Content-Length: %d\r\n\r\n" % len(big) + big,
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n",
        ):
            status, headers, body = split(
                await raw(
                    port,
                    b"POST "
                    + path
                    + b" HTTP/1.1\r\nHost: x\r\n"
                    + auth
                    + b"Content-Type: application/json\r\n"
                    + framing,
                )
            )
            assert status == 413, (status, body[:200])
            assert headers["content-type"].startswith("application/json")
            assert b'"error":"body_too_large"' in body and b'"field":"body"' in body
            assert headers["x-content-type-options"] == "nosniff"
    async with aiohttp.ClientSession() as s:
        log = VoteLog()
        for base in (rs.url, rs.ingest_urls[0]):
            assert await post_vote(s, base, poll, token, str(uuid.uuid4()), log) == 202


def test_oversized_headers_and_bodies_are_refused(stack: RunningStack) -> None:
    asyncio.run(oversized(stack))
