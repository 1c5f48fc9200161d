"""Typed application state of the push process."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from redis.asyncio import Redis

from services.common.messages import Keys
from services.common.settings import PushSettings
from services.common.tokens import Operators
from services.push.hub import Hub
from services.push.ops import OpsReader, ViewerCount

SETTINGS = web.AppKey("settings", PushSettings)
KEYS = web.AppKey("keys", Keys)
REDIS = web.AppKey("redis", Redis)
HUB = web.AppKey("hub", Hub)
OPS = web.AppKey("ops", OpsReader)
VERIFY_TOKEN = web.AppKey[Callable[[str], str]]("verify_token")
"""Device token -> device id; raises on an invalid token. Required only if
``require_token``; otherwise a valid token makes the socket count per device."""
OPERATORS = web.AppKey("operators", Operators)
VIEWERS = web.AppKey("viewers", ViewerCount)
