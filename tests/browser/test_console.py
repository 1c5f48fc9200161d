"""The operator console in real headless Chromium, against the whole stack behind
HAProxy: a wrong token says so, an error stays on screen through the list's refreshes
and names its field, Japanese labels make a poll, each poll shows live counts, rate and
state, open and close ask first, and the limits are the server's."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Page

from tests.browser.results_page import (
    CHROMIUM,
    ResultsPage,
    artifact,
    chromium,
    problems,
    watched_page,
)
from tests.support.stack import RunningStack, api, local_stack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed"),
]


OPERATOR = "Maya Lindqvist"
OPERATOR_TOKEN = "maya-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    database = os.environ.get("TEST_DATABASE", "buzzer_test") + "_console"
    operators = json.dumps({OPERATOR: OPERATOR_TOKEN})
    with local_stack(
        tmp_path_factory.mktemp("console"),
        database=database,
        ingest=1,
        haproxy=True,
        push=True,
        extra_env={"BUZZER_OPERATOR_TOKENS": operators},
    ) as rs:
        yield rs


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def _login(browser: Browser, rs: RunningStack, token: str | None = None) -> Page:
    page = await watched_page(browser, 1440, 1000)
    await page.goto(f"{rs.url}/console")
    await page.wait_for_selector('body[data-limits="server"]')
    await page.fill("#token", token or rs.admin)
    await page.press("#token", "Enter")
    await page.wait_for_selector("#app:not([hidden])")
    return page


async def _show(page: Page) -> str:
    name = f"Saturday night {uuid.uuid4().hex[:6]}"  # the database outlives the run
    await page.fill("#show-name", name)
    await page.press("#show-name", "Enter")
    await page.locator("#shows tr", has_text=name).get_by_role("button", name="Polls").click()
    await page.wait_for_selector("#polls-section:not([hidden])")
    return name


async def _fill_poll(page: Page, title: str, labels: list[str]) -> None:
    await page.fill("#poll-title", title)
    for _ in range(len(labels) - await page.locator(".opt-row").count()):
        await page.click("#add-option")
    for i, label in enumerate(labels):
        await page.locator(".opt-label").nth(i).fill(label)


async def _keys(page: Page) -> list[str]:
    return [await k.input_value() for k in await page.locator(".opt-key").all()]


async def _refreshes(page: Page) -> int:
    return int(await page.get_attribute("#polls", "data-refreshes") or 0)


async def test_a_wrong_token_says_so(browser: Browser, stack: RunningStack) -> None:
    page = await watched_page(browser, 1200, 700)
    await page.goto(f"{stack.url}/console")
    await page.fill("#token", "not-the-token")
    await page.press("#token", "Enter")
    error = page.locator("#login-error")
    await error.wait_for()
    assert "Invalid token" in await error.inner_text()
    assert await page.is_visible("#login") and not await page.is_visible("#app")
    await page.screenshot(path=str(artifact("console-bad-token.png")))
    assert await problems(page) == []


async def test_an_error_stays_for_5s_through_refreshes_and_names_its_field(
    browser: Browser, stack: RunningStack
) -> None:
    page = await _login(browser, stack)
    await _show(page)
    await _fill_poll(page, "Clap or boo", ["Clap", "Boo"])
    assert await _keys(page) == ["clap", "boo"]
    await page.locator(".opt-key").nth(1).fill("clap")  # the operator's own duplicate
    await page.click("#poll-form button[type=submit]")

    error = page.locator("#poll-error")
    await error.wait_for()
    assert await error.get_attribute("data-field") == "options"
    assert (await error.inner_text()).startswith("Options: option keys must be unique")
    assert "invalid" in (await page.get_attribute("#poll-options", "class") or "")
    # Watch the box from now on: any moment it is hidden or emptied is recorded.
    await page.evaluate(
        """() => {
            const box = document.getElementById('poll-error');
            window.__errorGone = 0;
            window.__since = performance.now();
            new MutationObserver(() => { if (box.hidden || !box.textContent) window.__errorGone++; })
                .observe(box, {attributes: true, childList: true, subtree: true, characterData: true});
        }"""
    )
    start = await _refreshes(page)
    await page.wait_for_function(
        "(n) => performance.now() - window.__since >= 5000 && "
        "Number(document.getElementById('polls').dataset.refreshes) >= n",
        arg=start + 3,
        timeout=20_000,
    )
    assert await page.evaluate("() => window.__errorGone") == 0
    assert await error.is_visible()
    await page.screenshot(path=str(artifact("console-error.png")), full_page=True)

    # A field inside an option: the message says which option, and its input is marked.
    await page.locator(".opt-key").nth(1).fill("Boo!")
    await page.click("#poll-form button[type=submit]")
    await page.wait_for_selector('#poll-error[data-field="options[1].key"]')
    assert (await error.inner_text()).startswith("Option 2 key:")
    assert "invalid" in (await page.locator(".opt-key").nth(1).get_attribute("class") or "")

    # Fixed: the error goes with the success, and the poll is listed.
    await page.locator(".opt-key").nth(1).fill("boo")
    await page.click("#poll-form button[type=submit]")
    await page.locator("#polls tr", has_text="Clap or boo").wait_for()
    assert not await error.is_visible()

    # Dismissed: an error the operator has read goes when asked.
    await page.click("#poll-form button[type=submit]")  # an empty form this time
    await error.wait_for()
    await error.get_by_role("button", name="Dismiss").click()
    assert not await error.is_visible()
    assert await problems(page) == []


async def test_japanese_labels_make_a_poll_with_live_counts_and_confirmations(
    browser: Browser, stack: RunningStack
) -> None:
    page = await _login(browser, stack)
    await _show(page)
    await _fill_poll(page, "好きな季節は？", ["春", "夏", "秋"])
    assert await _keys(page) == ["opt1", "opt2", "opt3"]
    assert await page.locator(".opt-key").nth(0).is_editable()
    await page.click("#poll-form button[type=submit]")
    row = page.locator("#polls tr", has_text="好きな季節は？")
    await row.wait_for()
    poll = str(await row.get_attribute("data-poll"))
    assert not await page.is_visible("#poll-error")

    # Open asks first; "Cancel" leaves the poll as it was.
    questions: list[str] = []
    answer = {"accept": False}

    async def on_dialog(d: Dialog) -> None:
        questions.append(d.message)
        await (d.accept() if answer["accept"] else d.dismiss())

    page.on("dialog", lambda d: asyncio.ensure_future(on_dialog(d)))
    await row.get_by_role("button", name="Open").click()
    start = await _refreshes(page)
    await page.wait_for_function(
        "(n) => Number(document.getElementById('polls').dataset.refreshes) >= n", arg=start + 2
    )
    assert questions == ["Open “好きな季節は？”? Viewers can vote from now on."]
    assert await row.locator(".state").inner_text() == "draft"
    answer["accept"] = True
    await row.get_by_role("button", name="Open").click()
    await row.locator('.state[data-state="open"]').wait_for()

    results = ResultsPage(await watched_page(browser, 1920, 1080))
    await results.open(stack.url, poll)
    await results.wait_status("live")
    labels = await results.page.locator(".label").all_inner_texts()
    assert labels == ["春", "夏", "秋"]

    async with aiohttp.ClientSession() as s:
        device = (await api(s, "POST", f"{stack.url}/v1/devices", expect=201))["token"]
        for option, n in (("opt1", 1), ("opt2", 1), ("opt1", 1)):
            body = {"option": option, "count": n, "vote_id": str(uuid.uuid4())}
            async with s.post(
                f"{stack.url}/v1/polls/{poll}/votes",
                json=body,
                headers={"Authorization": f"Bearer {device}"},
            ) as r:
                assert r.status == 202, await r.text()
    await row.locator('.votes[data-value="3"]').wait_for(timeout=15_000)
    await page.wait_for_function(
        "(p) => Number(document.querySelector(`#polls tr[data-poll='${p}'] .rate`).dataset.value) > 0",
        arg=poll,
        timeout=15_000,
    )
    await results.wait_counts({"opt1": 2, "opt2": 1, "opt3": 0})
    await results.screenshot("results-1920x1080-japanese.png")
    await page.screenshot(path=str(artifact("console-live.png")), full_page=True)

    await row.get_by_role("button", name="Close").click()
    await row.locator('.state[data-state="final"]').wait_for(timeout=30_000)
    assert questions[-1] == "Close “好きな季節は？”? Votes after this are refused."
    assert await row.locator(".rate").inner_text() == "–"
    await results.wait_final(timeout_ms=20_000)
    # The archive's digest, frozen with the result, is shown once the archive is complete.
    await row.locator(".digest").wait_for(timeout=30_000)
    assert len((await row.locator(".digest").inner_text()).split()[-1]) == 64
    assert await problems(page) == [] and await problems(results.page) == []


def _luminance(rgb: list[float]) -> float:
    def lin(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


async def test_limits_are_the_servers_and_the_results_link_is_readable(
    browser: Browser, stack: RunningStack
) -> None:
    async with aiohttp.ClientSession() as s:
        schema = await api(s, "GET", f"{stack.url}/v1/openapi.json")
    body = schema["paths"]["/v1/admin/polls"]["post"]["requestBody"]["content"]
    ref = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    title_max = schema["components"]["schemas"][ref]["properties"]["title"]["maxLength"]
    page = await _login(browser, stack)
    await _show(page)
    assert await page.eval_on_selector("#poll-title", "el => el.maxLength") == title_max
    await page.fill("#poll-title", "")
    await page.type("#poll-title", "x" * (title_max + 20), delay=0)
    assert len(await page.input_value("#poll-title")) == title_max
    assert await page.inner_text("#poll-title-count") == f"{title_max} / {title_max}"

    await _fill_poll(page, "Contrast", ["Yes", "No"])
    await page.click("#poll-form button[type=submit]")
    link = page.locator("#polls tr", has_text="Contrast").locator(".results-link")
    await link.wait_for()
    colours: list[list[float]] = await link.evaluate(
        """(el) => {
            const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
            let bg = el;
            while (bg && rgb(getComputedStyle(bg).backgroundColor)[3] === 0) bg = bg.parentElement;
            return [rgb(getComputedStyle(el).color), rgb(getComputedStyle(bg).backgroundColor)];
        }"""
    )
    fg, bg = (_luminance(c) for c in colours)
    ratio = (max(fg, bg) + 0.05) / (min(fg, bg) + 0.05)
    assert ratio >= 4.5, (colours, ratio)  # WCAG AA for normal text


async def test_the_audit_log_shows_who_did_what(browser: Browser, stack: RunningStack) -> None:
    page = await _login(browser, stack, OPERATOR_TOKEN)
    show = await _show(page)
    title = f"Encore? {uuid.uuid4().hex[:4]}"
    await _fill_poll(page, title, ["Yes", "No"])
    await page.click("#poll-form button[type=submit]")
    row = page.locator("#polls tr", has_text=title)
    await row.wait_for()
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await row.get_by_role("button", name="Open").click()
    await row.locator('.state[data-state="open"]').wait_for()

    opened = page.locator("#audit tr", has_text="Opened poll").filter(has_text=OPERATOR)
    await opened.first.wait_for(timeout=10_000)
    ours = page.locator("#audit tr").filter(has_text=OPERATOR)
    seen = [[await c.inner_text() for c in await tr.locator("td").all()] for tr in await ours.all()]
    # Newest first: open, then the poll (by its title), then the show (by its name).
    whats = [(who, what) for _, who, what, _ in seen]
    assert whats[:3] == [
        (OPERATOR, "Opened poll"),
        (OPERATOR, "Created poll"),
        (OPERATOR, "Created show"),
    ], seen
    assert title in seen[0][3] and title in seen[1][3] and show in seen[2][3]
    assert all(when for when, *_ in seen)
    assert await page.is_hidden("#audit-empty")
    await page.locator("#audit-section").scroll_into_view_if_needed()
    await page.screenshot(path=str(artifact("console-audit.png")), full_page=True)
    assert await problems(page) == []
