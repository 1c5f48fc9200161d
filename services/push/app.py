"""The push process: websockets for live counts, the results page and the operator console."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from prometheus_client import Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.common import redisconn
from services.common.limits import handler_args
from services.common.observability import OBS, setup_observability
from services.common.redisconn import REDIS_AWAY
from services.common.settings import PushSettings
from services.common.tokens import Operators, TokenService
from services.push.handlers import page_headers
from services.push.hub import Hub
from services.push.keys import HUB, KEYS, OPERATORS, OPS, REDIS, SETTINGS, VERIFY_TOKEN, VIEWERS
from services.push.ops import OpsReader, ViewerCount, remove_viewers, report_viewers
from services.push.reader import UpdatesReader
from services.push.routes import setup_routes

log = logging.getLogger("buzzer.push")


def token_verifier(settings: PushSettings) -> Callable[[str], str]:
    """The device-token check ingest uses too, so a token ingest issued opens a socket here."""
    service = TokenService(
        settings.token_secret, settings.token_secrets_previous, audience=settings.token_audience
    )
    return service.verify


class HubCollector(Collector):
    """Counters read from the hub's plain integers at scrape time: nothing on the hot path."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        s = self.hub.stats
        for name, doc, value in (
            ("buzzer_push_updates_received", "Tally updates read from the stream", s.received),
            ("buzzer_push_updates_stale", "Updates not newer than the poll's state", s.stale),
            (
                "buzzer_push_updates_undecodable",
                "Stream entries that were not a TallyUpdate",
                s.undecodable,
            ),
            (
                "buzzer_push_broadcasts",
                "Fan-outs of one update to a poll's subscribers",
                s.broadcasts,
            ),
            ("buzzer_push_messages_sent", "Messages written to websockets", s.sent),
            (
                "buzzer_push_updates_coalesced",
                "Updates a slow client skipped for a newer one",
                s.coalesced,
            ),
            ("buzzer_push_snapshot_reads", "Live-counter reads for snapshots", s.snapshots_read),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        closes = CounterMetricFamily(
            "buzzer_push_disconnects",
            "Sockets closed by the server, by close code",
            labels=["code"],
        )
        for code, n in s.disconnects.items():
            closes.add_metric([code], n)
        yield closes
        refused = CounterMetricFamily(
            "buzzer_push_refused", "Sockets refused at connect, by close code", labels=["code"]
        )
        for code, n in self.hub.admission.rejected.items():
            refused.add_metric([code], n)
        yield refused


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    keys = app[KEYS]
    client = redisconn.connect(
        settings.redis_url, socket_connect_timeout=2.0, health_check_interval=0
    )
    app[REDIS] = client
    registry = app[OBS].registry
    fanout = Histogram(
        "buzzer_push_fanout_seconds",
        "Time to write one update to every subscriber of its poll",
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
        registry=registry,
    )
    delay = Histogram(
        "buzzer_push_delivery_delay_seconds",
        "From the tally's publication (ts) to the update written to every subscriber",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5),
        registry=registry,
    )

    def on_fanout(elapsed: float, since_publish: float) -> None:
        fanout.observe(elapsed)
        delay.observe(since_publish)

    hub = Hub(
        client,
        keys,
        min_interval_s=settings.min_interval_ms / 1000,
        send_buffer_limit=settings.send_buffer_limit_bytes,
        slow_client_timeout_s=settings.slow_client_timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
        close_timeout_s=settings.close_timeout_s,
        snapshot_cache_s=settings.snapshot_cache_ms / 1000,
        max_connections=settings.max_connections,
        max_connections_per_ip=settings.max_connections_per_ip,
        max_connections_per_device=settings.max_connections_per_device,
        on_fanout=on_fanout,
    )
    app[HUB] = hub
    app[OPS] = OpsReader(client, keys)
    viewers = app[VIEWERS]
    registry.register(HubCollector(hub))
    Gauge(
        "buzzer_push_connections", "Open websockets in this process", registry=registry
    ).set_function(lambda: len(hub.clients))
    Gauge(
        "buzzer_push_subscriptions", "Poll subscriptions in this process", registry=registry
    ).set_function(hub.subscriptions)
    Gauge(
        "buzzer_push_viewers_total", "Open websockets over every push process", registry=registry
    ).set_function(lambda: viewers.total)
    Gauge(
        "buzzer_push_slow_clients", "Clients with updates waiting to be written", registry=registry
    ).set_function(lambda: len(hub.deferred))
    Gauge(
        "buzzer_push_client_send_buffer_max_bytes",
        "Largest unsent byte count of a waiting client",
        registry=registry,
    ).set_function(hub.max_send_buffer)
    Gauge(
        "buzzer_push_client_pending_max",
        "Most updates waiting for one client (one per poll)",
        registry=registry,
    ).set_function(hub.max_pending)

    obs = app[OBS]
    tasks = [
        obs.essential(
            asyncio.create_task(
                UpdatesReader(client, keys.updates, hub.on_update).run(
                    block_ms=settings.xread_block_ms
                ),
                name="push-reader",
            )
        ),
        obs.essential(asyncio.create_task(hub.housekeeping(), name="push-housekeeping")),
        obs.essential(asyncio.create_task(_report_viewers(app), name="push-viewers")),
    ]
    yield
    for t in tasks:
        t.cancel()
    # A cancel that lands inside redis-py's blocking XREAD can be lost there, leaving the
    # reader waiting on its socket: wait a little, and closing the client below (which
    # drops that socket) ends it. Unbounded, this wait hung SIGTERM (bench push).
    _, stuck = await asyncio.wait(tasks, timeout=1.0)
    await hub.stop()
    with contextlib.suppress(*REDIS_AWAY):
        await remove_viewers(client, keys, settings.instance_id)
    await client.aclose()
    if stuck:
        await asyncio.wait(stuck, timeout=2.0)
        for t in stuck:
            if not t.done():
                log.warning("task still running at shutdown", extra={"task": t.get_name()})


async def _report_viewers(app: web.Application) -> None:
    settings = app[SETTINGS]
    hub = app[HUB]
    viewers = app[VIEWERS]
    while True:
        try:
            viewers.total = await report_viewers(
                app[REDIS],
                app[KEYS],
                settings.instance_id,
                len(hub.clients),
                settings.viewers_interval_s,
            )
        except REDIS_AWAY as exc:
            log.warning("viewer count not reported", extra={"error": str(exc)})
        await asyncio.sleep(settings.viewers_interval_s)


async def close_clients(app: web.Application) -> None:
    settings = app[SETTINGS]
    hub = app[HUB]
    n = await hub.shutdown(grace_s=settings.close_timeout_s + 1)
    log.info(
        "push shutdown: clients closed with 1001",
        extra={"clients": n, "still_open": len(hub.clients), "messages_sent": hub.stats.sent},
    )


def create_app(settings: PushSettings) -> web.Application:
    app = web.Application(middlewares=[page_headers], handler_args=handler_args("buzzer.push.http"))
    app[SETTINGS] = settings
    app[KEYS] = settings.keys()
    app[VIEWERS] = ViewerCount()
    app[VERIFY_TOKEN] = token_verifier(settings)
    app[OPERATORS] = Operators(
        settings.admin_token, settings.operator_tokens, settings.operator_tokens_file
    )

    async def redis_check() -> None:
        await app[REDIS].ping()

    setup_observability(app, "push", {"redis": redis_check})
    app.cleanup_ctx.append(hub_ctx)
    app.on_shutdown.append(close_clients)
    setup_routes(app)
    return app
