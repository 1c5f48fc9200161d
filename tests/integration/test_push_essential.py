"""Push's updates reader is essential: should it end while push serves, push says so at
once and stops being ready, instead of serving counts that no longer move."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from services.push import app as push_app
from tests.support import eventually
from tests.support.push import push_settings, running_push

pytestmark = pytest.mark.integration


async def test_a_reader_that_dies_makes_push_unready(monkeypatch: pytest.MonkeyPatch) -> None:
    class Dying(push_app.UpdatesReader):  # type: ignore[misc]
        async def run(self, *args: Any, **kwargs: Any) -> None:
            raise ValueError("an update it could not read")

    monkeypatch.setattr(push_app, "UpdatesReader", Dying)
    async with running_push(push_settings()) as push, aiohttp.ClientSession() as s:

        async def unready() -> bool:
            async with s.get(f"{push.http}/readyz") as r:
                body = await r.json()
                return r.status == 503 and body["checks"].get("task push-reader") == (
                    "ended: ValueError: an update it could not read"
                )

        await eventually(unready, 10)
