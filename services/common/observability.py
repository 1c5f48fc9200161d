"""Health, readiness, Prometheus metrics and structured logs, the same for every service."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from pythonjsonlogger.json import JsonFormatter

Check = Callable[[], Awaitable[None]]
"""A readiness check: returns when the dependency is usable, raises otherwise."""


def configure_logging(level: str = "INFO", service: str = "buzzer") -> None:
    """JSON lines on stderr: one object per event, with the service name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is off by default: at thousands of requests/s the metrics
    # say more for less.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class HttpMetrics(Collector):
    """Requests by route, method and status, and latency by route, counted in plain
    Python numbers and turned into Prometheus series only when scraped.

    Every request of every process records here, and prometheus-client's Counter and
    Histogram take a lock and walk the buckets per observation: about 3 µs a request,
    measured, where this costs a dict update and a bisect. The exposition is the same
    (``buzzer_http_requests_total``, ``buzzer_http_request_seconds``); the event loop is
    the only writer and the only reader (``/metrics`` runs on it), so nothing is locked.
    """

    def __init__(self, service: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.service = service
        self._bounds = buckets
        self._requests: dict[tuple[str, str, int], int] = {}
        # route -> [count per bucket (the last one: above every bound), sum of seconds]
        self._latency: dict[str, tuple[list[int], list[float]]] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        lat = self._latency.get(route)
        if lat is None:
            lat = self._latency[route] = ([0] * (len(self._bounds) + 1), [0.0])
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        lat[0][bisect_left(self._bounds, seconds)] += 1
        lat[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "buzzer_http_requests",
            "HTTP requests by route and status",
            labels=["service", "route", "method", "status"],
        )
        for (route, method, status), n in self._requests.items():
            requests.add_metric([self.service, route, method, str(status)], n)
        latency = HistogramMetricFamily(
            "buzzer_http_request_seconds",
            "HTTP request latency by route",
            labels=["service", "route"],
        )
        for route, (counts, total) in self._latency.items():
            cumulative, buckets = 0, []
            for bound, n in zip((*self._bounds, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([self.service, route], buckets, sum_value=total[0])
        yield requests
        yield latency


@dataclass
class Observability:
    service: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    checks: dict[str, Check] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()
    """Checks whose failure degrades the service without making it unready (the load
    balancer must keep sending votes to ingest while PostgreSQL is away)."""
    ready: bool = True
    """False while draining, so load balancers stop sending before we stop listening."""
    ended: dict[str, str] = field(default_factory=dict)
    """Essential background tasks that ended while the process served, by name, and why."""

    def __post_init__(self) -> None:
        self.http = HttpMetrics(self.service)
        self.registry.register(self.http)
        self.record = self.http.record

    def essential(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """Watch ``task``, which must run as long as the process serves (push's updates
        reader, the tally's partitions): if it ends while serving, with an error or
        without one, log it at once with its traceback and fail readiness naming it, so
        the load balancer and on-call take the process out. Unwatched, such a task died
        in silence (asyncio reports an unretrieved error only when the task is freed, at
        shutdown) while ``/readyz`` said ok: viewers' counts froze, votes went uncounted.
        Cancelled, or ending while draining, is how it is meant to stop."""
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or not self.ready:
            return  # stopped, or ending with the process (draining)
        exc = task.exception()
        why = f"{type(exc).__name__}: {exc}"[:200] if exc is not None else "returned"
        self.ended[task.get_name()] = why
        logging.getLogger(f"buzzer.{self.service}").error(
            "essential task ended: not ready",
            exc_info=exc,
            extra={"task": task.get_name(), "error": why},
        )


OBS = web.AppKey("observability", Observability)


def _dumps_line(obj: Any) -> str:
    # Like every JSON answer: ends with a newline, so a shell prompt after curl stays apart.
    return json.dumps(obj) + "\n"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", "service": request.app[OBS].service}, dumps=_dumps_line
    )


async def readyz(request: web.Request) -> web.Response:
    obs = request.app[OBS]
    results: dict[str, str] = {}
    ok = obs.ready
    degraded = False
    if not obs.ready:
        results["process"] = "draining"
    for name, why in obs.ended.items():
        ok = False
        results[f"task {name}"] = f"ended: {why}"
    for name, check in obs.checks.items():
        try:
            await check()
            results[name] = "ok"
        except Exception as exc:  # any failure is reported: which check and why
            degraded = True
            if name not in obs.optional:
                ok = False
            results[name] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    status = "ok" if ok and not degraded else ("degraded" if ok else "unavailable")
    return web.json_response(
        {"status": status, "service": obs.service, "checks": results},
        dumps=_dumps_line,
        status=200 if ok else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[OBS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def route_name(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


SERVER_HEADER = "buzzer"
"""Every answer's ``Server`` header, in place of aiohttp's, which names the Python and
aiohttp versions: a list of the CVEs to try, handed to anyone who asks."""


async def name_the_server(_: web.Request, response: web.StreamResponse) -> None:
    # aiohttp only fills Server in where it is absent (setdefault).
    response.headers["Server"] = SERVER_HEADER


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    obs = request.app[OBS]
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        obs.record(route_name(request), request.method, status, time.perf_counter() - start)


def setup_observability(
    app: web.Application,
    service: str,
    checks: Mapping[str, Check] | None = None,
    optional: frozenset[str] = frozenset(),
    with_middleware: bool = True,
    wrap: Callable[[str, Handler], Handler] | None = None,
) -> Observability:
    """``with_middleware=False``: the app records requests itself (``Observability.record``),
    saving a layer on a hot path; ``wrap`` then wraps these routes' handlers as the app
    wraps its own (``wrap(path, handler)``)."""
    obs = Observability(service=service, checks=dict(checks or {}), optional=optional)
    app[OBS] = obs
    if with_middleware:
        app.middlewares.append(metrics_middleware)
        # Before the headers go out, websocket upgrades included. The vote API, which
        # records requests itself, carries the header in its prebuilt ones instead, so
        # that its hottest answer pays no signal.
        app.on_response_prepare.append(name_the_server)
    for path, handler in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
        app.router.add_get(path, wrap(path, handler) if wrap else handler)

    async def _draining(_: web.Application) -> None:
        obs.ready = False

    app.on_shutdown.append(_draining)
    return obs
