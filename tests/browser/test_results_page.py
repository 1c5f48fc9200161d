"""The results graphic in real headless Chromium, against a push app fed by the real
tally's consumer and publisher: it fills a 1920x1080 frame inside the safe area, fits
a phone, shows live, closed and final, lets its votes-per-second fall to 0 when votes
stop, and keys cleanly."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page

from bench.tools.tally import LiveTally
from tests.browser.results_page import (
    CHROMIUM,
    ResultsPage,
    chromium,
    problems,
    watched_page,
)
from tests.support.push import push_settings, running_push

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed"),
]

LONG = (
    "Team Green, the underdogs from the far north whom nobody expected to reach the final "
    "of this year's competition, let alone win it"
)
OPTIONS = [("red", "Team Red"), ("blue", "Team Blue"), ("green", LONG)]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def sim() -> AsyncIterator[LiveTally]:
    settings = push_settings(f"tpush{uuid.uuid4().hex[:10]}")
    redis = aioredis.from_url(settings.redis_url)
    tally = LiveTally(redis, settings.keys())
    yield tally
    await tally.cleanup()
    await redis.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _votes(sim: LiveTally, poll: str, rounds: int) -> dict[str, int]:
    expected = dict.fromkeys((k for k, _ in OPTIONS), 0)
    for i in range(rounds):
        votes = {"red": 7 + i % 3, "blue": 3 + (i * 5) % 4, "green": i % 2}
        for k, n in votes.items():
            expected[k] += n
        await sim.add_votes(poll, votes)
        await sim.publish(poll)
        await asyncio.sleep(0.03)  # paces the tally; not an assertion
    return expected


async def _layout(page: Page) -> dict[str, Any]:
    layout: dict[str, Any] = await page.evaluate(
        """() => {
            const box = (el) => { const r = el.getBoundingClientRect();
                return {x: r.left, y: r.top, r: r.right, b: r.bottom, w: r.width, h: r.height}; };
            const visible = [...document.querySelectorAll('h1, .status, .track, .label, .figures, .stat, .spark')]
                .filter(el => el.getClientRects().length > 0);
            const tracks = [...document.querySelectorAll('.track')];
            return {
                vw: innerWidth, vh: innerHeight,
                scrollWidth: document.scrollingElement.scrollWidth,
                boxes: visible.map(el => ({cls: el.className.baseVal ?? el.className, ...box(el)})),
                tracks: tracks.map(box),
                labels: [...document.querySelectorAll('.label')].map(el => ({...box(el),
                    font: parseFloat(getComputedStyle(el).fontSize), text: el.textContent,
                    clipped: el.scrollHeight > el.clientHeight + 1})),
                figures: [...document.querySelectorAll('.figures')].map(box),
                titleFont: parseFloat(getComputedStyle(document.querySelector('h1')).fontSize),
                shareFont: parseFloat(getComputedStyle(document.querySelector('.share')).fontSize),
                text: document.body.innerText,
            };
        }"""
    )
    return layout


async def test_graphic_fills_a_1920x1080_frame_inside_the_safe_area(
    browser: Browser, sim: LiveTally
) -> None:
    await sim.define("final-show", OPTIONS, title="Who wins the final?")
    async with running_push(push_settings(sim.keys.prefix)) as push:
        page = ResultsPage(await watched_page(browser, 1920, 1080))
        await page.open(push.http, "final-show")
        await page.wait_status("live")
        expected = await _votes(sim, "final-show", 25)
        await page.wait_counts(expected)
        assert await page.total() == sum(expected.values())
        await page.screenshot("results-1920x1080-live.png")
        lay = await _layout(page.page)

        frame = lay["vw"] * lay["vh"]
        bars = sum(t["w"] * t["h"] for t in lay["tracks"])
        assert bars > 0.5 * frame, f"bars cover {bars / frame:.0%} of the frame"
        # Title-safe: 5 % of the frame's width and height on every side.
        sx, sy = 0.05 * lay["vw"] - 0.5, 0.05 * lay["vh"] - 0.5
        for b in lay["boxes"]:
            assert b["x"] >= sx and b["r"] <= lay["vw"] - sx, b
            assert b["y"] >= sy and b["b"] <= lay["vh"] - sy, b
        # Readable across a studio: nothing on a bar under 40 px on a 1080-line frame.
        assert lay["titleFont"] >= 60 and lay["shareFont"] >= 60, lay
        assert min(label["font"] for label in lay["labels"]) >= 40, lay["labels"]
        # The long label is cut inside its own bar, and its figures stay whole.
        for label, track, fig in zip(lay["labels"], lay["tracks"], lay["figures"], strict=True):
            assert track["x"] <= label["x"] and label["r"] <= fig["x"] <= fig["r"] <= track["r"]
            assert label["h"] <= track["h"]
        assert [label["clipped"] for label in lay["labels"]] == [False, False, True]
        assert "version" not in lay["text"].lower()
        assert await problems(page.page) == []


async def test_graphic_shows_closed_then_final(browser: Browser, sim: LiveTally) -> None:
    await sim.define("final-show", OPTIONS, title="Who wins the final?")
    async with running_push(push_settings(sim.keys.prefix)) as push:
        page = ResultsPage(await watched_page(browser, 1920, 1080))
        await page.open(push.http, "final-show")
        await page.wait_status("live")
        expected = await _votes(sim, "final-show", 10)
        await page.wait_counts(expected)
        await page.wait_rate("r > 0", timeout_ms=5_000)

        await sim.set_state("final-show", "closed")
        await sim.publish("final-show")
        await page.wait_status("closed")
        assert await page.page.inner_text("#status") == "VOTING CLOSED"
        assert await page.rate() == 0
        assert not await page.page.is_visible("#rate")
        await page.screenshot("results-1920x1080-closed.png")

        await sim.close("final-show")
        await page.wait_final()
        await page.wait_counts(expected)
        assert await page.page.inner_text("#status") == "FINAL RESULT"
        assert await page.rate() == 0
        await page.screenshot("results-1920x1080-final.png")
        assert await problems(page.page) == []


async def test_rate_falls_to_zero_within_15s_of_the_last_vote(
    browser: Browser, sim: LiveTally
) -> None:
    await sim.define("clap", [("clap", "Clap"), ("boo", "Boo")], title="Clap or boo")
    async with running_push(push_settings(sim.keys.prefix)) as push:
        page = ResultsPage(await watched_page(browser, 1280, 720))
        await page.open(push.http, "clap")
        await page.wait_status("live")
        for _ in range(25):
            await sim.add_votes("clap", {"clap": 4, "boo": 1})
            await sim.publish("clap")
            await asyncio.sleep(0.1)  # paces the tally; not an assertion
        last_vote = time.monotonic()
        await page.wait_counts({"clap": 100, "boo": 25})
        version = await page.page.get_attribute("body", "data-version")
        await page.wait_rate("r > 0", timeout_ms=5_000)
        # The sparkline is per second: the seconds that had votes stand above the baseline.
        points = await page.page.get_attribute("#spark-total polyline", "points") or ""
        heights = {p.split(",")[1] for p in points.split()}
        assert len(points.split()) == 60 and len(heights) > 1

        left_ms = (15 - (time.monotonic() - last_vote)) * 1000
        await page.wait_rate("r === 0", timeout_ms=left_ms)
        # Nothing was published after the last vote: the page got there on its own clock.
        assert await page.page.get_attribute("body", "data-version") == version
        assert await page.status() == "live"
        assert await page.page.inner_text("#rate") == "0"


async def test_phone_layout_fits_390x844(browser: Browser, sim: LiveTally) -> None:
    await sim.define("final-show", OPTIONS, title="Who wins the final?")
    async with running_push(push_settings(sim.keys.prefix)) as push:
        page = ResultsPage(await watched_page(browser, 390, 844, device_scale_factor=2))
        await page.open(push.http, "final-show")
        await page.wait_status("live")
        expected = await _votes(sim, "final-show", 10)
        await page.wait_counts(expected)
        await page.screenshot("results-390x844-phone.png")
        lay = await _layout(page.page)
        assert lay["scrollWidth"] <= 390
        for b in lay["boxes"]:
            assert b["x"] >= 0 and b["r"] <= 390 and b["y"] >= 0 and b["b"] <= 844, b
        assert min(label["font"] for label in lay["labels"]) >= 16
        assert lay["titleFont"] >= 24
        assert await problems(page.page) == []


@pytest.mark.parametrize(
    ("theme", "background"), [("transparent", "rgba(0, 0, 0, 0)"), ("chroma", "rgb(0, 177, 64)")]
)
async def test_theme_gives_a_background_a_mixer_can_key(
    browser: Browser, sim: LiveTally, theme: str, background: str
) -> None:
    await sim.define("final-show", OPTIONS, title="Who wins the final?")
    async with running_push(push_settings(sim.keys.prefix)) as push:
        page = ResultsPage(await watched_page(browser, 1920, 1080))
        await page.open(push.http, "final-show", f"&theme={theme}")
        await page.wait_status("live")
        expected = await _votes(sim, "final-show", 10)
        await page.wait_counts(expected)
        colours = await page.page.evaluate(
            "() => [document.documentElement, document.body].map(e => getComputedStyle(e).backgroundColor)"
        )
        assert colours == [background, background]
        await page.screenshot(f"results-1920x1080-{theme}.png", omit_background=True)
        assert await problems(page.page) == []


async def test_results_page_shows_disconnect_and_resumes(browser: Browser, sim: LiveTally) -> None:
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
