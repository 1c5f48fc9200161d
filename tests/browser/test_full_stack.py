"""The operator console and the results page in real headless Chromium, against the
whole stack behind HAProxy: the console creates and opens a poll, real votes are cast
over HTTP, the results page reaches the exact totals, the console closes the poll and
the page shows the final result."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.browser.results_page import ARTIFACTS, ResultsPage, chromium
from tests.support.stack import RunningStack, api, local_stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(180)]


async def scenario(rs: RunningStack) -> None:
    base = rs.url
    ARTIFACTS.mkdir(exist_ok=True)
    async with chromium() as browser:
        console = await browser.new_page()
        console.on("dialog", lambda d: asyncio.ensure_future(d.accept()))  # "Close …?" confirm
        await console.goto(f"{base}/console")
        await console.fill("#token", rs.admin)
        await console.press("#token", "Enter")
        await console.wait_for_selector("#app:not([hidden])")
        show_name = f"Browser night {uuid.uuid4().hex[:6]}"  # the database outlives the run
        await console.fill("#show-name", show_name)
        await console.press("#show-name", "Enter")
        show_row = console.locator("#shows tr", has_text=show_name)
        await show_row.get_by_role("button", name="Polls").click()
        await console.fill("#poll-title", "Clap or boo")
        await console.locator(".opt-label").nth(0).fill("Clap")  # keys made: clap, boo
        await console.locator(".opt-label").nth(1).fill("Boo")
        await console.fill("#poll-max-count", "10")
        await console.locator("#poll-form button[type=submit]").click()
        row = console.locator("#polls tr", has_text="Clap or boo")
        await row.get_by_role("button", name="Open").click()
        await row.locator(".state", has_text="open").wait_for()
        poll = str(await row.get_attribute("data-poll"))

        results = ResultsPage(await browser.new_page())
        await results.open(base, poll)
        await results.wait_status("live")

        sent: Counter[str] = Counter()
        async with aiohttp.ClientSession() as s:
            tokens = [
                (await api(s, "POST", f"{base}/v1/devices", expect=201))["token"] for _ in range(20)
            ]
            for i in range(200):
                option = "clap" if i % 3 else "boo"
                count = 1 + i % 5
                body = {"option": option, "count": count, "vote_id": str(uuid.uuid4())}
                async with s.post(
                    f"{base}/v1/polls/{poll}/votes",
                    json=body,
                    headers={"Authorization": f"Bearer {tokens[i % 20]}"},
                ) as r:
                    assert r.status == 202, await r.text()
                    sent[option] += (await r.json())["accepted"]
        await results.wait_counts(dict(sent), timeout_ms=20_000)

        # Live ops figures on the console: the viewer count includes the results page.
        await console.wait_for_function(
            "() => Number(document.getElementById('ops-viewers').textContent) >= 1", timeout=15_000
        )

        await row.get_by_role("button", name="Close").click()
        await results.wait_final(timeout_ms=20_000)
        assert await results.counts() == dict(sent)
        await row.locator(".state", has_text="closed (final)").wait_for(timeout=20_000)
        await results.page.screenshot(path=str(ARTIFACTS / "results-page-full-stack.png"))
        await console.screenshot(path=str(ARTIFACTS / "console-full-stack.png"))


def test_console_and_results_page_against_the_whole_stack(tmp_path: Path) -> None:
    with local_stack(
        tmp_path, database="buzzer_test_browser", ingest=2, haproxy=True, push=True
    ) as rs:
        asyncio.run(scenario(rs))
