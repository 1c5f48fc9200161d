"""``buzzer up``: the whole stack on localhost, shaped like production; ``buzzer demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tiers
from buzzer.haproxy import LocalFront, start_local_haproxy
from buzzer.http import api
from buzzer.ports import bindable
from buzzer.secretfile import write_secret

STATE_DIR = Path(os.environ.get("BUZZER_STATE_DIR", ".buzzer"))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    up = sub.add_parser("up", help="run the whole local stack (HAProxy, ingest x2, tally, push)")
    up.add_argument(
        "--http-port",
        type=int,
        default=int(os.environ.get("BUZZER_HTTP_PORT", tiers.HAPROXY_HTTP_PORT)),
    )
    up.add_argument(
        "--https-port",
        type=int,
        default=int(os.environ.get("BUZZER_HTTPS_PORT", tiers.HAPROXY_HTTPS_PORT)),
    )
    up.add_argument("--ingest", type=int, default=2, help="ingest processes")
    up.add_argument(
        "--no-haproxy", action="store_true", help="serve ingest directly on --http-port"
    )
    up.add_argument(
        "--monitoring",
        action="store_true",
        help="also run a local Prometheus with the alerting rules (deploy/prometheus)",
    )
    up.add_argument(
        "--prometheus-port", type=int, default=int(os.environ.get("BUZZER_PROMETHEUS_PORT", 9090))
    )
    up.add_argument(
        "--redis-cluster",
        action="store_true",
        help="run on a local Redis Cluster (3 primaries, 3 replicas) with replica "
        "acknowledgement, instead of the Redis at REDIS_URL",
    )
    up.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=0,
        help="stop by itself after this many seconds (0: until Ctrl-C/SIGTERM)",
    )
    up.set_defaults(func=_up)

    demo = sub.add_parser(
        "demo", help="create a show with open polls; print the curl lines to vote"
    )
    demo.add_argument(
        "--url", default=os.environ.get("BUZZER_URL", f"http://127.0.0.1:{tiers.HAPROXY_HTTP_PORT}")
    )
    demo.set_defaults(func=_demo)


def load_secrets(state_dir: Path = STATE_DIR) -> dict[str, str]:
    """The local stack's secrets: from the environment, else made once and kept in
    ``.buzzer/secrets.json`` (git-ignored, mode 600) so the admin token stays stable."""
    path = state_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    out = {}
    for name in ("BUZZER_ADMIN_TOKEN", "BUZZER_TOKEN_SECRET"):
        out[name] = os.environ.get(name) or stored.get(name) or secrets.token_urlsafe(32)
    if out != stored:
        state_dir.mkdir(parents=True, exist_ok=True)
        write_secret(path, json.dumps(out))
    write_secret(state_dir / "admin-token", out["BUZZER_ADMIN_TOKEN"])
    return out


def operators_file(state_dir: Path = STATE_DIR) -> Path:
    """``.buzzer/operators.json`` (mode 600), made empty if missing: named operator tokens
    (``{"name": "token"}``) added there work at once, with no restart of the stack."""
    path = (state_dir / "operators.json").resolve()
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        write_secret(path, "{}\n")
    return path


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: str | None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log_dir: Path) -> None:
        with (log_dir / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Stack:
    """Processes of the local stack, started in dependency order, stopped in reverse."""

    env: dict[str, str]
    http_port: int = tiers.HAPROXY_HTTP_PORT
    https_port: int = tiers.HAPROXY_HTTPS_PORT
    ingest: int = 2
    haproxy: bool = True
    state_dir: Path = STATE_DIR
    children: list[Child] = field(default_factory=list)
    haproxy_proc: Any = None
    ingest_ports: list[int] = field(default_factory=list)
    ingest_base_port: int = tiers.INGEST.port
    push_port: int = tiers.PUSH.port
    tally_port: int = tiers.TALLY.port
    stats_port: int = tiers.HAPROXY_STATS_PORT
    with_push: bool = True

    def _py(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "buzzer", *args]

    def plan(self) -> None:
        base = self.http_port if not self.haproxy else self.ingest_base_port
        self.ingest_ports = [base + i for i in range(self.ingest)]
        for i, port in enumerate(self.ingest_ports):
            self.children.append(
                Child(
                    f"ingest-{i + 1}",
                    self._py("serve", "ingest", "--port", str(port)),
                    self.env,
                    f"http://127.0.0.1:{port}/readyz",
                )
            )
        self.children.append(
            Child(
                "tally",
                self._py("serve", "tally", "--port", str(self.tally_port)),
                self.env,
                f"http://127.0.0.1:{self.tally_port}/readyz",
            )
        )
        if self.with_push:
            self.children.append(
                Child(
                    "push",
                    self._py("serve", "push", "--port", str(self.push_port)),
                    self.env,
                    f"http://127.0.0.1:{self.push_port}/readyz",
                )
            )

    def ports(self) -> list[int]:
        ports = [*self.ingest_ports, self.tally_port]
        ports += [self.push_port] if self.with_push else []
        ports += [self.http_port, self.https_port, self.stats_port] if self.haproxy else []
        return ports

    def start(self, timeout: float = 30) -> None:
        # Fail before starting anything, rather than health-check another stack's process.
        taken = [p for p in self.ports() if not bindable(p)]
        if taken:
            raise RuntimeError(
                f"port(s) {', '.join(map(str, taken))} already in use (another `buzzer up`?)"
            )
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            child.start(log_dir)
        for child in self.children:
            if child.health:
                wait_ready(child, timeout)
        if self.haproxy:
            self.haproxy_proc = start_local_haproxy(self.front())

    def front(self) -> LocalFront:
        return LocalFront(
            state_dir=self.state_dir,
            http_port=self.http_port,
            https_port=self.https_port,
            stats_port=self.stats_port,
            ingest_ports=tuple(self.ingest_ports),
            push_port=self.push_port,
            with_push=self.with_push,
            ingest_base_port=self.ingest_base_port,
        )

    def stop(self, timeout: float = 15) -> None:
        if self.haproxy_proc is not None:
            self.haproxy_proc.stop()
        # Edge first, the tally last, so it applies what the others appended.
        order = [c for c in self.children if c.name == "push"]
        order += [c for c in self.children if c.name.startswith("ingest")]
        order += [c for c in self.children if c.name == "tally"]
        for group in (order[:-1], order[-1:]):
            for c in group:
                if c.alive():
                    assert c.proc is not None
                    c.proc.send_signal(signal.SIGTERM)
            for c in group:
                if c.proc is not None:
                    try:
                        c.proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        c.proc.kill()
                        c.proc.wait()

    def urls(self) -> dict[str, str]:
        front = f"http://127.0.0.1:{self.http_port}"
        out = {
            "api": front,
            "results page": f"{front}/results?poll=<poll id>",
            "operator console": f"{front}/console",
            "openapi": f"{front}/v1/openapi.json",
        }
        if self.haproxy:
            out["api (TLS, self-signed)"] = f"https://127.0.0.1:{self.https_port}"
            out["haproxy stats"] = f"http://127.0.0.1:{self.stats_port}/stats"
        else:
            out["results page"] = f"http://127.0.0.1:{self.push_port}/results?poll=<poll id>"
            out["operator console"] = f"http://127.0.0.1:{self.push_port}/console"
        return out


def wait_ready(child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert child.health is not None
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(
                f"{child.name} exited with {child.proc and child.proc.returncode}; "
                f"see {STATE_DIR / 'logs' / (child.name + '.log')}"
            )
        try:
            with urllib.request.urlopen(child.health, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready after {timeout}s ({child.health})")


def _up(args: argparse.Namespace) -> int:
    from services.common.db import migrate
    from services.common.settings import CommonSettings

    env = dict(os.environ)
    env.update(load_secrets())
    env.setdefault("BUZZER_OPERATOR_TOKENS_FILE", str(operators_file()))
    common = CommonSettings()
    asyncio.run(migrate(common.database_url.get_secret_value()))
    cluster = None
    if getattr(args, "redis_cluster", False):
        from buzzer.rediscluster import start_for_up

        try:
            cluster = start_for_up(env, STATE_DIR)
        except Exception as exc:
            print(f"buzzer up: redis cluster: {exc}", file=sys.stderr)
            return 1
    stack = Stack(
        env=env,
        http_port=args.http_port,
        https_port=args.https_port,
        ingest=args.ingest,
        haproxy=not args.no_haproxy,
    )
    stack.plan()
    stopping = False

    def _stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    prometheus = None
    try:
        try:
            stack.start()
            if args.monitoring:
                from buzzer.monitoring import start_for_stack

                prometheus = start_for_stack(stack, args.prometheus_port)
        except Exception as exc:  # a port in use, a dependency down: say it in one line
            print(f"buzzer up: {exc}", file=sys.stderr)
            return 1
        print("buzzer is up:")
        for name, url in stack.urls().items():
            print(f"  {name:24} {url}")
        if prometheus is not None:
            print(f"  {'prometheus':24} {prometheus.url}")
        if cluster is not None:
            print(f"  {'redis cluster':24} {cluster.url}")
        print(f"  {'admin token':24} {STATE_DIR / 'admin-token'}")
        print(f"  {'operator tokens':24} {env['BUZZER_OPERATOR_TOKENS_FILE']}")
        print(f"  {'logs':24} {STATE_DIR / 'logs'}/")
        print("Ctrl-C to stop.", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stopping:
            dead = [c.name for c in stack.children if not c.alive()]
            if dead:
                print(f"buzzer: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
                return 1
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()
        if cluster is not None:
            cluster.stop()
        print("buzzer: stopped", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    token = os.environ.get("BUZZER_ADMIN_TOKEN") or load_secrets()["BUZZER_ADMIN_TOKEN"]
    url = args.url.rstrip("/")
    show = api("POST", f"{url}/v1/admin/shows", token, {"name": "Demo night"})
    polls: list[dict[str, Any]] = [
        {
            "title": "Buzz act 3",
            "options": [
                {"key": "buzz", "label": "Buzz"},
                {"key": "golden", "label": "Golden buzzer"},
            ],
            "max_votes_per_device": None,
            "max_count": 100,
        },
        {
            "title": "Clap or boo",
            "options": [{"key": "clap", "label": "Clap"}, {"key": "boo", "label": "Boo"}],
            "max_votes_per_device": None,
            "max_count": 100,
        },
        {
            "title": "Your favourite act",
            "options": [{"key": f"act-{i}", "label": f"Act {i}"} for i in range(1, 9)],
            "max_votes_per_device": 1,
            "max_count": 1,
        },
    ]
    created = []
    for spec in polls:
        poll = api("POST", f"{url}/v1/admin/polls", token, {"show_id": show["id"], **spec})
        poll = api("POST", f"{url}/v1/admin/polls/{poll['id']}/open", token)
        created.append(poll)
    device = api("POST", f"{url}/v1/devices")
    print(f"show {show['id']} with {len(created)} open polls:")
    for p in created:
        print(f"  {p['id']}  {p['title']}  options: {', '.join(o['key'] for o in p['options'])}")
    first = created[1]
    print("\n# vote (a new vote_id per vote; a retry reuses it):")
    print(f"TOKEN={device['token']}")
    print(
        f'curl -s -X POST {url}/v1/polls/{first["id"]}/votes -H "Authorization: Bearer $TOKEN" '
        f"-H 'Content-Type: application/json' "
        f'-d \'{{"option": "clap", "count": 7, "vote_id": "\'$(python3 -c \'import uuid;print(uuid.uuid4())\')\'"}}\''
    )
    print("\n# read the live tally:")
    print(f"curl -s {url}/v1/polls/{first['id']}/tally")
    print("\n# watch it live:")
    print(f"{url}/results?poll={first['id']}")
    with contextlib.suppress(OSError):
        (STATE_DIR / "demo.json").write_text(json.dumps({"show": show, "polls": created}))
    return 0
