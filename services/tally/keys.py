"""Typed application state of the tally process."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from services.common.db import LazyPool
from services.common.settings import TallySettings
from services.tally.service import Tally

SETTINGS = web.AppKey("settings", TallySettings)
REDIS = web.AppKey("redis", Redis)
PG = web.AppKey("pg", LazyPool)
TALLY = web.AppKey("tally", Tally)
