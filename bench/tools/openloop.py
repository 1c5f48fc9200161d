"""An open-loop request generator: requests leave on a fixed schedule whether or not
earlier answers came back, and each latency is measured from its scheduled send time.

wrk and locust are closed-loop: a slow answer delays the next request, so the slower the
server the fewer requests it is asked to serve and its queue never shows in the figures
(coordinated omission). Here a late answer does not hold anything back, and if the
generator itself falls behind (a busy loop, a full client), the requests it sends late
still count from when they were due: the delay is charged to the figures, never hidden.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


def schedule(rate: float, seconds: float) -> list[float]:
    """Send offsets (seconds from the start) of ``rate`` requests/s for ``seconds``."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    return [i / rate for i in range(math.floor(rate * seconds))]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of them at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    sent: int = 0
    ok: int = 0
    failed: int = 0
    over_cap: int = 0
    """Due while ``max_in_flight`` requests were already out: not sent, counted failed."""
    latencies_ms: list[float] = field(default_factory=list)
    """Of the successful requests, from scheduled send to answer, sorted."""
    max_lag_ms: float = 0.0
    """Worst delay between a request's due time and the generator sending it."""

    def p(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q)

    def as_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {
            "rate": self.rate,
            "seconds": self.seconds,
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "over_cap": self.over_cap,
            "p50_ms": r(self.p(0.50)),
            "p99_ms": r(self.p(0.99)),
            "p999_ms": r(self.p(0.999)),
            "max_lag_ms": round(self.max_lag_ms, 1),
        }


async def open_loop(
    send: Callable[[int], Awaitable[bool]],
    rate: float,
    seconds: float,
    *,
    max_in_flight: int = 5000,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> OpenLoopResult:
    """Call ``send(i)`` for request ``i`` at its scheduled time; it returns whether the
    request succeeded. Returns once every request sent has answered."""
    result = OpenLoopResult(rate=rate, seconds=seconds)
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        try:
            ok = await send(i)
        except Exception:
            ok = False
        if ok:
            result.ok += 1
            latencies.append((clock() - due) * 1000)
        else:
            result.failed += 1

    start = clock()
    for i, offset in enumerate(schedule(rate, seconds)):
        due = start + offset
        wait = due - clock()
        if wait > 0:
            await sleep(wait)
        result.max_lag_ms = max(result.max_lag_ms, (clock() - due) * 1000)
        if len(tasks) >= max_in_flight:
            result.over_cap += 1
            result.failed += 1
            continue
        result.sent += 1
        task = asyncio.ensure_future(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result.latencies_ms = sorted(latencies)
    return result
