"""Helpers to run a push app in-process against a real Redis (tests, the browser test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.common.settings import PushSettings
from services.push.app import create_app
from services.push.hub import Hub
from services.push.keys import HUB

ADMIN_TOKEN = "test-admin-token"


def push_settings(prefix: str | None = None, **overrides: Any) -> PushSettings:
    """Settings for a test: its own key prefix, a fixed admin token, an ephemeral port."""
    values: dict[str, Any] = {
        "key_prefix": prefix or f"t{uuid.uuid4().hex[:12]}",
        "admin_token": ADMIN_TOKEN,
        "token_secret": "test-token-secret-0123456789abcdef0123456789",
        "port": 0,
        "viewers_interval_s": 0.2,
    }
    values.update(overrides)
    return PushSettings(**values)


@dataclass
class PushServer:
    app: web.Application
    runner: web.AppRunner
    port: int
    stopped: bool = False

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def hub(self) -> Hub:
        return self.app[HUB]

    async def stop(self) -> None:
        """What SIGTERM does under ``run_app``: on_shutdown (1001 to all), then cleanup."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


@asynccontextmanager
async def running_push(settings: PushSettings) -> AsyncIterator[PushServer]:
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    port = runner.addresses[0][1]
    server = PushServer(app=app, runner=runner, port=port)
    try:
        yield server
    finally:
        await server.stop()
