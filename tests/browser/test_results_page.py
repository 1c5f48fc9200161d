"""The results page in real headless Chromium, against a push app fed by a simulated tally."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser

from services.push.simtally import SimTally
from services.push.testing import push_settings, running_push
from tests.browser.results_page import CHROMIUM, ResultsPage, chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed"),
]

OPTIONS = [("red", "Team Red"), ("blue", "Team Blue"), ("green", "Team Green")]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def sim() -> AsyncIterator[SimTally]:
    settings = push_settings(f"tpush{uuid.uuid4().hex[:10]}")
    redis = aioredis.from_url(settings.redis_url)
    tally = SimTally(redis, settings.keys())
    yield tally
    await tally.cleanup()
    await redis.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_results_page_reaches_exact_totals_then_shows_final(
    browser: Browser, sim: SimTally
) -> None:
    await sim.define("final-show", OPTIONS, title="Who wins the final?")
    async with running_push(push_settings(sim.keys.prefix)) as push:
        page = ResultsPage(await browser.new_page(viewport={"width": 1200, "height": 700}))
        await page.open(push.http, "final-show")
        await page.wait_status("live")
        expected = dict.fromkeys((k for k, _ in OPTIONS), 0)
        for i in range(25):
            votes = {"red": 7 + i % 3, "blue": 3 + (i * 5) % 4, "green": i % 2}
            for k, n in votes.items():
                expected[k] += n
            await sim.add_votes("final-show", votes)
            await sim.publish("final-show")
            await asyncio.sleep(0.03)  # paces the simulated tally; not an assertion
        await page.wait_counts(expected)
        assert await page.total() == sum(expected.values())
        await sim.close("final-show")
        await page.wait_final()
        await page.wait_counts(expected)
        path = await page.screenshot("results-page.png")
        assert path.stat().st_size > 0


async def test_results_page_shows_disconnect_and_resumes(browser: Browser, sim: SimTally) -> None:
    await sim.define("resume", OPTIONS)
    port = _free_port()
    settings = push_settings(sim.keys.prefix, port=port)
    page = ResultsPage(await browser.new_page())
    async with running_push(settings) as push:
        await page.open(push.http, "resume")
        await page.wait_status("live")
        await sim.add_votes("resume", {"red": 4})
        await sim.publish("resume")
        await page.wait_counts({"red": 4, "blue": 0, "green": 0})
    await page.wait_status("reconnecting")
    assert "reconnecting" in (await page.page.inner_text("#banner-down"))
    await sim.add_votes("resume", {"blue": 2})  # while the page is away
    async with running_push(settings):
        await page.wait_counts({"red": 4, "blue": 2, "green": 0}, timeout_ms=20_000)
        await page.wait_status("live")
