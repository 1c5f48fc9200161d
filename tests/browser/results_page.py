"""Page objects for the results graphic and the console, shared by the browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

# Records what the browser refused or failed at, so a test can say the page ran clean:
# a Content-Security-Policy that blocks the page's own styles fails silently otherwise.
_WATCH = """
window.__problems = [];
document.addEventListener('securitypolicyviolation', (e) =>
    window.__problems.push(`CSP ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`));
window.addEventListener('error', (e) => window.__problems.push(`error: ${e.message}`));
"""


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium driven by Playwright (no ``playwright install``)."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def watched_page(browser: Browser, width: int = 1920, height: int = 1080, **kw: Any) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": height}, **kw)
    await page.add_init_script(_WATCH)
    return page


async def problems(page: Page) -> list[str]:
    """CSP violations and uncaught errors the page met so far."""
    found: list[str] = await page.evaluate("() => window.__problems")
    return found


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


class ResultsPage:
    def __init__(self, page: Page) -> None:
        self.page = page

    async def open(self, base_url: str, poll: str, query: str = "") -> None:
        await self.page.goto(f"{base_url}/results?poll={poll}{query}")

    async def status(self) -> str:
        return await self.page.get_attribute("#status", "data-state") or ""

    async def wait_status(self, state: str, timeout_ms: float = 10_000) -> None:
        await self.page.wait_for_selector(f'#status[data-state="{state}"]', timeout=timeout_ms)

    async def counts(self) -> dict[str, int]:
        values: dict[str, str] = await self.page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('.option')].map(
                   el => [el.dataset.option, el.querySelector('.count').dataset.value]))"""
        )
        return {k: int(v) for k, v in values.items()}

    async def total(self) -> int:
        return int(await self.page.get_attribute("#total", "data-value") or 0)

    async def rate(self) -> float:
        return float(await self.page.get_attribute("#rate", "data-value") or 0)

    async def wait_rate(self, js_condition: str, timeout_ms: float) -> None:
        """Until ``js_condition`` holds for ``r``, the votes per second on screen."""
        await self.page.wait_for_function(
            f"() => {{ const r = Number(document.getElementById('rate').dataset.value); "
            f"return {js_condition}; }}",
            timeout=timeout_ms,
        )

    async def wait_counts(self, expected: Mapping[str, int], timeout_ms: float = 10_000) -> None:
        """Until every option's count and the total on screen are exactly ``expected``."""
        await self.page.wait_for_function(
            """(exp) => {
                const els = [...document.querySelectorAll('.option')];
                if (els.length !== Object.keys(exp).length) return false;
                let total = 0;
                for (const el of els) {
                    const v = Number(el.querySelector('.count').dataset.value);
                    if (v !== exp[el.dataset.option]) return false;
                    total += v;
                }
                return Number(document.getElementById('total').dataset.value) === total;
            }""",
            arg=dict(expected),
            timeout=timeout_ms,
        )

    async def wait_final(self, timeout_ms: float = 10_000) -> None:
        await self.page.wait_for_selector('body[data-final="true"]', timeout=timeout_ms)
        await self.wait_status("final", timeout_ms)

    async def settle(self) -> None:
        """Until the bars' transitions have ended, so a screenshot shows where they land."""
        await self.page.wait_for_function(
            "() => document.getAnimations().every(a => a.playState !== 'running' || "
            "a.effect.getTiming().iterations === Infinity)"
        )

    async def screenshot(self, name: str = "results-page.png", **kw: Any) -> Path:
        await self.settle()
        path = artifact(name)
        await self.page.screenshot(path=str(path), **kw)
        return path
