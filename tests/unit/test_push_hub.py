"""The hub's fan-out, slow-client and admission logic with fake transports: no Redis,
no sockets. What a real socket adds is covered by tests/integration/test_push_protocol.py."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis

from services.common.messages import Keys, TallyUpdate, encode_update
from services.common.settings import PushSettings
from services.push.admission import Admission, client_ip, precheck
from services.push.hub import Client, Hub, Snap, catch_up_slack, text_frame
from services.push.protocol import Close

pytestmark = pytest.mark.unit

LIMIT = 1000


class FakeTransport:
    """Records writes; ``buffered`` stands for bytes the peer has not read yet."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class FakeWebSocket:
    def __init__(self) -> None:
        self.closed_with: tuple[int, bytes] | None = None

    async def close(self, *, code: int, message: bytes) -> bool:
        self.closed_with = (code, message)
        return True


class Clock:
    """The hub reads time only through its loop; this one's time moves when told to."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Any, *args: Any) -> asyncio.TimerHandle:
        return self.loop.call_at(self.loop.time() + (when - self.now), cb, *args)

    def call_later(self, delay: float, cb: Any, *args: Any) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, cb, *args)


def make_hub(**kw: Any) -> tuple[Hub, Clock]:
    kw.setdefault("min_interval_s", 0.0)
    kw.setdefault("send_buffer_limit", LIMIT)
    # The fan-out never touches Redis: only snapshot reads would, and these tests hand
    # the hub its snapshots.
    hub = Hub(cast(Redis, None), Keys(prefix="t", partitions=1), **kw)
    clock = Clock(asyncio.get_running_loop())
    hub._loop = cast(asyncio.AbstractEventLoop, clock)
    return hub, clock


def connect(hub: Hub, ip: str = "10.0.0.1") -> tuple[Client, FakeTransport, FakeWebSocket]:
    transport, ws = FakeTransport(), FakeWebSocket()
    client = hub.register(cast(web.WebSocketResponse, ws), cast(asyncio.Transport, transport), ip)
    return client, transport, ws


def subscribe(hub: Hub, client: Client, poll: str = "p1", version: int = 0) -> None:
    hub.attach(client, poll, None, Snap(key=(version, False), frame=b"snap", version=version))


def update(version: int, poll: str = "p1", final: bool = False) -> bytes:
    return encode_update(
        TallyUpdate(
            poll=poll,
            version=version,
            counts={"a": version},
            total=version,
            rates={"a": 0.0},
            state="closed" if final else "open",
            final=final,
            ts=0,
        )
    )


async def test_an_update_is_encoded_once_and_written_to_every_subscriber_only() -> None:
    hub, _ = make_hub()
    subscribers = [connect(hub) for _ in range(3)]
    for client, _, _ in subscribers:
        subscribe(hub, client)
    other, other_t, _ = connect(hub)
    subscribe(hub, other, poll="p2")

    hub.on_update(update(1))

    frames = [t.writes[-1] for _, t, _ in subscribers]
    assert frames[0] == text_frame(update(1))
    # One bytes object for everyone: the frame is built once, not per client.
    assert all(f is frames[0] for f in frames)
    assert other_t.writes == [b"snap"]
    assert hub.stats.broadcasts == 1 and hub.stats.sent == 3 + 4  # 4 snapshots


async def test_an_update_not_newer_than_the_state_is_not_sent() -> None:
    hub, _ = make_hub()
    client, transport, _ = connect(hub)
    subscribe(hub, client)
    hub.on_update(update(2))
    hub.on_update(update(2))
    hub.on_update(update(1))
    assert transport.writes == [b"snap", text_frame(update(2))]
    assert hub.stats.stale == 2


async def test_the_final_state_beats_its_unfinal_twin() -> None:
    hub, _ = make_hub()
    client, transport, _ = connect(hub)
    subscribe(hub, client)
    hub.on_update(update(3))
    hub.on_update(update(3, final=True))
    assert transport.writes[-1] == text_frame(update(3, final=True))


async def test_a_client_subscribed_at_a_newer_version_is_not_sent_an_older_update() -> None:
    hub, _ = make_hub()
    client, transport, _ = connect(hub)
    subscribe(hub, client, version=5)
    hub.on_update(update(4))
    assert transport.writes == [b"snap"]


async def test_a_slow_client_keeps_only_the_latest_update_and_gets_it_when_drained() -> None:
    hub, _ = make_hub()
    slow, slow_t, _ = connect(hub)
    fast, fast_t, _ = connect(hub)
    subscribe(hub, slow)
    subscribe(hub, fast)
    slow_t.buffered = LIMIT + 1

    for v in (1, 2, 3):
        hub.on_update(update(v))

    assert slow_t.writes == [b"snap"]
    assert fast_t.writes[1:] == [text_frame(update(v)) for v in (1, 2, 3)]
    assert hub.stats.coalesced == 2
    assert hub.max_pending() == 1 and slow in hub.deferred

    hub.flush()  # still full: nothing written
    assert slow_t.writes == [b"snap"]

    slow_t.buffered = 0
    hub.flush()
    assert slow_t.writes == [b"snap", text_frame(update(3))]
    assert slow not in hub.deferred and slow.pending is None


async def test_a_client_over_its_bound_past_the_timeout_is_closed_too_slow() -> None:
    hub, clock = make_hub(slow_client_timeout_s=10.0)
    slow, slow_t, slow_ws = connect(hub)
    subscribe(hub, slow)
    slow_t.buffered = LIMIT + 1
    hub.on_update(update(1))

    hub.flush()  # starts the clock on it
    clock.now += 10.0
    hub.flush()  # exactly at the bound: kept
    assert not slow.closing

    clock.now += 0.5
    hub.flush()
    assert slow.closing and hub.stats.disconnects == {"TOO_SLOW": 1}
    await hub.shutdown(grace_s=5.0)  # waits for the close already under way
    assert slow_ws.closed_with is not None and slow_ws.closed_with[0] == Close.TOO_SLOW
    assert slow_t.closed


async def test_a_client_that_drains_in_time_is_kept() -> None:
    hub, clock = make_hub(slow_client_timeout_s=10.0)
    client, transport, _ = connect(hub)
    subscribe(hub, client)
    transport.buffered = LIMIT + 1
    hub.on_update(update(1))
    hub.flush()
    clock.now += 9.0
    transport.buffered = 0
    hub.flush()
    transport.buffered = LIMIT + 1
    hub.on_update(update(2))
    hub.flush()
    clock.now += 9.0
    hub.flush()
    assert not client.closing  # blocked twice for 9 s, never 10 s in a row


async def test_updates_faster_than_the_interval_wait_for_the_next_slot() -> None:
    hub, clock = make_hub(min_interval_s=0.1)
    client, transport, _ = connect(hub)
    subscribe(hub, client)
    hub.on_update(update(1))
    clock.now += 0.03
    hub.on_update(update(2))
    hub.on_update(update(3))
    assert transport.writes == [b"snap", text_frame(update(1))]
    assert hub.polls["p1"].timer is not None
    await hub.stop()


@pytest.mark.parametrize(
    ("fanout_s", "sent"),
    [
        # Writing to every viewer took next to nothing: the third, on time, goes out on
        # arrival. Spaced from the late second broadcast it would wait 40 ms, and so
        # would every one after it: a lag that only grew (bench push at 10 updates/s).
        (None, (1, 2, 3)),
        # As if writing to every viewer had taken 95 ms: only 5 ms of the interval is
        # free, so there is nothing to catch up with, and the third waits for its slot.
        (0.095, (1, 2)),
    ],
)
async def test_a_late_broadcast_is_caught_up_by_what_a_fan_out_leaves_free(
    fanout_s: float | None, sent: tuple[int, ...]
) -> None:
    # Updates due every 100 ms; the second reaches the hub 40 ms late (the loop was busy).
    hub, clock = make_hub(min_interval_s=0.1)
    client, transport, _ = connect(hub)
    subscribe(hub, client)
    start = clock.now
    hub.on_update(update(1))
    clock.now = start + 0.14
    hub.on_update(update(2))
    if fanout_s is not None:
        hub.stats.last_fanout_s = fanout_s
    clock.now = start + 0.2
    hub.on_update(update(3))
    assert transport.writes[1:] == [text_frame(update(v)) for v in sent]
    assert (hub.polls["p1"].timer is None) == (sent == (1, 2, 3))
    await hub.stop()


def test_catch_up_slack_is_what_a_fan_out_leaves_free_up_to_the_most() -> None:
    assert catch_up_slack(0.05, 0.1, 0.0) == 0.05
    assert catch_up_slack(0.05, 0.1, 0.07) == pytest.approx(0.03)
    assert catch_up_slack(0.05, 0.1, 0.1) == 0.0
    assert catch_up_slack(0.05, 0.1, 0.3) == 0.0


async def test_broadcasts_stay_at_most_one_per_interval_when_updates_come_faster() -> None:
    hub, clock = make_hub(min_interval_s=0.1)
    client, transport, _ = connect(hub)
    subscribe(hub, client)
    start, sent_at = clock.now, []
    for i in range(100):  # an update every 20 ms for 2 s
        clock.now = start + i * 0.02
        before = len(transport.writes)
        hub.on_update(update(i + 1))
        if len(transport.writes) > before:
            sent_at.append(clock.now - start)
    assert 20 <= len(sent_at) <= 21
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert min(gaps) >= 0.05 - 1e-9
    await hub.stop()


async def test_an_unsubscribed_client_gets_nothing_more() -> None:
    hub, _ = make_hub()
    client, transport, _ = connect(hub)
    subscribe(hub, client)
    hub.detach(client, "p1")
    hub.on_update(update(1))
    assert transport.writes == [b"snap"]
    assert hub.subscriptions() == 0


async def test_shutdown_closes_everyone_going_away_and_admits_nobody() -> None:
    hub, _ = make_hub()
    conns = [connect(hub) for _ in range(2)]
    assert await hub.shutdown(grace_s=1.0) == 2
    assert all(ws.closed_with and ws.closed_with[0] == Close.GOING_AWAY for _, _, ws in conns)
    assert hub.admission.admit("10.0.0.9") == (Close.GOING_AWAY, "server shutting down")


def test_admission_limits_per_address_and_in_total() -> None:
    a = Admission(max_connections=3, max_per_ip=2)
    assert a.admit("1.1.1.1") is None
    assert a.admit("1.1.1.1") is None
    code, _ = a.admit("1.1.1.1") or (None, "")
    assert code is Close.TOO_MANY_FROM_ADDRESS
    assert a.admit("2.2.2.2") is None
    code, _ = a.admit("3.3.3.3") or (None, "")
    assert code is Close.TRY_AGAIN_LATER
    assert a.rejected == {"TOO_MANY_FROM_ADDRESS": 1, "TRY_AGAIN_LATER": 1}

    a.release("1.1.1.1")
    assert a.admit("3.3.3.3") is None
    a.release("2.2.2.2")
    assert "2.2.2.2" not in a.per_ip and a.reserved == 2


def _request(headers: dict[str, str], path: str = "/v1/live") -> web.Request:
    return make_mocked_request("GET", path, headers=headers)


def test_origin_of_another_site_is_refused_and_own_host_or_no_origin_is_allowed() -> None:
    settings = PushSettings(admin_token="x", token_secret="y" * 32)
    foreign = _request({"Origin": "https://evil.example", "Host": "vote.example"})
    assert precheck(foreign, settings, None) == (Close.FORBIDDEN_ORIGIN, "origin not allowed")
    same = _request({"Origin": "https://vote.example", "Host": "vote.example"})
    assert precheck(same, settings, None) is None
    assert precheck(_request({"Host": "vote.example"}), settings, None) is None
    listed = replace_settings(settings, allowed_origins=["https://evil.example"])
    assert precheck(foreign, listed, None) is None


def test_token_is_required_and_checked_when_configured() -> None:
    settings = PushSettings(admin_token="x", token_secret="y" * 32, require_token=True)

    def verify(token: str) -> str:
        if token != "good":
            raise ValueError("bad signature")
        return "device"

    missing = precheck(_request({}), settings, verify)
    assert missing == (Close.UNAUTHORIZED, "device token required")
    bad = precheck(_request({"Authorization": "Bearer nope"}), settings, verify)
    assert bad == (Close.UNAUTHORIZED, "invalid token: bad signature")
    assert precheck(_request({}, path="/v1/live?token=good"), settings, verify) is None


def test_forwarded_address_is_trusted_only_from_our_proxy() -> None:
    req = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "6.6.6.6, 1.2.3.4"})
    # A mocked request has no peer address (""): listing "" makes that peer our proxy.
    assert client_ip(req, ["10.0.0.2"]) == ""
    assert client_ip(req, [""]) == "1.2.3.4"


def replace_settings(settings: PushSettings, **changes: Any) -> PushSettings:
    return settings.model_copy(update=changes)
