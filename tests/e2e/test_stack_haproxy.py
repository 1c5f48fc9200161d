"""The real stack behind the real, generated HAProxy: votes over plain HTTP and TLS,
websockets through it, and an ingest process SIGKILLed under load."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_pipeline import pg_totals, redis_counts
from tests.support import eventually
from tests.support.haproxy import connector
from tests.support.stack import RunningStack, api, create_open_poll, local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the local stack's certificate is self-signed
    return ctx


async def vote(
    session: aiohttp.ClientSession,
    base: str,
    poll: str,
    token: str,
    option: str,
    ssl_ctx: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    body = {"option": option, "vote_id": str(uuid.uuid4()), "count": 2}
    async with session.post(
        f"{base}/v1/polls/{poll}/votes",
        json=body,
        ssl=ssl_ctx,
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


async def plain_tls_and_websocket(rs: RunningStack) -> None:
    http = rs.url
    https = f"https://127.0.0.1:{rs.stack.https_port}"
    ctx = tls_context()
    async with aiohttp.ClientSession(connector=connector()) as s:
        poll = await create_open_poll(s, rs, options=2)
        pid = poll["id"]
        token = (await api(s, "POST", f"{http}/v1/devices", expect=201))["token"]
        async with s.ws_connect(f"ws://127.0.0.1:{rs.stack.http_port}/v1/polls/{pid}/live") as ws:
            snapshot = await ws.receive_json(timeout=10)
            assert snapshot["poll"] == pid
            assert snapshot["counts"] == {"o0": 0, "o1": 0}
            assert (await vote(s, http, pid, token, "o0"))["accepted"] == 2
            assert (await vote(s, https, pid, token, "o1", ctx))["accepted"] == 2
            deadline = time.monotonic() + 15
            last = snapshot
            while last["total"] < 4 and time.monotonic() < deadline:
                last = await ws.receive_json(timeout=15)
            assert last["counts"] == {"o0": 2, "o1": 2}
        # The same websocket through the TLS frontend.
        async with s.ws_connect(
            f"wss://127.0.0.1:{rs.stack.https_port}/v1/polls/{pid}/live", ssl=ctx
        ) as ws:
            snap = await ws.receive_json(timeout=10)
            assert snap["total"] == 4
        async with s.get(f"{https}/v1/polls/{pid}/tally", ssl=ctx) as r:
            assert (await r.json())["total"] == 4


def test_votes_and_websockets_over_plain_and_tls(tmp_path: Path) -> None:
    with local_stack(tmp_path, database="buzzer_test_lb", ingest=2, haproxy=True, push=True) as rs:
        asyncio.run(plain_tls_and_websocket(rs))


async def kill_under_load(rs: RunningStack) -> None:
    base = rs.url
    async with aiohttp.ClientSession() as s:
        poll = await create_open_poll(s, rs, options=4)
        tokens = [
            (await api(s, "POST", f"{base}/v1/devices", expect=201))["token"] for _ in range(64)
        ]
    pid = poll["id"]
    accepted: Counter[str] = Counter()
    failures_seen = Counter[str]()
    replays = [0]
    stop = asyncio.Event()

    async def client(i: int) -> None:
        # What the app does: on any failure, resend the same vote id after a backoff.
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            while not stop.is_set():
                n += 1
                body = {"option": f"o{(i + n) % 4}", "vote_id": str(uuid.uuid4()), "count": 1}
                for attempt in range(40):
                    try:
                        async with s.post(
                            f"{base}/v1/polls/{pid}/votes",
                            json=body,
                            headers={"Authorization": f"Bearer {tokens[i]}"},
                        ) as r:
                            if r.status == 202:
                                data = await r.json()
                                # A replay answers a retry whose first attempt was
                                # appended but whose answer was lost with the process:
                                # it counts, once, like any other accepted vote.
                                replay = r.headers.get("Idempotent-Replayed") == "true"
                                assert not (replay and attempt == 0), "a first attempt replayed"
                                accepted[body["option"]] += data["accepted"]
                                replays[0] += replay
                                break
                            failures_seen[str(r.status)] += 1
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        failures_seen[type(exc).__name__] += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
                else:
                    raise AssertionError(f"vote never accepted: {body}")

    from lb.runtime import RuntimeApi

    runtime = RuntimeApi(rs.stack.state_dir.resolve() / "haproxy.sock")
    tasks = [asyncio.create_task(client(i)) for i in range(32)]

    def accepted_at_least(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return sum(accepted.values()) >= n

        return check

    # Votes flowing through both servers before the kill, so some are in flight.
    await eventually(accepted_at_least(200), timeout=30)
    victim = next(c for c in rs.stack.children if c.name == "ingest-1")
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim_port = rs.stack.ingest_ports[0]

    def marked_down() -> bool:
        states = runtime.servers_state("ingest")
        victim_rows = [st for st in states if st.port == victim_port and not st.in_maint]
        assert len(victim_rows) == 1, states  # the live server, not a spare template slot
        return not victim_rows[0].up

    while not marked_down():
        assert time.monotonic() - killed_at < 3.0, (
            "HAProxy did not mark the killed server down in 3 s"
        )
        await asyncio.sleep(0.05)
    down_after = time.monotonic() - killed_at
    # Keep voting on the survivor.
    await eventually(accepted_at_least(sum(accepted.values()) + 200), timeout=30)
    stop.set()
    await asyncio.gather(*tasks)
    assert sum(accepted.values()) > 100

    # Audit: every accepted vote counted once, in Redis and, once final, in PostgreSQL.
    async with aiohttp.ClientSession() as s:

        async def applied() -> bool:
            return await redis_counts(rs.prefix, pid) == accepted

        await eventually(applied, timeout=60)
        await api(s, "POST", f"{base}/v1/admin/polls/{pid}/close", headers=rs.admin_headers)

        async def final() -> bool:
            return (await pg_totals(rs.dsn, pid))[1]

        await eventually(final, timeout=60)
    totals, _ = await pg_totals(rs.dsn, pid)
    assert totals == accepted
    print(
        f"killed server marked down after {down_after:.2f}s; failures seen and retried: "
        f"{dict(failures_seen)}; retries answered as replays: {replays[0]}"
    )


def test_sigkilled_ingest_is_marked_down_and_retries_lose_nothing(tmp_path: Path) -> None:
    with local_stack(
        tmp_path,
        database="buzzer_test_lb",
        ingest=2,
        haproxy=True,
        extra_env={"BUZZER_DEVICE_RATE_PER_S": "1000"},
    ) as rs:
        asyncio.run(kill_under_load(rs))
