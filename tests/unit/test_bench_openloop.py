"""The open-loop generator on a fake clock: sends follow the schedule, not the answers,
and latency counts from when a request was due. No real time is measured here."""

from __future__ import annotations

import asyncio

import pytest

from bench.tools.openloop import open_loop, percentile, schedule

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self, oversleep: float = 0.0) -> None:
        self.now = 100.0
        self.oversleep = oversleep

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # the requests already sent start now, as on a real loop
        self.now += seconds + self.oversleep


def test_schedule_and_percentile() -> None:
    assert schedule(4, 1) == [0.0, 0.25, 0.5, 0.75]
    assert len(schedule(1000, 2.5)) == 2500
    with pytest.raises(ValueError):
        schedule(0, 1)
    values = [float(v) for v in range(1, 1001)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (500.0, 990.0)
    assert percentile(values, 0.999) == 999.0
    assert percentile([], 0.5) is None


async def test_a_stuck_answer_holds_back_no_later_request() -> None:
    clock = FakeClock()
    release = asyncio.Event()
    sent_at: dict[int, float] = {}

    async def send(i: int) -> bool:
        sent_at[i] = clock()
        if i == 0:
            await release.wait()
        if i == 9:
            release.set()
        return True

    r = await open_loop(send, 10, 1, clock=clock, sleep=clock.sleep)
    assert [round(sent_at[i] - 100.0, 6) for i in range(10)] == [i / 10 for i in range(10)]
    assert (r.sent, r.ok, r.failed) == (10, 10, 0)
    # The stuck request answered after the last was sent, 0.9 s after it was due.
    assert r.latencies_ms[-1] == pytest.approx(900.0)
    assert r.latencies_ms[:9] == pytest.approx([0.0] * 9)


async def test_a_late_generator_is_charged_to_the_latency() -> None:
    clock = FakeClock(oversleep=0.05)

    async def send(i: int) -> bool:
        return True

    r = await open_loop(send, 10, 1, clock=clock, sleep=clock.sleep)
    assert r.max_lag_ms == pytest.approx(50.0)
    # Answered at once, yet 50 ms late against the schedule: closed-loop would say 0.
    assert r.p(0.99) == pytest.approx(50.0)


async def test_failures_and_the_in_flight_cap_are_counted() -> None:
    clock = FakeClock()
    never = asyncio.Event()

    async def send(i: int) -> bool:
        if i < 2:
            await never.wait()
        if i == 1:
            raise ConnectionError("reset")
        return True

    sleeps = 0

    async def sleep(seconds: float) -> None:
        nonlocal sleeps
        await clock.sleep(seconds)
        sleeps += 1
        if sleeps == 9:  # the wait for the last request: 0 and 1 answer only after it
            never.set()

    task = asyncio.ensure_future(open_loop(send, 10, 1, max_in_flight=2, clock=clock, sleep=sleep))
    r = await task
    # 0 and 1 never answer before the end: every later one finds the cap full.
    assert (r.sent, r.over_cap) == (2, 8)
    # 0 succeeds, 1 raises: a broken connection is a failure, not a crash.
    assert (r.ok, r.failed) == (1, 9)
    d = r.as_dict()
    assert (d["sent"], d["over_cap"], d["rate"]) == (2, 8, 10)
