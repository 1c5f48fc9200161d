"""Typed application state of the push process."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from redis.asyncio import Redis

from services.common.messages import Keys
from services.common.settings import PushSettings
from services.push.hub import Hub
from services.push.ops import OpsReader, ViewerCount

SETTINGS = web.AppKey("settings", PushSettings)
KEYS = web.AppKey("keys", Keys)
REDIS = web.AppKey("redis", Redis)
HUB = web.AppKey("hub", Hub)
OPS = web.AppKey("ops", OpsReader)
VERIFY_TOKEN = web.AppKey[Callable[[str], str]]("verify_token")
"""Device token -> device id; raises on an invalid token. Only set if tokens are required."""
VIEWERS = web.AppKey("viewers", ViewerCount)
