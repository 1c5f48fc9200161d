"""The live websocket protocol against a real Redis, fed by the real tally (bench.tools.tally)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bench.tools import wsclient
from bench.tools.tally import LiveTally
from services.common.settings import PushSettings
from services.common.tokens import TokenService
from services.push.ops import viewers_key
from tests.support.push import ADMIN_TOKEN, PushServer, push_settings, running_push

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

StartPush = Callable[..., Awaitable[PushServer]]


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"tpush{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def sim(redis: aioredis.Redis, prefix: str) -> AsyncIterator[LiveTally]:
    tally = LiveTally(redis, push_settings(prefix).keys())
    yield tally
    await tally.cleanup()


@pytest.fixture
async def start_push(prefix: str) -> AsyncIterator[StartPush]:
    stack: list[Any] = []

    async def start(**overrides: Any) -> PushServer:
        cm = running_push(push_settings(prefix, **overrides))
        server = await cm.__aenter__()
        stack.append(cm)
        return server

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


async def until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def recv(c: wsclient.WSClient, timeout: float = 5.0) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await asyncio.wait_for(c.messages.get(), timeout))
    return msg


async def closed(c: wsclient.WSClient, timeout: float = 5.0) -> tuple[int, str]:
    return await asyncio.wait_for(asyncio.shield(c.closed), timeout)


async def vote_and_publish(sim: LiveTally, poll: str, votes: dict[str, int]) -> dict[str, Any]:
    await sim.add_votes(poll, votes)
    u = await sim.publish(poll)
    return {"version": u.version, "counts": u.counts, "total": u.total}


async def test_snapshot_then_updates_with_growing_versions(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("p1", ["red", "blue"])
    await sim.add_votes("p1", {"red": 2})
    push = await start_push()
    c = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    snap = await recv(c)
    assert snap["type"] == "snapshot"
    assert snap["counts"] == {"red": 2, "blue": 0} and snap["total"] == 2
    assert snap["title"] and [o["key"] for o in snap["options"]] == ["red", "blue"]
    last = snap["version"]
    expected = {"red": 2, "blue": 0}
    for i in range(5):
        option = ["red", "blue"][i % 2]
        expected[option] += i + 1
        await vote_and_publish(sim, "p1", {option: i + 1})
        u = await recv(c)
        assert u["type"] == "update" and u["final"] is False
        assert u["version"] > last
        last = u["version"]
        assert u["counts"] == expected and u["total"] == sum(expected.values())
    c.abort()


async def test_resume_with_old_version_gets_current_state(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("p1", ["a", "b"])
    first = await vote_and_publish(sim, "p1", {"a": 1})
    current = await vote_and_publish(sim, "p1", {"b": 4})
    push = await start_push()
    c = await wsclient.connect(f"{push.ws}/v1/polls/p1/live?since_version={first['version']}")
    snap = await recv(c)
    assert snap["type"] == "snapshot"
    assert snap["version"] == current["version"] and snap["counts"] == {"a": 1, "b": 4}
    c.abort()


async def test_resume_with_current_version_gets_nothing_older(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("p1", ["a", "b"])
    await vote_and_publish(sim, "p1", {"a": 1})
    current = await vote_and_publish(sim, "p1", {"a": 1})
    push = await start_push()
    c = await wsclient.connect(f"{push.ws}/v1/live")
    c.send_text(
        json.dumps({"type": "subscribe", "poll": "p1", "since_version": current["version"]})
    )
    assert await recv(c) == {"type": "uptodate", "poll": "p1", "version": current["version"]}
    # A client that saw a later version (through another push process) than this one
    # knows: nothing up to that version may follow, the next newer state does.
    ahead = current["version"] + 2
    d = await wsclient.connect(f"{push.ws}/v1/polls/p1/live?since_version={ahead}")
    assert await recv(d) == {"type": "uptodate", "poll": "p1", "version": ahead}
    newer = await vote_and_publish(sim, "p1", {"b": 1})
    u = await recv(c)
    assert u["version"] == newer["version"] and u["counts"] == {"a": 2, "b": 1}
    await until(lambda: push.hub.stats.broadcasts >= 1, what="broadcast")
    assert d.messages.empty()
    for _ in range(3):
        latest = await vote_and_publish(sim, "p1", {"b": 1})
        if latest["version"] > ahead:
            break
        await asyncio.sleep(0.11)
    u = await recv(d)
    assert u["version"] == latest["version"] > ahead
    c.abort()
    d.abort()


async def test_final_result_reaches_every_subscriber(sim: LiveTally, start_push: StartPush) -> None:
    await sim.define("p1", ["yes", "no"])
    await sim.define("p2", ["x"])
    push = await start_push()
    one = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    multi = await wsclient.connect(f"{push.ws}/v1/live")
    for poll in ("p2", "p1"):
        multi.send_text(json.dumps({"type": "subscribe", "poll": poll}))
    assert (await recv(one))["type"] == "snapshot"
    assert {(await recv(multi))["poll"], (await recv(multi))["poll"]} == {"p1", "p2"}
    await vote_and_publish(sim, "p1", {"yes": 3, "no": 1})
    await sim.close("p1")
    for c in (one, multi):
        seen = [await recv(c)]
        while not seen[-1]["final"]:
            seen.append(await recv(c))
        final = seen[-1]
        assert final["poll"] == "p1" and final["state"] == "closed"
        assert final["counts"] == {"yes": 3, "no": 1}
    late = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    snap = await recv(late)
    assert snap["type"] == "snapshot" and snap["final"] is True and snap["state"] == "closed"
    for c in (one, multi, late):
        c.abort()


async def test_multi_poll_socket_unsubscribe_and_unknown_poll(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("p1", ["a"])
    await sim.define("p2", ["a"])
    push = await start_push()
    c = await wsclient.connect(f"{push.ws}/v1/live")
    c.send_text('{"type":"subscribe","poll":"p1"}')
    c.send_text('{"type":"subscribe","poll":"p2"}')
    c.send_text('{"type":"subscribe","poll":"nope"}')
    got = [await recv(c) for _ in range(3)]
    assert [m["type"] for m in got] == ["snapshot", "snapshot", "error"]
    assert got[2]["code"] == "unknown_poll" and got[2]["poll"] == "nope"
    c.send_text('{"type":"unsubscribe","poll":"p1"}')
    c.send_text('{"type":"ping"}')
    assert await recv(c) == {"type": "pong"}
    await vote_and_publish(sim, "p1", {"a": 1})
    await vote_and_publish(sim, "p2", {"a": 5})
    u = await recv(c)
    assert u["poll"] == "p2" and u["total"] == 5
    assert c.messages.empty()
    strict = await wsclient.connect(f"{push.ws}/v1/polls/nope/live")
    assert await closed(strict) == (4004, "unknown poll nope")
    c.abort()


async def test_at_most_ten_updates_per_second_per_poll(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("p1", ["a"])
    push = await start_push()
    c = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    await recv(c)
    started = time.monotonic()
    last = None
    for _ in range(30):  # as fast as Redis takes them: far more than 10/s
        last = await vote_and_publish(sim, "p1", {"a": 1})
    assert last is not None
    updates = [await recv(c)]
    while updates[-1]["version"] < last["version"]:
        updates.append(await recv(c))
    elapsed = time.monotonic() - started
    assert push.hub.stats.received == 30
    # Slots of 100 ms, each taken up to `slack` (50 ms) early to catch up: within
    # `elapsed` at most (elapsed + slack)/0.1 + 1 fan-outs can happen.
    most = (elapsed + push.hub.slack) / 0.1 + 1
    assert push.hub.slack <= 0.05
    assert len(updates) <= most, (len(updates), elapsed)
    assert push.hub.stats.broadcasts <= most
    assert [u["version"] for u in updates] == sorted({u["version"] for u in updates})
    assert updates[-1]["total"] == 30
    c.abort()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


async def _metrics(push: PushServer) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{push.http}/metrics") as r:
        return await r.text()


WIDE = [f"option-{i:03d}" for i in range(120)]
"""Enough options that one update is ~4 KB: a few fill a tiny socket buffer."""


async def test_slow_client_gets_latest_state_with_bounded_queue(
    sim: LiveTally, start_push: StartPush
) -> None:
    limit = 16 * 1024
    await sim.define("wide", WIDE)
    push = await start_push(
        send_buffer_limit_bytes=limit,
        socket_sndbuf_bytes=4096,
        min_interval_ms=5,
        slow_client_timeout_s=60,
        heartbeat_s=120,
    )
    slow = await wsclient.connect(f"{push.ws}/v1/polls/wide/live", rcvbuf=4096)
    fast = await wsclient.connect(f"{push.ws}/v1/polls/wide/live")
    await recv(slow)
    await recv(fast)
    slow.pause()
    published = 0
    frame_max = 0
    last_version = 0
    while push.hub.stats.coalesced < 20:
        u = await vote_and_publish(sim, "wide", {WIDE[published % len(WIDE)]: 1})
        published += 1
        last_version = u["version"]
        frame_max = max(frame_max, len(json.dumps(u)) + 200)
        # Server-side bound, checked while the client is stuck: one pending state, and
        # unsent bytes never beyond the limit plus the one frame written before it.
        assert push.hub.max_pending() <= 1
        assert push.hub.max_send_buffer() <= limit + 8 * 1024
        assert published < 2000, "the slow client never fell behind"
        await asyncio.sleep(0.006)
    text = await _metrics(push)
    assert _metric(text, "buzzer_push_updates_coalesced_total") >= 20
    assert _metric(text, "buzzer_push_client_pending_max") <= 1
    assert _metric(text, "buzzer_push_client_send_buffer_max_bytes") <= limit + 8 * 1024
    # The fast client got everything the 5 ms slots allowed, up to the newest.
    seen_fast = [await recv(fast)]
    while seen_fast[-1]["version"] < last_version:
        seen_fast.append(await recv(fast))
    slow.resume()
    seen = [await recv(slow)]
    while seen[-1]["version"] < last_version:
        seen.append(await recv(slow))
    versions = [m["version"] for m in seen]
    assert versions == sorted(set(versions)), "versions must only grow"
    assert seen[-1]["version"] == last_version and seen[-1]["total"] == published
    assert len(seen) < published, "intermediate states should have been dropped"
    slow.abort()
    fast.abort()


async def test_slow_client_is_disconnected_past_its_bound(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("wide", WIDE)
    push = await start_push(
        send_buffer_limit_bytes=8 * 1024,
        socket_sndbuf_bytes=4096,
        min_interval_ms=5,
        slow_client_timeout_s=0.3,
        heartbeat_s=120,
        close_timeout_s=5,
    )
    slow = await wsclient.connect(f"{push.ws}/v1/polls/wide/live", rcvbuf=4096)
    other = await wsclient.connect(f"{push.ws}/v1/polls/wide/live")
    await recv(slow)
    await recv(other)
    slow.pause()
    n = 0
    while push.hub.stats.disconnects.get("TOO_SLOW", 0) == 0:
        await vote_and_publish(sim, "wide", {WIDE[n % len(WIDE)]: 1})
        n += 1
        assert n < 3000, "the slow client was never disconnected"
        await asyncio.sleep(0.01)
    slow.resume()
    code, reason = await closed(slow)
    assert code == 4008 and "too slow" in reason
    await until(lambda: len(push.hub.clients) == 1, what="slow client gone")
    u = await vote_and_publish(sim, "wide", {"option-000": 1})
    while (await recv(other))["version"] < u["version"]:
        pass
    other.abort()


async def test_connection_limits_per_address_and_total(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("p1", ["a"])
    push = await start_push(max_connections_per_ip=2, max_connections=3)
    a = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    b = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    c = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    assert await closed(c) == (4029, "too many connections from this address")
    # Through a trusted proxy (127.0.0.1 by default) the forwarded address counts.
    d = await wsclient.connect(
        f"{push.ws}/v1/polls/p1/live", headers={"X-Forwarded-For": "10.0.0.7"}
    )
    await recv(d)
    e = await wsclient.connect(
        f"{push.ws}/v1/polls/p1/live", headers={"X-Forwarded-For": "10.0.0.8"}
    )
    assert await closed(e) == (1013, "server full, try again later")
    a.abort()
    await until(lambda: len(push.hub.clients) == 2, what="a slot to free up")
    f = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    assert (await recv(f))["type"] == "snapshot"
    text = await _metrics(push)
    assert 'buzzer_push_refused_total{code="TOO_MANY_FROM_ADDRESS"} 1.0' in text
    assert 'buzzer_push_refused_total{code="TRY_AGAIN_LATER"} 1.0' in text
    for x in (b, d, f):
        x.abort()


@pytest.mark.parametrize(
    ("send", "code", "reason"),
    [
        (lambda c: c.send_binary(b"\x00\x01"), 1003, "binary frames are not supported"),
        (lambda c: c.send_text("{not json"), 1007, "message is not JSON"),
        (lambda c: c.send_text('{"type":"subscribe"}'), 1008, "invalid message"),
        (lambda c: c.send_text('{"type":"dance","poll":"p1"}'), 1008, "invalid message"),
        (lambda c: c.send_text('{"type":"subscribe","poll":"../etc"}'), 1008, "invalid poll id"),
        (
            lambda c: c.send_text('{"type":"subscribe","poll":"p1","since_version":"x"}'),
            1008,
            "invalid",
        ),
        (lambda c: c.send_text("[" * 5000 + "]" * 5000), 1009, ""),
        (lambda c: c.send_text(b"\xff\xfe"), 1007, ""),
    ],
    ids=[
        "binary",
        "not-json",
        "missing-field",
        "unknown-type",
        "bad-poll-id",
        "bad-version",
        "too-big",
        "not-utf8",
    ],
)
async def test_malformed_messages_close_with_their_code_and_others_keep_going(
    sim: LiveTally,
    start_push: StartPush,
    send: Callable[[wsclient.WSClient], None],
    code: int,
    reason: str,
) -> None:
    await sim.define("p1", ["a"])
    push = await start_push()
    bystander = await wsclient.connect(f"{push.ws}/v1/polls/p1/live")
    await recv(bystander)
    bad = await wsclient.connect(f"{push.ws}/v1/live")
    send(bad)
    got_code, got_reason = await closed(bad)
    assert got_code == code and got_reason.startswith(reason)
    u = await vote_and_publish(sim, "p1", {"a": 1})
    assert (await recv(bystander))["version"] == u["version"]
    bystander.abort()


async def test_too_many_subscriptions_and_messages(sim: LiveTally, start_push: StartPush) -> None:
    for poll in ("p1", "p2", "p3"):
        await sim.define(poll, ["a"])
    push = await start_push(max_subscriptions=2, client_messages_per_s=5)
    c = await wsclient.connect(f"{push.ws}/v1/live")
    for poll in ("p1", "p2", "p3"):
        c.send_text(json.dumps({"type": "subscribe", "poll": poll}))
    assert await closed(c) == (1008, "too many subscriptions on one socket")
    d = await wsclient.connect(f"{push.ws}/v1/live")
    for _ in range(11):
        d.send_text('{"type":"ping"}')
    assert await closed(d) == (1008, "too many messages")


async def test_origin_check(sim: LiveTally, start_push: StartPush) -> None:
    await sim.define("p1", ["a"])
    push = await start_push(allowed_origins=["https://studio.example"])
    url = f"{push.ws}/v1/polls/p1/live"
    evil = await wsclient.connect(url, origin="https://evil.example")
    assert await closed(evil) == (4003, "origin not allowed")
    same = await wsclient.connect(url, origin=push.http)
    listed = await wsclient.connect(url, origin="https://studio.example")
    native = await wsclient.connect(url)
    for c in (same, listed, native):
        assert (await recv(c))["type"] == "snapshot"
        c.abort()


async def test_device_token_when_required(sim: LiveTally, start_push: StartPush) -> None:
    await sim.define("p1", ["a"])
    push = await start_push(require_token=True)
    settings: PushSettings = push_settings(
        token_secret="test-token-secret-0123456789abcdef0123456789"
    )
    token = TokenService(settings.token_secret, audience=settings.token_audience).issue().token
    url = f"{push.ws}/v1/polls/p1/live"
    missing = await wsclient.connect(url)
    assert await closed(missing) == (4001, "device token required")
    forged = await wsclient.connect(f"{url}?token=not.a.token")
    code, reason = await closed(forged)
    assert code == 4001 and reason.startswith("invalid token")
    ok = await wsclient.connect(f"{url}?token={token}")
    assert (await recv(ok))["type"] == "snapshot"
    header = await wsclient.connect(url, headers={"Authorization": f"Bearer {token}"})
    assert (await recv(header))["type"] == "snapshot"
    ok.abort()
    header.abort()


async def test_idle_socket_is_closed(start_push: StartPush) -> None:
    push = await start_push(idle_timeout_s=0.3)
    c = await wsclient.connect(f"{push.ws}/v1/live")
    assert await closed(c) == (4000, "idle: no subscription")


async def test_shutdown_closes_every_client_with_going_away(
    sim: LiveTally, start_push: StartPush
) -> None:
    await sim.define("p1", ["a"])
    push = await start_push()
    clients = [await wsclient.connect(f"{push.ws}/v1/polls/p1/live") for _ in range(5)]
    idle = await wsclient.connect(f"{push.ws}/v1/live")
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{push.ws}/v1/polls/p1/live") as lib:
        assert (await lib.receive_json())["type"] == "snapshot"
        for c in clients:
            await recv(c)
        stopping = asyncio.create_task(push.stop())
        for c in [*clients, idle]:
            assert await closed(c) == (1001, "server shutdown")
        msg = await lib.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await asyncio.wait_for(stopping, 10)


async def test_viewer_count_and_ops_figures(
    sim: LiveTally, start_push: StartPush, redis: aioredis.Redis, prefix: str
) -> None:
    await sim.define("p1", ["a"])
    one = await start_push(instance_id="push-a")
    two = await start_push(instance_id="push-b")
    clients = [await wsclient.connect(f"{one.ws}/v1/polls/p1/live") for _ in range(3)]
    clients.append(await wsclient.connect(f"{two.ws}/v1/polls/p1/live"))
    for c in clients:
        await recv(c)
    keys = push_settings(prefix).keys()
    # Votes appended and a tally group partly behind, as ingest and tally leave them.
    for p in range(keys.partitions):
        await redis.xgroup_create(keys.votes(p), "tally", id="$", mkstream=True)
    for i in range(40):
        await redis.xadd(keys.votes(i % keys.partitions), {"t": "v", "poll": "p1"})
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{one.http}/v1/ops") as r:
            assert r.status == 401
            assert (await r.json())["error"] == "unauthorized"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

        async def figures() -> dict[str, Any]:
            async with s.get(f"{one.http}/v1/ops", headers=auth) as r:
                assert r.status == 200
                data: dict[str, Any] = await r.json()
                return data

        got = await figures()
        deadline = time.monotonic() + 5
        while got["viewers"] != 4 and time.monotonic() < deadline:
            got = await figures()
        assert got["viewers"] == 4 and got["viewers_here"] == 3
        assert got["tally_lag"] == 40 and got["tally_pending"] == 0
        for i in range(20):
            await redis.xadd(keys.votes(i % keys.partitions), {"t": "v", "poll": "p1"})
        got = await figures()
        assert got["votes_appended"] == 60 and got["ingest_rate"] > 0
    raw = await redis.hgetall(viewers_key(keys))
    assert set(raw) == {b"push-a", b"push-b"}
    text = await _metrics(one)
    assert _metric(text, "buzzer_push_connections") == 3
    await until(lambda: _metric_sync(one) == 4, what="viewers_total gauge")
    for c in clients:
        c.abort()
    await two.stop()
    assert await redis.hget(viewers_key(keys), "push-b") is None


def _metric_sync(push: PushServer) -> float:
    from services.push.keys import VIEWERS

    return float(push.app[VIEWERS].total)


async def test_sockets_that_join_together_are_pinged_apart(
    sim: LiveTally, start_push: StartPush
) -> None:
    # One ping period for every socket would ping all of a show's joiners at once, for
    # as long as they stay (a stall of every broadcast: handlers.heartbeat_period).
    await sim.define("hb", ["a", "b"])
    # Periods of 1-2 s: a pong is due within 0.5-1 s, with room for a busy CI machine.
    push = await start_push(heartbeat_s=2.0)
    loop = asyncio.get_running_loop()

    async def first_ping(session: aiohttp.ClientSession) -> tuple[float, int]:
        async with session.ws_connect(f"{push.ws}/v1/polls/hb/live", autoping=False) as ws:
            connected = loop.time()
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type is aiohttp.WSMsgType.PING:
                    pinged = loop.time()
                    await ws.pong(msg.data)
                    break
            # Answered, the socket stays: its next frame is the next ping, not a close.
            nxt = await ws.receive(timeout=10)
            return pinged - connected, nxt.type

    async with aiohttp.ClientSession() as session:
        got = await asyncio.gather(*(first_ping(session) for _ in range(12)))
    waits = sorted(w for w, _ in got)
    assert {t for _, t in got} == {aiohttp.WSMsgType.PING}
    # 12 sockets' first pings spread over a good part of the 1 s range of periods, where
    # one shared period would put them within the connects' few ms.
    assert waits[-1] - waits[0] > 0.2, waits
