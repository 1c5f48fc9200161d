"""Typed application state of the ingest process: its one set of app keys, used by the
append path and the gateway alike, all set by ``create_app`` and its cleanup contexts."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web
from prometheus_client import Counter
from redis.asyncio import Redis

from services.common.attest import Attestation
from services.common.messages import Keys
from services.common.oidc import OidcVerifier
from services.common.scripts import Placement, Scripts
from services.common.settings import IngestSettings
from services.common.tokens import Operators, TokenService
from services.ingest.appender import Appender
from services.ingest.monitor import BacklogMonitor, PollCache

SETTINGS = web.AppKey("settings", IngestSettings)
KEYS = web.AppKey("keys", Keys)
PLACEMENT: web.AppKey[Placement] = web.AppKey("placement")
"""Each device's partition and account key (scripts.placements)."""
REDIS = web.AppKey("redis", Redis)
SCRIPTS = web.AppKey("scripts", Scripts)
APPENDER = web.AppKey("appender", Appender)
POLLS = web.AppKey("poll_cache", PollCache)
BACKLOG = web.AppKey("backlog", BacklogMonitor)
PG = web.AppKey("pg", asyncpg.Pool)
TOKEN_SERVICE = web.AppKey("token_service", TokenService)
OPERATORS = web.AppKey("operators", Operators)
OIDC = web.AppKey("oidc", OidcVerifier)
ATTESTATION = web.AppKey("attestation", Attestation)
REGISTRATIONS = web.AppKey("registrations", Counter)
"""Device registrations by result (``anonymous``, ``account``, or why refused)."""


@dataclass(frozen=True, slots=True)
class VotePath:
    """What the vote handler reads of the app, under one key: each ``app[KEY]`` is a
    Python call (``Application.__getitem__``), and a vote made eight of them."""

    settings: IngestSettings
    keys: Keys
    placement: Placement
    tokens: TokenService
    polls: PollCache
    backlog: BacklogMonitor
    appender: Appender


VOTE_PATH = web.AppKey("vote_path", VotePath)
"""Set with the appender (app.redis_ctx), from the keys above."""
