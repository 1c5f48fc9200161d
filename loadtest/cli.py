"""``buzzer loadtest run|audit``: replay a show with locust, then prove nothing was lost.

Locust monkey-patches with gevent, so it runs as a subprocess; this process only sets the
show up, starts locust, resolves what the clients left open, waits for the tally to
drain, and audits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``1m30s``, ``1h`` -> seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 3m, 1m30s)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    lt = sub.add_parser("loadtest", help="replay a show with locust, then audit every vote")
    lsub = lt.add_subparsers(dest="loadtest", required=True)
    run = lsub.add_parser("run", help="headless locust run against a stack, then the audit")
    add_run_arguments(run)
    run.set_defaults(func=run_cmd)
    pl = lsub.add_parser("plan", help="only create the show and write plan.json (for a fleet)")
    add_run_arguments(pl)
    pl.set_defaults(func=plan_cmd)
    aud = lsub.add_parser("audit", help="audit again the output directory of a run")
    aud.add_argument("--out", type=Path, required=True)
    aud.add_argument("--drain-timeout", type=float, default=10.0)
    aud.add_argument(
        "--admin-token",
        default=None,
        help="to close the polls (default: $BUZZER_ADMIN_TOKEN or .buzzer/admin-token)",
    )
    aud.set_defaults(func=audit_cmd)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        default="show",
        help="show | step | soak | rate:N (N votes/s held, for benchmarks)",
    )
    p.add_argument(
        "--duration",
        type=parse_duration,
        default=parse_duration("3m"),
        help="the whole curve compressed to this (e.g. 3m, 90s)",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("BUZZER_URL", "http://127.0.0.1:8080"),
        help="the API (HAProxy of the local stack by default)",
    )
    p.add_argument(
        "--ws-host", default=None, help="the live websockets (default: --host with ws://)"
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies every rate of the profile (quiet part: 30 votes/s x scale)",
    )
    p.add_argument(
        "--user-rate",
        type=float,
        default=2.0,
        help="votes per second one voter sends (its batched taps)",
    )
    p.add_argument("--viewers", type=int, default=5, help="websocket viewers (at least 1)")
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="locust workers (0: one process; -1: one per core), a master besides",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default .buzzer/loadtest/<time>)"
    )
    p.add_argument(
        "--tail",
        type=float,
        default=20.0,
        help="seconds after the curve for the viewers to see every final result",
    )
    p.add_argument(
        "--admin-token", default=None, help="default: $BUZZER_ADMIN_TOKEN or .buzzer/admin-token"
    )
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--no-chart", action="store_true")


def admin_token(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("BUZZER_ADMIN_TOKEN"):
        return os.environ["BUZZER_ADMIN_TOKEN"]
    state = Path(os.environ.get("BUZZER_STATE_DIR", ".buzzer"))
    path = state / "admin-token"
    if path.exists():
        return path.read_text().strip()
    raise SystemExit(f"no admin token: set BUZZER_ADMIN_TOKEN or start the stack ({path})")


def run_locust(
    plan_path: Path, out: Path, host: str, processes: int, timeout: float, admin_token: str
) -> int:
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-H",
        host,
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "locust.html"),
        "--stop-timeout",
        "10",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--logfile",
        str(out / "locust.log"),
    ]
    if processes:
        argv += ["--processes", str(processes)]
    # The operator user needs the admin token; plan.json does not hold it.
    env = {
        **os.environ,
        "BUZZER_LOADTEST_PLAN": str(plan_path),
        "BUZZER_ADMIN_TOKEN": admin_token,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    with (out / "locust.out").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            return -1


def run_cmd(args: argparse.Namespace) -> int:
    return run(args)[0]


def make_plan(args: argparse.Namespace) -> Any:
    """Create the show and its polls; write ``plan.json`` in the output directory."""
    from loadtest.plan import Plan, create_show

    if args.viewers < 1:
        raise SystemExit("--viewers must be at least 1")
    if args.profile not in ("show", "step", "soak") and not re.fullmatch(
        r"rate:\d+(\.\d+)?", args.profile
    ):
        raise SystemExit(f"unknown profile {args.profile!r}: show, step, soak or rate:N")
    out: Path = args.out or Path(
        os.environ.get("BUZZER_STATE_DIR", ".buzzer")
    ) / "loadtest" / time.strftime("%Y%m%d-%H%M%S")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    host = args.host.rstrip("/")
    ws_host = args.ws_host or re.sub(r"^http", "ws", host)
    plan = Plan(
        host=host,
        ws_host=ws_host,
        admin_token=admin_token(args.admin_token),
        profile=args.profile,
        duration_s=args.duration,
        scale=args.scale,
        user_rate=args.user_rate,
        viewers=args.viewers,
        out_dir=str(out),
        tail_s=args.tail,
    )
    create_show(plan)
    plan.save(out / "plan.json")
    return plan


def plan_cmd(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    print(Path(plan.out_dir) / "plan.json")
    return 0


def run(args: argparse.Namespace, quiet: bool = False) -> tuple[int, dict[str, Any]]:
    """The whole run; (exit code, figures). Used by ``buzzer bench stack`` too."""
    say = (lambda *a, **k: None) if quiet else print
    plan = make_plan(args)
    out, host, ws_host = Path(plan.out_dir), plan.host, plan.ws_host
    plan_path = out / "plan.json"
    say(
        f"loadtest: profile {plan.profile}, {plan.duration_s:.0f} s, scale {plan.scale}, "
        f"{len(plan.polls)} polls of show {plan.show_id}, against {host} (live {ws_host})",
        flush=True,
    )
    started = time.monotonic()
    rc = run_locust(
        plan_path,
        out,
        host,
        args.processes,
        timeout=plan.duration_s + plan.tail_s + 120,
        admin_token=plan.admin_token,
    )
    say(
        f"loadtest: locust exited with {rc} after {time.monotonic() - started:.0f} s "
        f"(reports in {out})",
        flush=True,
    )
    if rc not in (0, 1):  # 1: some requests failed (503s, retried); the audit judges
        say(f"loadtest: locust failed; see {out / 'locust.out'}", file=sys.stderr)
    return finish(
        plan, out, args.drain_timeout, chart=not args.no_chart, say=say, locust_ok=rc in (0, 1)
    )


def finish(
    plan: Any,
    out: Path,
    drain_timeout: float,
    *,
    chart: bool,
    say: Any,
    locust_ok: bool = True,
    resolve_votes: bool = True,
) -> tuple[int, dict[str, Any]]:
    from loadtest.audit import audit, close_polls, collect, drain, resolve
    from loadtest.report import summary, summary_lines
    from services.common.settings import CommonSettings

    clients = collect(out)
    if resolve_votes and clients.unresolved and not (out / "resolved.json").exists():
        say(f"loadtest: asking again about {len(clients.unresolved)} votes left without an answer")
        resolve(plan, out, clients.unresolved)
        clients = collect(out)
    close_polls(plan)
    common = CommonSettings()
    server, settled = drain(
        plan,
        common.redis_url,
        common.database_url.get_secret_value(),
        common.key_prefix,
        common.partitions,
        timeout=drain_timeout,
    )
    result = audit(plan, clients, server, settled)
    figures = summary(out, clients)
    if chart:
        from loadtest.report import chart as draw

        draw(out, clients, out / "chart.png")
    say("")
    say(
        "AUDIT: accepted by the clients = Redis live count = PostgreSQL total = last count "
        "the viewers saw"
    )
    for line in result.lines:
        say(line)
    say("")
    for line in summary_lines(plan, clients, figures):
        say(line)
    say("")
    if chart:
        say(f"chart: {out / 'chart.png'}; locust report: {out / 'locust.html'}")
    if not locust_ok:
        result.problems.append("locust did not finish normally")
    for p in result.problems:
        say(f"AUDIT FAILED: {p}")
    if result.ok and locust_ok:
        say("AUDIT OK: every accepted vote was counted, stored and shown")
    figures["audit_ok"] = result.ok and locust_ok
    figures["problems"] = result.problems
    figures["table"] = result.table
    (out / "audit.json").write_text(json.dumps(figures, indent=2, default=str))
    return (0 if figures["audit_ok"] else 1), figures


def audit_cmd(args: argparse.Namespace) -> int:
    from loadtest.plan import Plan

    out = args.out.resolve()
    plan = Plan.load(out / "plan.json", admin_token=admin_token(args.admin_token))
    return finish(plan, out, args.drain_timeout, chart=False, say=print)[0]
