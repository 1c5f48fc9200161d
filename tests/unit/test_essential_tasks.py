"""An essential background task that ends while the process serves is logged at once
and fails readiness by name; cancelled, or ending while draining, it is not."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web

from services.common.observability import OBS, setup_observability

pytestmark = pytest.mark.unit


async def _fails() -> None:
    raise RuntimeError("reader lost its place")


async def _returns() -> None:
    return None


async def _runs() -> None:
    await asyncio.sleep(3600)


async def _settle(task: asyncio.Task[Any]) -> None:
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next turn


async def test_a_task_that_dies_is_logged_and_fails_readiness(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    obs = setup_observability(app, "push")
    client = await aiohttp_client(app)
    assert (await client.get("/readyz")).status == 200

    caplog.set_level(logging.ERROR, logger="buzzer.push")
    await _settle(obs.essential(asyncio.create_task(_fails(), name="push-reader")))
    [record] = [r for r in caplog.records if r.name == "buzzer.push"]
    assert record.getMessage() == "essential task ended: not ready"
    assert record.exc_info is not None and "lost its place" in str(record.exc_info[1])
    r = await client.get("/readyz")
    assert r.status == 503
    checks = (await r.json())["checks"]
    assert checks["task push-reader"] == "ended: RuntimeError: reader lost its place"

    # One that returns while serving has stopped doing its work just the same.
    await _settle(obs.essential(asyncio.create_task(_returns(), name="push-viewers")))
    assert app[OBS].ended["push-viewers"] == "returned"


async def test_stopping_is_not_dying() -> None:
    app = web.Application()
    obs = setup_observability(app, "tally")
    cancelled = obs.essential(asyncio.create_task(_runs(), name="votes-0"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await _settle(cancelled)
    assert obs.ended == {}
    # Draining: tasks end with the process, errors included (the shutdown reports those
    # still running).
    obs.ready = False
    await _settle(obs.essential(asyncio.create_task(_returns(), name="publisher")))
    await _settle(obs.essential(asyncio.create_task(_fails(), name="trimmer")))
    assert obs.ended == {}
