"""The hand-counted HTTP metrics expose exactly what prometheus-client's own Counter and
Histogram would for the same observations (bounds included: ``le`` is inclusive)."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from services.common.observability import LATENCY_BUCKETS, Observability

ROUTES = ["/v1/polls/{poll}/votes", "/healthz", "unmatched"]


def test_exposition_equals_prometheus_clients_own() -> None:
    obs = Observability("ingest")
    reference = CollectorRegistry()
    counter = Counter(
        "buzzer_http_requests_total",
        "HTTP requests by route and status",
        ["service", "route", "method", "status"],
        registry=reference,
    )
    histogram = Histogram(
        "buzzer_http_request_seconds",
        "HTTP request latency by route",
        ["service", "route"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    rng = random.Random(7)
    # Every bound exactly, values between and beyond them, then random ones.
    values = [*LATENCY_BUCKETS, 0.0, 1e-6, 3.0, 99.0]
    values += [rng.expovariate(20) for _ in range(2000)]
    for seconds in values:
        route = rng.choice(ROUTES)
        method, status = rng.choice(["GET", "POST"]), rng.choice([200, 202, 404, 503])
        obs.record(route, method, status, seconds)
        counter.labels("ingest", route, method, str(status)).inc()
        histogram.labels("ingest", route).observe(seconds)

    ours = generate_latest(obs.registry).decode().splitlines()
    theirs = [
        line for line in generate_latest(reference).decode().splitlines() if "_created" not in line
    ]
    assert sorted(ours) == sorted(theirs)
    assert any('le="0.001"' in line for line in ours)
