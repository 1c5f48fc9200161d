"""Named render variants: the golden files' inputs and what the config check covers."""

from __future__ import annotations

from dataclasses import replace

from lb.inventory import Inventory, Server
from lb.render import RateLimit, RenderParams, RenderSettings

PARAMS = RenderParams(maxconn=50_000)

BASE = RenderSettings(
    runtime_socket="/run/buzzer/haproxy.sock",
    server_state_file="/var/lib/buzzer/haproxy.state",
)

TLS = replace(
    BASE,
    http_port=80,
    https_port=443,
    certs=("/etc/buzzer/tls/vote.ecdsa.pem", "/etc/buzzer/tls/vote.rsa.pem"),
    tls_ticket_keys="/etc/buzzer/tls/ticket.keys",
)

INVENTORY: Inventory = {
    "ingest": [Server("10.0.1.10", 8081), Server("10.0.1.11", 8081)],
    "push": [Server("10.0.2.10", 8085)],
}

VARIANTS: dict[str, tuple[RenderSettings, Inventory]] = {
    "plain": (BASE, {}),
    "plain-inventory": (BASE, INVENTORY),
    "tls": (TLS, INVENTORY),
    "tls-local": (
        replace(TLS, redirect_to_https=False, tls_ticket_keys=None, bind_host="127.0.0.1"),
        {
            "ingest": [Server("127.0.0.1", 8081), Server("127.0.0.1", 8083)],
            "push": [Server("127.0.0.1", 8085)],
        },
    ),  # fmt: skip
    "bench": (
        replace(
            BASE,
            server_state_file=None,
            nbthread=1,
            cpu_map="1 0",
            rate_limit=RateLimit(requests=100, period_s=1),
            log_target="stderr",
        ),
        {"ingest": [Server("127.0.0.1", 9000)]},
    ),  # fmt: skip
    "no-limit-no-log": (replace(BASE, rate_limit=None, log_target=None, slots=4), {}),
}
