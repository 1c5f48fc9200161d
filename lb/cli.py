"""``buzzer lb plan|render|apply|sync``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tiers
from lb import instances


def add_parser(sub: argparse._SubParsersAction) -> None:
    lb = sub.add_parser("lb", help="capacity plan and HAProxy config, apply and sync")
    lbsub = lb.add_subparsers(dest="lb_command", required=True, metavar="SUBCOMMAND")

    p = lbsub.add_parser(
        "plan",
        help="fleet sizes for an expected peak",
        description="Fleet sizes for an expected peak: HAProxy nodes of one core each, "
        "ingest, push and tally processes, stream partitions, Redis shards (from `buzzer "
        "bench redis`) and PostgreSQL vCPUs; each with the resource that sets its count, "
        "then the arithmetic. `buzzer infra plan` turns them into instances.",
    )
    _plan_arguments(p)
    p.add_argument("--json", action="store_true", help="JSON for infra/ instead of a table")
    p.set_defaults(func=cmd_plan)

    p = lbsub.add_parser("render", help="print (or write) a node's haproxy.cfg")
    _plan_arguments(p)
    _render_arguments(p)
    p.add_argument("--out", type=Path, help="write here instead of stdout (not validated)")
    p.set_defaults(func=cmd_render)

    p = lbsub.add_parser("apply", help="render, validate, install atomically, reload")
    _plan_arguments(p)
    _render_arguments(p)
    p.add_argument("--target", type=Path, required=True, help="the haproxy.cfg to replace")
    p.add_argument("--master-socket", type=Path, help="reload through this master CLI")
    p.add_argument("--master-pid", type=int, help="or reload with SIGUSR2 to this pid")
    p.add_argument("--dry-run", action="store_true", help="print the config, change nothing")
    p.add_argument("--haproxy", default="haproxy", help="binary (default: %(default)s)")
    p.set_defaults(func=cmd_apply)

    p = lbsub.add_parser("sync", help="keep a running HAProxy's servers in line with inventory")
    p.add_argument("--socket", type=Path, required=True, help="HAProxy admin stats socket")
    p.add_argument("--backend", action="append", required=True, help="repeatable: ingest, push")
    p.add_argument(
        "--source", required=True, help="local:FILE, local:HOST:PORT[,...] or ec2:TAG=VALUE[,...]"
    )
    p.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="BACKEND=PORT",
        help="service port per backend for ec2 sources (default: the tiers table, "
        f"ingest={tiers.INGEST.port}, push={tiers.PUSH.port})",
    )
    once = p.add_mutually_exclusive_group()
    once.add_argument("--once", action="store_true")
    once.add_argument(
        "--interval", type=float, default=5.0, help="seconds between rounds (default: %(default)g)"
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds a removed server may finish its sessions (default: %(default)g)",
    )
    p.add_argument("--no-probe", action="store_true", help="don't GET /readyz before adding")
    p.set_defaults(func=cmd_sync)


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plan")
    g.add_argument(
        "--peak-votes",
        type=float,
        default=5000.0,
        metavar="VOTES_PER_S",
        help="votes per second at the peak (default: %(default)g)",
    )
    g.add_argument(
        "--viewers",
        type=int,
        default=0,
        help="concurrent websocket viewers at the peak (default: %(default)s)",
    )
    g.add_argument(
        "--new-conn-share",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="share (0 to 1) of vote requests that open a new connection instead of reusing "
        "a kept-alive one; mobile clients reconnect often (default: %(default)g)",
    )
    g.add_argument("--tls", action="store_true", help="clients connect over TLS")
    g.add_argument(
        "--resumption",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share (0 to 1) of new TLS connections that resume a session (default: %(default)g)",
    )
    g.add_argument("--rsa", action="store_true", help="plan for RSA-2048, not ECDSA")
    g.add_argument(
        "--headroom",
        type=float,
        default=0.6,
        metavar="UTILISATION",
        help="target utilisation (0 to 1] of every unit at the peak (default: %(default)g)",
    )
    g.add_argument(
        "--viewer-ramp",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds over which the viewers join (default: %(default)g)",
    )
    g.add_argument(
        "--redis-replicas",
        type=int,
        default=1,
        help="replicas per Redis shard (default: %(default)s)",
    )
    g.add_argument(
        "--polls",
        type=int,
        default=1,
        help="polls taking votes at once; sizes PostgreSQL (default: %(default)s)",
    )
    g.add_argument(
        "--options-per-poll",
        type=int,
        default=8,
        metavar="N",
        help="options of each poll; sizes PostgreSQL (default: %(default)s)",
    )
    g.add_argument(
        "--haproxy-instance-type",
        default=instances.DEFAULT_HAPROXY,
        metavar="TYPE",
        help="a node is one core of this type, with its share of the memory; sizes maxconn"
        " (default: %(default)s)",
    )
    g.add_argument(
        "--viewer-updates",
        type=float,
        default=10.0,
        metavar="PER_S",
        help="updates per second each viewer's websocket carries through HAProxy"
        " (default: %(default)g)",
    )
    g.add_argument(
        "--profile",
        default="measured",
        help="per-unit capacity figures: historical or measured, see docs/capacity.md "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a profile figure, e.g. ingest_votes_per_s=6000 (repeatable)",
    )


def _render_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("render")
    g.add_argument("--inventory", type=Path, help="JSON/YAML: {ingest: [host:port], push: [...]}")
    g.add_argument(
        "--runtime-socket",
        default="/run/buzzer/haproxy.sock",
        help="HAProxy admin socket (default: %(default)s)",
    )
    g.add_argument("--state-file", help="server-state-file kept across reloads")
    g.add_argument("--bind", default="*", help="listen address (default: %(default)s, all)")
    g.add_argument(
        "--http-port", type=int, default=80, help="plain HTTP listener (default: %(default)s)"
    )
    g.add_argument("--https-port", type=int, help="TLS listener (default: none)")
    g.add_argument("--cert", action="append", default=[], help="PEM; ECDSA first, then RSA")
    g.add_argument("--no-redirect", action="store_true", help="serve plain HTTP beside TLS")
    g.add_argument("--tls-ticket-keys", help="file of TLS session ticket keys (default: none)")
    g.add_argument(
        "--stats-bind",
        default="127.0.0.1",
        help="stats page and /metrics address; 0.0.0.0 for a Prometheus elsewhere"
        " (default: %(default)s)",
    )
    g.add_argument(
        "--stats-port",
        type=int,
        default=tiers.HAPROXY_STATS_PORT,
        help="stats page and /metrics (default: %(default)s)",
    )
    g.add_argument(
        "--log",
        default="stdout",
        help="stdout, stderr, a socket path, or none (default: %(default)s)",
    )
    g.add_argument("--nbthread", type=int, help="threads (default: HAProxy's, one per core)")
    g.add_argument(
        "--slots",
        type=int,
        default=16,
        help="server slots per backend, for servers added at runtime (default: %(default)s)",
    )
    g.add_argument(
        "--rate-limit",
        type=int,
        default=2000,
        help="requests per source per 10 s, 0 for none (default: %(default)s)",
    )
    g.add_argument(
        "--registration-limit",
        type=int,
        default=300,
        help="POST /v1/devices per source per 10 min, sized for carrier NAT"
        " (docs/operations.md), 0 for none (default: %(default)s)",
    )
    g.add_argument("--maxconn", type=int, help="instead of the plan's maxconn per node")


def _plan(args: argparse.Namespace) -> Any:
    from lb.planner import PROFILES, PlanInputs, plan

    if args.profile not in PROFILES:
        raise SystemExit(f"unknown profile {args.profile!r}; one of {sorted(PROFILES)}")
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = float(value)
    inputs = PlanInputs(
        peak_votes_per_s=args.peak_votes,
        viewers=args.viewers,
        new_conn_share=args.new_conn_share,
        tls=args.tls,
        tls_resumption_rate=args.resumption,
        ecdsa=not args.rsa,
        headroom=args.headroom,
        viewer_ramp_s=args.viewer_ramp,
        redis_replicas=args.redis_replicas,
        polls=args.polls,
        options_per_poll=args.options_per_poll,
        haproxy_instance_type=args.haproxy_instance_type,
        viewer_updates_per_s=args.viewer_updates,
        overrides=overrides,
    )
    return plan(inputs, PROFILES[args.profile])


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        result = _plan(args)
    except (ValueError, TypeError) as exc:
        print(f"lb plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json(), indent=2) if args.json else result.to_table())
    return 0


def _render(args: argparse.Namespace) -> str:
    from lb.inventory import LocalInventory
    from lb.render import RateLimit, RegistrationLimit, RenderParams, RenderSettings, render

    settings = RenderSettings(
        runtime_socket=args.runtime_socket,
        server_state_file=args.state_file,
        bind_host=args.bind,
        http_port=args.http_port,
        https_port=args.https_port,
        certs=tuple(args.cert),
        redirect_to_https=not args.no_redirect,
        tls_ticket_keys=args.tls_ticket_keys,
        stats_host=args.stats_bind,
        stats_port=args.stats_port,
        log_target=None if args.log == "none" else args.log,
        nbthread=args.nbthread,
        slots=args.slots,
        rate_limit=RateLimit(requests=args.rate_limit) if args.rate_limit > 0 else None,
        registration_limit=(
            RegistrationLimit(registrations=args.registration_limit)
            if args.registration_limit > 0
            else None
        ),
    )
    inventory = LocalInventory(args.inventory).inventory() if args.inventory else {}
    params = RenderParams(args.maxconn) if args.maxconn else RenderParams.from_plan(_plan(args))
    return render(params, inventory, settings)


def cmd_render(args: argparse.Namespace) -> int:
    try:
        text = _render(args)
    except (ValueError, OSError) as exc:
        print(f"lb render: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from lb.apply import ApplyError, apply

    try:
        text = _render(args)
    except (ValueError, OSError) as exc:
        print(f"lb apply: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    try:
        result = apply(
            text,
            args.target,
            haproxy=args.haproxy,
            master_socket=args.master_socket,
            master_pid=args.master_pid,
            runtime_socket=Path(args.runtime_socket) if args.state_file else None,
            state_file=Path(args.state_file) if args.state_file else None,
        )
    except (ApplyError, OSError) as exc:
        print(f"lb apply: {exc}", file=sys.stderr)
        return 1
    what = "unchanged" if not result.changed else "installed"
    reload = f", reloaded (workers {result.workers_after})" if result.reloaded else ""
    print(f"lb apply: {args.target} {what}{reload}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    import time

    from lb.inventory import parse_source
    from lb.runtime import RuntimeApi, RuntimeApiError
    from lb.sync import SyncError, probe_readyz, sync

    ports = tiers.backend_ports()
    for item in args.port:
        name, _, port = item.partition("=")
        ports[name] = int(port)
    try:
        source = parse_source(args.source, ports)
    except ValueError as exc:
        print(f"lb sync: {exc}", file=sys.stderr)
        return 2
    api = RuntimeApi(args.socket)
    while True:
        failed = False
        for backend in args.backend:
            try:
                report = sync(
                    api,
                    source,
                    backend,
                    probe=None if args.no_probe else probe_readyz,
                    drain_timeout=args.drain_timeout,
                )
                print(f"lb sync: {report.summary()}", flush=True)
            except (SyncError, RuntimeApiError, OSError, KeyError, ValueError) as exc:
                # One bad round (inventory unreadable, HAProxy reloading) must not end a
                # long-running sync; --once reports it in the exit code.
                print(f"lb sync: {backend}: {exc}", file=sys.stderr, flush=True)
                failed = True
        if args.once:
            return 1 if failed else 0
        time.sleep(args.interval)
