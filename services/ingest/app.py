"""The public vote API process: its gateway (auth, validation, contract, show control,
in ``services.ingest.gateway``) and the coalesced append, in one process, so a vote
crosses exactly one Python process between the load balancer and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from cryptography import x509
from prometheus_client import Counter, Gauge, Histogram

from services.common import redisconn
from services.common.attest import AppAttestVerifier, Attestation, AttestationVerifier
from services.common.db import LazyPool
from services.common.observability import OBS, setup_observability
from services.common.oidc import OidcVerifier
from services.common.scripts import Scripts, placements
from services.common.settings import IngestSettings
from services.common.tokens import Operators, TokenService
from services.ingest.appender import Appender
from services.ingest.gateway.auth import JwksFetcher
from services.ingest.gateway.edge import edge
from services.ingest.gateway.limits import HANDLER_ARGS
from services.ingest.keys import (
    APPENDER,
    ATTESTATION,
    BACKLOG,
    KEYS,
    OIDC,
    OPERATORS,
    PG,
    PLACEMENT,
    POLLS,
    REDIS,
    REGISTRATIONS,
    SCRIPTS,
    SETTINGS,
    TOKEN_SERVICE,
    VOTE_PATH,
    VotePath,
)
from services.ingest.monitor import BacklogMonitor, PollCache
from services.ingest.routes import setup_routes
from services.ingest.transport import transport_for

log = logging.getLogger("buzzer.ingest")


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Short timeouts: a vote waiting on a Redis that is away must turn into a 503
    # with Retry-After quickly, not a client timeout.
    client = redisconn.connect(
        settings.redis_url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        health_check_interval=0,
        max_connections=64,
    )
    app[REDIS] = client
    app[SCRIPTS] = Scripts.register(client)
    app[POLLS] = PollCache(client, app[KEYS], settings.poll_cache_ttl_s)
    transport = transport_for(client, settings.ack_replicas, settings.ack_timeout_ms)
    app[APPENDER] = appender = Appender(
        client,
        app[SCRIPTS],
        app[KEYS],
        settings.max_inflight,
        settings.max_pipelines,
        transport=transport,
        flush_at=settings.flush_at_votes,
    )
    monitor = BacklogMonitor(client, app[KEYS])
    app[BACKLOG] = monitor
    app[VOTE_PATH] = VotePath(
        settings=settings,
        keys=app[KEYS],
        placement=app[PLACEMENT],
        tokens=app[TOKEN_SERVICE],
        polls=app[POLLS],
        backlog=monitor,
        appender=appender,
    )
    obs = app[OBS]
    Gauge(
        "buzzer_ingest_backlog", "Unapplied vote entries (all partitions)", registry=obs.registry
    ).set_function(lambda: monitor.backlog)
    Gauge("buzzer_ingest_inflight", "Votes waiting for Redis", registry=obs.registry).set_function(
        lambda: appender.inflight
    )
    Gauge(
        "buzzer_ingest_pipeline_flushes", "Pipelines sent to Redis", registry=obs.registry
    ).set_function(lambda: appender.flushes)
    Gauge(
        "buzzer_ingest_appends", "Votes sent to Redis in pipelines", registry=obs.registry
    ).set_function(lambda: appender.sent)
    sizes = Histogram(
        "buzzer_ingest_pipeline_votes",
        "Votes per pipeline sent to Redis",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
        registry=obs.registry,
    )
    rtt = Histogram(
        "buzzer_ingest_pipeline_seconds",
        "Round trip of one pipeline to Redis",
        buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
        registry=obs.registry,
    )

    def observe(votes: int, seconds: float) -> None:
        sizes.observe(votes)
        rtt.observe(seconds)

    appender.observe = observe
    async with monitor.running(watch=obs.essential):
        yield
        # Graceful stop: aiohttp already waited for handlers; answer whatever is queued.
        await appender.drain(timeout=settings.shutdown_timeout_s)
        await appender.aclose()
    await client.aclose()
    log.info(
        "ingest stopped",
        extra={
            "appended": appender.sent,
            "pipelines": appender.flushes,
            "unanswered": appender.inflight,
        },
    )


async def pg_ctx(app: web.Application) -> AsyncIterator[None]:
    # Only the admin API needs PostgreSQL, and votes must keep flowing without it: with
    # min_size=0 the pool connects on first use, so ingest starts while PostgreSQL is away.
    settings = app[SETTINGS]
    dsn = settings.database_url.get_secret_value()
    pg = LazyPool(dsn, size=4, min_size=0)
    app[PG] = await pg.pool()
    yield
    with contextlib.suppress(asyncio.TimeoutError):
        await pg.close(timeout=5)


def _attestation(settings: IngestSettings) -> Attestation:
    verifiers: list[AttestationVerifier] = []
    if settings.app_attest_root is not None:
        root = x509.load_pem_x509_certificate(settings.app_attest_root.read_bytes())
        verifiers.append(
            AppAttestVerifier(
                settings.app_attest_app_id,
                root,
                allow_development=settings.app_attest_allow_development,
            )
        )
    # Play Integrity needs Google's decodeIntegrityToken, which a deployment plugs in
    # (services/common/attest.py); until then a policy naming android fails at start.
    return Attestation(verifiers, settings.attestation_policy)


def create_app(settings: IngestSettings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, handler_args=HANDLER_ARGS)
    app[SETTINGS] = settings
    app[KEYS] = settings.keys()
    app[PLACEMENT] = placements(app[KEYS])
    app[TOKEN_SERVICE] = TokenService(
        settings.token_secret,
        settings.token_secrets_previous,
        audience=settings.token_audience,
        ttl_s=settings.token_ttl_s,
    )
    app[OPERATORS] = Operators(
        settings.admin_token, settings.operator_tokens, settings.operator_tokens_file
    )

    async def redis_check() -> None:
        await app[REDIS].ping()

    async def pg_check() -> None:
        await app[PG].fetchval("SELECT 1")

    setup_observability(
        app,
        "ingest",
        {"redis": redis_check, "postgres": pg_check},
        optional=frozenset({"postgres"}),
        with_middleware=False,
        # OBS is set by the time the health routes are wrapped.
        wrap=lambda path, handler: edge(path, handler, app[OBS]),
    )
    app[REGISTRATIONS] = Counter(
        "buzzer_device_registrations",
        "POST /v1/devices by result: anonymous, account, or the reason it was refused",
        ["result"],
        registry=app[OBS].registry,
    )
    fetcher = JwksFetcher()
    app[OIDC] = OidcVerifier(
        settings.oidc_issuers,
        fetcher,
        ttl_s=settings.jwks_cache_s,
        min_refetch_s=settings.jwks_min_refetch_s,
    )

    app[ATTESTATION] = _attestation(settings)

    async def oidc_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await fetcher.close()

    app.cleanup_ctx.append(oidc_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(pg_ctx)
    setup_routes(app)
    return app
