"""HAProxy in front of the local stack, rendered by the same code as production."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

import tiers
from buzzer.certs import make_cert
from lb.inventory import Server
from lb.process import HaproxyProcess
from lb.render import RateLimit, RegistrationLimit, RenderParams, RenderSettings, render


@dataclass(frozen=True)
class LocalFront:
    """What HAProxy in front of a local stack listens on and proxies to; ``buzzer up``'s
    Stack describes itself as one, so this module needs nothing of it."""

    state_dir: Path
    http_port: int
    https_port: int
    stats_port: int
    ingest_ports: tuple[int, ...]
    push_port: int
    with_push: bool
    # The backend's port for the servers HAProxy adds at runtime (lb sync).
    ingest_base_port: int


def local_settings(stack: LocalFront) -> RenderSettings:
    state = stack.state_dir.resolve()
    tls = state / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    # Self-signed, remade at every start: ECDSA first, RSA for clients that need it.
    certs = [str(make_cert(tls, "ecdsa")), str(make_cert(tls, "rsa"))]
    return RenderSettings(
        runtime_socket=str(state / "haproxy.sock"),
        bind_host="127.0.0.1",
        http_port=stack.http_port,
        https_port=stack.https_port,
        certs=certs,
        # Locally, plain HTTP is served next to TLS so that curl and tests need no -k.
        redirect_to_https=False,
        stats_host="127.0.0.1",
        stats_port=stack.stats_port,
        log_target="stdout",
        backend_ports={"ingest": stack.ingest_base_port, "push": stack.push_port},
        server_state_file=str(state / "haproxy.state"),
        # Every local client shares 127.0.0.1, so the per-source table must not stand
        # in for the per-device limits that load tests exercise: keep it, set high.
        rate_limit=RateLimit(requests=int(os.environ.get("BUZZER_LB_SOURCE_LIMIT", "1000000"))),
        registration_limit=RegistrationLimit(
            registrations=int(os.environ.get("BUZZER_LB_REGISTRATION_LIMIT", "1000000"))
        ),
    )


def local_config(stack: LocalFront) -> str:
    inventory = {
        "ingest": [Server("127.0.0.1", port) for port in stack.ingest_ports],
        "push": [Server("127.0.0.1", stack.push_port)] if stack.with_push else [],
    }
    # Each proxied connection takes two descriptors; stay inside this machine's limit.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = 100_000 if hard == resource.RLIM_INFINITY else hard
    maxconn = max(1_000, min(50_000, (limit - 200) // 2))
    return render(RenderParams(maxconn=maxconn), inventory, local_settings(stack))


def start_local_haproxy(stack: LocalFront) -> HaproxyProcess:
    root = stack.state_dir.resolve()
    workdir = root / "haproxy"
    workdir.mkdir(parents=True, exist_ok=True)
    state = root / "haproxy.state"
    state.touch()
    proc = HaproxyProcess(
        workdir,
        runtime_socket=root / "haproxy.sock",
        state_file=state,
        log_path=root / "logs" / "haproxy.log",
    )
    proc.start(local_config(stack))
    return proc


def compose_config() -> str:
    """The HAProxy config of docker-compose.yml: same renderer, service names as hosts."""
    settings = RenderSettings(
        runtime_socket="/tmp/haproxy.sock",
        bind_host="*",
        http_port=tiers.HAPROXY_HTTP_PORT,
        https_port=None,
        redirect_to_https=False,
        stats_host="*",
        stats_port=tiers.HAPROXY_STATS_PORT,
        log_target="stdout",
        backend_ports=tiers.backend_ports(),
        server_state_file=None,
        init_addr="last,libc,none",
        # The demo's clients (and its load tests) all come through one Docker gateway
        # address: the per-source registration bound would stop them, not a script.
        registration_limit=RegistrationLimit(registrations=1_000_000),
    )
    inventory = {
        "ingest": [Server("ingest1", tiers.INGEST.port), Server("ingest2", tiers.INGEST.port)],
        "push": [Server("push", tiers.PUSH.port)],
    }
    return render(RenderParams(maxconn=20_000), inventory, settings)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["compose"]:
        raise SystemExit("usage: python -m buzzer.haproxy compose > deploy/compose/haproxy.cfg")
    sys.stdout.write(compose_config())
