"""Render one node's haproxy.cfg from a plan, an inventory and settings. Pure and
deterministic: the same arguments give the same text, byte for byte."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import tiers
from lb.inventory import Inventory, Server
from lb.planner import CapacityPlan

BACKENDS = ("ingest", "push")

MODERN_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
MODERN_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class RenderParams:
    """What the renderer takes from a plan; build it directly when there is no plan."""

    maxconn: int

    @classmethod
    def from_plan(cls, plan: CapacityPlan) -> RenderParams:
        return cls(maxconn=plan.maxconn_per_node)


@dataclass(frozen=True)
class RateLimit:
    requests: int = 2000
    """Requests per source per ``period_s`` before 429. Generous: carrier NAT puts many
    phones behind one address; per-device limits live in ingest."""
    period_s: int = 10
    table_size: str = "1m"
    expire_s: int = 30


@dataclass(frozen=True)
class RegistrationLimit:
    """``POST /v1/devices`` per source, in a table of its own: a script that farms device
    tokens registers far more often than it votes, so this bound can be much tighter
    than the one on all requests.

    Sizing (docs/operations.md, "Registration storm"): a carrier NAT address fronts up
    to a few thousand phones, and a phone registers once per install and once per token
    lifetime (30 days), so even a show start where a tenth of them install the app
    within ``period_s`` stays under the default. Lower it where sources are homes and
    offices; the app's per-account and per-attested-key limits are the finer ones."""

    registrations: int = 300
    """Registrations per source per ``period_s`` before 429."""
    period_s: int = 600
    table_size: str = "1m"

    @property
    def expire_s(self) -> int:
        # An entry must outlive its rate window, or an attacker's count would reset.
        return self.period_s


@dataclass(frozen=True)
class RenderSettings:
    runtime_socket: str = "/run/buzzer/haproxy.sock"
    bind_host: str = "*"
    http_port: int = 80
    https_port: int | None = None
    """``None``: no TLS frontend."""
    certs: Sequence[str] = ()
    """PEM files (cert + key) for one name: ECDSA first, RSA as fallback; HAProxy picks by
    what the client's signature algorithms allow."""
    redirect_to_https: bool = True
    """Off only for a local or test stack that serves plain HTTP next to TLS."""
    tls_ticket_keys: str | None = None
    """Shared ticket keys, so a ticket resumes on any node and across reloads."""
    ssl_cache_size: int = 100_000
    stats_host: str = "127.0.0.1"
    stats_port: int = tiers.HAPROXY_STATS_PORT
    log_target: str | None = "stdout"
    log_normal: bool = False
    """Also log successful requests (off: only failures are logged)."""
    """``stdout``/``stderr`` for a child process, a unix socket path, or ``None``."""
    nbthread: int | None = None
    cpu_map: str | None = None
    """e.g. ``"1 0"``: thread 1 on CPU 0."""
    slots: int = 16
    """``server-template`` slots per backend, for nodes added at runtime."""
    backend_ports: dict[str, int] = field(default_factory=tiers.backend_ports)
    rate_limit: RateLimit | None = field(default_factory=RateLimit)
    registration_limit: RegistrationLimit | None = field(default_factory=RegistrationLimit)
    health_path: str = "/readyz"
    server_state_file: str | None = None
    """Where ``lb.apply`` saves runtime server changes before a reload, so that nodes
    added by ``lb sync`` survive it. The file must exist (``lb.apply`` creates it)."""
    hard_stop_after_s: int = 30
    """Bounds how long old workers keep websockets after a reload."""
    tunnel_timeout_s: int = 3600
    init_addr: str | None = None
    """e.g. ``"last,libc,none"`` where servers are host names (docker compose), so that
    HAProxy starts (and ``haproxy -c`` passes) before every name resolves."""


def _ms(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms" if seconds < 1 else f"{int(seconds)}s"


def _global(params: RenderParams, s: RenderSettings) -> list[str]:
    out = [
        "global",
        "    master-worker",
        f"    maxconn {params.maxconn}",
        f"    stats socket {s.runtime_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        *([f"    server-state-file {s.server_state_file}"] if s.server_state_file else []),
        f"    hard-stop-after {s.hard_stop_after_s}s",
    ]
    if s.nbthread:
        out.append(f"    nbthread {s.nbthread}")
    if s.cpu_map:
        out.append(f"    cpu-map {s.cpu_map}")
    if s.log_target in ("stdout", "stderr"):
        out.append(f"    log {s.log_target} format raw local0 info")
    elif s.log_target:
        out.append(f"    log {s.log_target} local0 info")
    if s.https_port is not None:
        out += [
            f"    tune.ssl.cachesize {s.ssl_cache_size}",
            "    tune.ssl.lifetime 600",
            f"    ssl-default-bind-ciphersuites {MODERN_CIPHERSUITES}",
            f"    ssl-default-bind-ciphers {MODERN_CIPHERS}",
            # Session tickets stay on (the default): resumption is a 1.4K/s handshake
            # against 650/s for a full RSA one.
            "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        ]
    return out


def _defaults(s: RenderSettings) -> list[str]:
    return [
        "defaults",
        "    mode http",
        *(["    load-server-state-from-file global"] if s.server_state_file else []),
        *(["    log global", "    option dontlognull"] if s.log_target else []),
        "    option http-keep-alive",
        "    option forwardfor",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        # Wait for the whole request body within that timeout before picking a server:
        # a slow body then costs HAProxy a buffer, not an ingest process a connection.
        "    option http-buffer-request",
        "    timeout http-keep-alive 5s",
        "    timeout queue 5s",
        "    timeout check 1s",
        # Websockets: after the upgrade only these two apply.
        f"    timeout tunnel {s.tunnel_timeout_s}s",
        "    timeout client-fin 10s",
        "    timeout server-fin 10s",
    ]


def _frontend(params: RenderParams, s: RenderSettings) -> list[str]:
    out = ["frontend public", f"    bind {s.bind_host}:{s.http_port}"]
    if s.https_port is not None:
        if not s.certs:
            raise ValueError("https_port needs at least one certificate in settings.certs")
        crts = " ".join(f"crt {c}" for c in s.certs)
        tickets = f" tls-ticket-keys {s.tls_ticket_keys}" if s.tls_ticket_keys else ""
        # h2 first: phone stacks keep one TLS connection and multiplex their requests on
        # it, instead of paying a handshake per parallel request. HAProxy 2.4+ also
        # carries websockets over h2 (RFC 8441), turning them into an HTTP/1.1 upgrade
        # towards push, so the routing below sees the same Upgrade header either way.
        out.append(f"    bind {s.bind_host}:{s.https_port} ssl {crts} alpn h2,http/1.1{tickets}")
    out += [f"    maxconn {params.maxconn}", "    monitor-uri /lb-healthz"]
    if s.log_target:
        out.append("    option httplog")
        if not s.log_normal:
            # At tens of thousands of requests/s a line per request costs a tenth of
            # the node; log what went wrong (errors, timeouts, retries, 5xx) and let the
            # stats and Prometheus counters account for the rest.
            out.append("    option dontlog-normal")
    rl = s.rate_limit
    if rl is not None:
        out += [
            f"    stick-table type ipv6 size {rl.table_size} expire {rl.expire_s}s"
            f" store http_req_rate({rl.period_s}s)",
            # Tracked once per connection (cheaper on keep-alive); the table still
            # counts every request of the connection in http_req_rate.
            "    tcp-request connection track-sc0 src",
        ]
    if s.https_port is not None and s.redirect_to_https:
        out.append("    http-request redirect scheme https code 301 unless { ssl_fc }")
    if rl is not None:
        body = (
            '{"error":"rate_limited","detail":"too many requests from this address",'
            f'"retry_after_s":{rl.period_s}}}'
        )
        out.append(
            f"    http-request return status 429 content-type application/json"
            f" string '{body}' hdr Retry-After {rl.period_s}"
            f" if {{ sc_http_req_rate(0) gt {rl.requests} }}"
        )
    reg = s.registration_limit
    if reg is not None:
        body = (
            '{"error":"registration_limited","message":"too many device registrations'
            ' from this address","field":null,'
            f'"retry_after_s":{reg.period_s}}}'
        )
        register = "{ path /v1/devices } METH_POST"
        out += [
            # Its own table (in backend "registrations"), so that votes never use up a
            # source's registrations nor the other way round.
            f"    # POST /v1/devices: at most {reg.registrations} per source per"
            f" {reg.period_s}s, sized for carrier NAT"
            ' (docs/operations.md, "Sizing the registration limits")',
            f"    http-request track-sc1 src table registrations if {register}",
            f"    http-request return status 429 content-type application/json"
            f" string '{body}' hdr Retry-After {reg.period_s}"
            f" if {register} {{ sc_http_req_rate(1,registrations) gt {reg.registrations} }}",
        ]
    if s.https_port is not None:
        out.append("    http-request set-header X-Forwarded-Proto https if { ssl_fc }")
        out.append("    http-request set-header X-Forwarded-Proto http unless { ssl_fc }")
    out += [
        "    acl websocket hdr(Upgrade) -i websocket",
        # Prefix and suffix rather than a regex: evaluated on every request.
        "    acl live path_beg /v1/polls/",
        "    acl live_end path_end /live",
        "    acl api path_beg /v1/",
        "    acl votes path_end /votes",
        # The push service's own API: multi-poll live sockets and the console's figures.
        "    acl push_api path /v1/live /v1/ops",
        # Votes are nearly every request: route them with the fewest ACL evaluations.
        "    use_backend ingest if live votes",
        "    use_backend push if websocket || live live_end || push_api",
        "    use_backend ingest if api",
        # Pages (/results, /console, /static/) are the push service's.
        "    default_backend push",
    ]
    return out


def _backend(name: str, servers: Sequence[Server], s: RenderSettings) -> list[str]:
    if len(servers) > s.slots:
        raise ValueError(f"{name}: {len(servers)} servers but only {s.slots} slots")
    out = [
        f"backend {name}",
        "    balance leastconn" if name == "push" else "    balance roundrobin",
        f"    option httpchk GET {s.health_path}",
        "    http-check expect status 200",
        "    default-server check inter 1s fastinter 500ms downinter 1s fall 2 rise 2"
        " observe layer4 error-limit 2 on-error mark-down"
        + (f" init-addr {s.init_addr}" if s.init_addr else ""),
        # A connection that fails is retried, each time on another server, so a freshly
        # dead one is not tried twice. No L7 retries (retry-on): they keep a copy of
        # every request, and vote clients resend with the same vote id anyway.
        "    retries 2",
        "    option redispatch 1",
    ]
    for i, srv in enumerate(sorted(servers), start=1):
        out.append(f"    server {name}{i} {srv.host}:{srv.port}")
    first_free = len(servers) + 1
    if first_free <= s.slots:
        port = s.backend_ports.get(name, 1)
        rng = str(s.slots) if first_free == 1 else f"{first_free}-{s.slots}"
        out.append(f"    server-template {name} {rng} 127.0.0.1:{port} disabled")
    return out


def _registrations(reg: RegistrationLimit) -> list[str]:
    # A backend with no servers: only the home of the per-source registration table
    # (a frontend has one table of its own, already the per-source request rate).
    return [
        "backend registrations",
        f"    stick-table type ipv6 size {reg.table_size} expire {reg.expire_s}s"
        f" store http_req_rate({reg.period_s}s)",
    ]


def _stats(s: RenderSettings) -> list[str]:
    return [
        "frontend stats",
        f"    bind {s.stats_host}:{s.stats_port}",
        "    no log",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
        "    stats show-legends",
    ]


def render(
    plan: CapacityPlan | RenderParams, inventory: Inventory, settings: RenderSettings
) -> str:
    params = RenderParams.from_plan(plan) if isinstance(plan, CapacityPlan) else plan
    unknown = sorted(set(inventory) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends in inventory: {unknown}")
    sections = [
        ["# Generated by `buzzer lb render`; edit lb/render.py, not this file."],
        _global(params, settings),
        _defaults(settings),
        _frontend(params, settings),
        _backend("ingest", inventory.get("ingest", ()), settings),
        _backend("push", inventory.get("push", ()), settings),
        *([_registrations(settings.registration_limit)] if settings.registration_limit else []),
        _stats(settings),
    ]
    return "\n\n".join("\n".join(sec) for sec in sections) + "\n"
