"""The connections every process opens (``services/common/redisconn.connect``): a cancel
redis-py's write drops on Python 3.11 is raised again, and the reply to the command
written then is never read as the answer to the next."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from buzzer.certs import make_cert
from buzzer.ports import free_port
from services.common.redisconn import (
    SOCKET_TIMEOUT_S,
    ResilientConnection,
    ResilientSSLConnection,
    ResilientWrites,
    connect,
)
from services.common.settings import (
    LONGEST_WAIT_MS,
    CommonSettings,
    IngestSettings,
    PushSettings,
    TallySettings,
)
from tests.support.faults import REDIS_SERVER

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class DropsACancel(Connection):
    """Writes the command, then leaves the task as Python 3.11's ``asyncio.wait_for``
    leaves it when a cancel arrives as the write completes (CPython gh-86296): the
    cancel requested and consumed, nothing raised. A real race hits one cancel in a few
    hundred; this one hits the write it is told to."""

    drop_next: ClassVar[bool] = False

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await super().send_packed_command(command, check_health)
        if DropsACancel.drop_next:
            DropsACancel.drop_next = False
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)


class ResilientDropsACancel(ResilientWrites, DropsACancel):
    pass


async def _get_with_a_dropped_cancel(connection_class: type[Connection]) -> tuple[Any, Any]:
    """(outcome of a GET whose write dropped a cancel, the next command's answer) on a
    pool of one connection, so the next command goes on the same connection if kept."""
    client = Redis.from_pool(
        ConnectionPool.from_url(REDIS_URL, connection_class=connection_class, max_connections=1)
    )
    key = f"test-connect-{uuid.uuid4().hex[:8]}"
    try:
        await client.set(key, "the value")
        DropsACancel.drop_next = True
        task = asyncio.create_task(client.get(key))
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the GET neither answered nor ended"
        outcome = "cancelled" if task.cancelled() else task.result()
        return outcome, await client.echo("the next command")
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_cancel_the_write_dropped_is_raised_and_the_connection_not_reused() -> None:
    outcome, following = await _get_with_a_dropped_cancel(ResilientDropsACancel)
    assert outcome == "cancelled"
    assert following == b"the next command"


async def test_without_it_the_cancelled_task_goes_on() -> None:
    """What redis-py alone does with the same dropped cancel: the cancelled GET answers
    as if never cancelled, so a loop told to stop reads on."""
    outcome, following = await _get_with_a_dropped_cancel(DropsACancel)
    assert outcome == b"the value"
    assert following == b"the next command"


def test_every_client_connect_makes_uses_the_resilient_connections() -> None:
    plain = connect("redis://127.0.0.1:6379/0")
    tls = connect("rediss://127.0.0.1:6380/0")
    assert plain.connection_pool.connection_class is ResilientConnection
    assert tls.connection_pool.connection_class is ResilientSSLConnection
    for url, expected in (
        ("redis+cluster://127.0.0.1:7000", ResilientConnection),
        ("rediss+cluster://127.0.0.1:7000", ResilientSSLConnection),
    ):
        cluster = connect(url)
        assert isinstance(cluster, RedisCluster)
        assert cluster.connection_kwargs["connection_class"] is expected
        nodes = cluster.nodes_manager.startup_nodes.values()
        assert {node.connection_class for node in nodes} == {expected}


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A ``redis-server`` of the test's own that speaks TLS only: (port, its certificate)."""
    pem = make_cert(tmp_path, "ecdsa")
    port = free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(pem),
            "--tls-key-file",
            str(pem),
            "--tls-auth-clients",
            "no",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, pem
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_tls_redis_is_reached_and_its_certificate_checked(
    tls_redis: tuple[int, Path],
) -> None:
    port, pem = tls_redis
    trusted = connect(f"rediss://localhost:{port}/0", ssl_ca_certs=str(pem))
    stranger = connect(f"rediss://localhost:{port}/0")
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    await trusted.set("tls", "reached")
                    break
                except RedisConnectionError:
                    await asyncio.sleep(0.05)  # still starting
        assert await trusted.get("tls") == b"reached"
        assert trusted.connection_pool.connection_class is ResilientSSLConnection
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.get("tls")
    finally:
        await trusted.aclose()
        await stranger.aclose()


@pytest.mark.parametrize(
    ("cls", "env"),
    [
        (IngestSettings, "BUZZER_ACK_TIMEOUT_MS"),
        (TallySettings, "BUZZER_BLOCK_MS"),
        (PushSettings, "BUZZER_XREAD_BLOCK_MS"),
    ],
)
def test_a_wait_past_the_socket_timeout_is_refused_at_start(
    cls: type[CommonSettings], env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env, str(int(SOCKET_TIMEOUT_S * 1000)))
    with pytest.raises(ValidationError) as refused:
        cls(admin_token="a", token_secret="s" * 32)
    assert env.removeprefix("BUZZER_").lower() in str(refused.value)
    monkeypatch.setenv(env, str(LONGEST_WAIT_MS))
    cls(admin_token="a", token_secret="s" * 32)


async def test_the_longest_wait_allowed_ends_as_an_answer_not_a_timeout() -> None:
    """A blocking read for the longest the settings allow gets Redis's empty answer;
    one past the socket timeout is cut off (what the bound keeps the settings from)."""
    client = connect(REDIS_URL)
    stream = f"test-connect-{uuid.uuid4().hex[:8]}"
    try:
        assert await client.xread({stream: "$"}, block=LONGEST_WAIT_MS) in (None, [], {})
        with pytest.raises(RedisTimeoutError):
            await client.xread({stream: "$"}, block=int(SOCKET_TIMEOUT_S * 1000) + 500)
    finally:
        await client.aclose()
