"""The deployment's tiers and their ports: the one table that the settings, lb, infra,
docker-compose and the Prometheus configuration read, so their defaults can't drift.

A leaf module: it imports nothing of the project, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tier:
    name: str
    port: int
    # Behind HAProxy (a backend of the generated config) or internal only.
    behind_lb: bool
    metrics_path: str = "/metrics"


HAPROXY_HTTP_PORT = 8080
HAPROXY_HTTPS_PORT = 8443
HAPROXY_STATS_PORT = 8404  # stats page and HAProxy's own Prometheus /metrics

INGEST = Tier("ingest", 8081, behind_lb=True)
TALLY = Tier("tally", 8090, behind_lb=False)
PUSH = Tier("push", 8085, behind_lb=True)

SERVICES: tuple[Tier, ...] = (INGEST, TALLY, PUSH)
BY_NAME: dict[str, Tier] = {t.name: t for t in SERVICES}


def backend_ports() -> dict[str, int]:
    """Service port per HAProxy backend."""
    return {t.name: t.port for t in SERVICES if t.behind_lb}
