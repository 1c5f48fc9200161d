"""The whole stack through HAProxy vs bare aiohttp: the highest vote rate with p99 < 100 ms.

``buzzer bench stack`` starts the stack (HAProxy, ingest x2, tally, push) on free ports with
its own Redis prefix and database, and next to it two bare aiohttp handlers behind the
same generated HAProxy config (the ceiling). At each rate the same locust voters (paced,
open to the rate, not to the answers) offer votes for a few seconds; a rate is sustained
when the votes accepted per second in the steady part reach 95% of it, their p99 is under
the limit and, for the stack, the audit is exact. Rates grow by ``--factor`` until one
fails, then one bisection step. Vote-to-screen p99 is the prober's at the highest
sustained rate. The last line is one JSON object.

Then, at the stack's highest sustained rate, ``--rounds`` confirming rounds measure the
bare ceiling and the stack back to back in alternating order (bench.tools.rounds), and
the stack's p99 is judged on their median and spread. Last, the open-loop generator
(bench.tools.openloop) offers votes at fixed rates, 50 % and 80 % of that maximum,
sending on schedule whether or not answers came back and timing each vote from when it
was due, so queueing shows (locust, like wrk, waits for answers and hides it): vote
p50/p99/p99.9 and vote-to-screen p99 per rate. Targets at 80 %: vote p99 < 100 ms,
vote-to-screen p99 < 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tools import jsonline
from bench.tools.proc import stop
from bench.tools.rounds import order, summarise
from buzzer.ports import free_ports

BAREFILE = Path(__file__).resolve().parent / "tools" / "barefile.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--level-seconds", type=float, default=12.0, help="length of one rate level")
    p.add_argument("--start-rate", type=float, default=200.0, help="votes/s of the first level")
    p.add_argument("--factor", type=float, default=1.5, help="growth of the rate per level")
    p.add_argument("--p99-ms", type=float, default=100.0)
    p.add_argument("--user-rate", type=float, default=10.0, help="votes/s per locust voter")
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="locust workers (0: one process), the same for both sides",
    )
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole search")
    p.add_argument(
        "--rounds", type=int, default=3, help="bare/stack confirming rounds at the maximum"
    )
    p.add_argument(
        "--fixed-seconds", type=float, default=15.0, help="length of each open-loop fixed rate"
    )
    p.add_argument(
        "--fixed-rates",
        type=float,
        nargs="*",
        default=[0.5, 0.8],
        help="open-loop rates as shares of the maximum found (none: skip)",
    )


@dataclass
class Level:
    rate: float
    achieved: float
    p50_ms: float
    p99_ms: float
    ok: bool
    audit_ok: bool | None = None
    v2s_p50_ms: float | None = None
    v2s_p99_ms: float | None = None
    note: str = ""

    def line(self, side: str) -> str:
        v2s = (
            f"  vote-to-screen p50 {self.v2s_p50_ms:4.0f} p99 {self.v2s_p99_ms:4.0f} ms"
            if self.v2s_p99_ms is not None
            else ""
        )
        audit = "" if self.audit_ok is None else f"  audit {'exact' if self.audit_ok else 'FAILED'}"
        return (
            f"  {side:5} offered {self.rate:7.0f}/s  accepted {self.achieved:7.0f}/s  "
            f"p50 {self.p50_ms:5.1f} ms  p99 {self.p99_ms:6.1f} ms{audit}{v2s}  "
            f"-> {'sustained' if self.ok else 'NOT sustained'}{self.note}"
        )


@dataclass
class Search:
    levels: list[Level] = field(default_factory=list)

    @property
    def best(self) -> Level | None:
        ok = [lv for lv in self.levels if lv.ok]
        return max(ok, key=lambda lv: lv.rate) if ok else None


def _steady(
    shape_start: float, seconds: float, latency: list[tuple[int, float]], accepted: dict[int, int]
) -> tuple[float, float, float]:
    """Accepted/s, p50 and p99 between 30% and 85% of the level: past the spawn of the
    voters, before the wind-down."""
    from loadtest.report import percentile

    lo, hi = int(shape_start + 0.3 * seconds), int(shape_start + 0.85 * seconds)
    secs = range(lo, hi)
    rate = sum(accepted.get(s, 0) for s in secs) / max(1, len(secs))
    window = [ms for s, ms in latency if lo <= s < hi]
    return rate, percentile(window, 0.5), percentile(window, 0.99)


def _search(measure: Any, args: argparse.Namespace, deadline: float, side: str) -> Search:
    s = Search()
    rate, bad = args.start_rate, None
    while time.monotonic() + args.level_seconds * 2 < deadline:
        lv = measure(rate)
        s.levels.append(lv)
        print(lv.line(side), flush=True)
        if lv.ok and bad is None:
            rate *= args.factor
            continue
        if not lv.ok:
            bad = rate
        good = s.best.rate if s.best else 0.0
        if bad is None or bad / max(good, 1.0) < 1.2 or len(s.levels) > 10:
            break
        rate = (good + bad) / 2 if good else bad / 2
        if rate < 20:
            break
    return s


def run(args: argparse.Namespace) -> int:
    from bench.target import wait_http
    from buzzer.haproxy import start_local_haproxy
    from buzzer.stack import Stack
    from loadtest import cli as lcli
    from loadtest.audit import collect
    from loadtest.report import percentile
    from services.common.db import migrate
    from services.common.settings import CommonSettings

    # A timeout or Ctrl-C must still stop the stack and both HAProxies (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    common = CommonSettings()
    dsn = common.database_url.get_secret_value().rsplit("/", 1)[0] + "/buzzer_bench_stack"
    asyncio.run(migrate(dsn))
    prefix = f"benchstack{uuid.uuid4().hex[:8]}"
    admin = uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-bench-stack-"))
    env = {
        **os.environ,
        "BUZZER_KEY_PREFIX": prefix,
        "DATABASE_URL": dsn,
        "BUZZER_ADMIN_TOKEN": admin,
        "BUZZER_TOKEN_SECRET": uuid.uuid4().hex * 2,
        "BUZZER_LOG_LEVEL": "WARNING",
        "BUZZER_STATE_DIR": str(tmp / "state"),
    }
    # The audit in this process reads the same Redis prefix and database as the stack.
    os.environ.update(
        {k: env[k] for k in ("BUZZER_KEY_PREFIX", "DATABASE_URL", "BUZZER_ADMIN_TOKEN")}
    )
    base = free_ports(16)
    stack = Stack(
        env=env,
        http_port=base,
        https_port=base + 1,
        stats_port=base + 2,
        ingest=2,
        haproxy=True,
        state_dir=tmp / "state",
        ingest_base_port=base + 3,
        tally_port=base + 5,
        push_port=base + 6,
    )
    bare_ports = [base + 7, base + 8]
    bare_front = Stack(
        env=env,
        http_port=base + 9,
        https_port=base + 10,
        stats_port=base + 11,
        ingest=2,
        haproxy=True,
        state_dir=tmp / "bare",
        ingest_base_port=bare_ports[0],
        with_push=False,
    )
    bare_front.ingest_ports = bare_ports
    bares: list[subprocess.Popen[bytes]] = []
    bare_lb: Any = None
    deadline = time.monotonic() + args.budget
    started = time.monotonic()
    confirm: dict[str, list[Level]] = {"bare": [], "stack": []}
    runs = itertools.count()
    fixed: list[dict[str, Any]] = []
    stack.plan()
    try:
        stack.start()
        for port in bare_ports:
            # Not pinned: the stack's processes are not either, both share the two cores.
            bares.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.tools.bare", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                )
            )
        for port in bare_ports:
            wait_http(f"http://127.0.0.1:{port}/readyz")
        (tmp / "bare" / "logs").mkdir(parents=True, exist_ok=True)
        bare_lb = start_local_haproxy(bare_front.front())
        stack_url, bare_url = f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 9}"
        print(
            f"bench stack: HAProxy {stack_url} -> ingest x2, tally, push; "
            f"bare ceiling: HAProxy {bare_url} -> bare aiohttp x2; "
            f"{args.level_seconds:.0f} s per level, p99 limit {args.p99_ms:.0f} ms",
            flush=True,
        )

        def measure_stack(rate: float) -> Level:
            # A directory per run: a rate measured twice (the confirming rounds) must not
            # read the first run's client records.
            out = tmp / f"stack-{rate:.0f}-{next(runs)}"
            ns = argparse.Namespace(
                profile=f"rate:{rate:.0f}",
                duration=args.level_seconds,
                host=stack_url,
                ws_host=None,
                scale=1.0,
                user_rate=args.user_rate,
                viewers=2,
                processes=args.processes,
                out=out,
                tail=10.0,
                admin_token=admin,
                drain_timeout=30.0,
                no_chart=True,
            )
            rc, figures = lcli.run(ns, quiet=True)
            clients = collect(out)
            shape = (
                json.loads((out / "shape.json").read_text())
                if (out / "shape.json").exists()
                else []
            )
            start = shape[0][0] if shape else time.time()
            accepted: dict[int, int] = {
                s: v.get("accepted", 0) for s, v in clients.timeline.items()
            }
            achieved, p50, p99 = _steady(start, args.level_seconds, clients.latency, accepted)
            probes = [ms for _, ms in clients.probe if ms is not None]
            lost = len(clients.probe) - len(probes)
            ok = rc == 0 and achieved >= 0.95 * rate and p99 < args.p99_ms
            note = "" if not lost else f" ({lost} probes not shown in 5 s)"
            if rc != 0:
                note += " (" + "; ".join(figures.get("problems", [])[:2]) + ")"
            return Level(
                rate,
                achieved,
                p50,
                p99,
                ok,
                audit_ok=rc == 0,
                v2s_p50_ms=percentile(probes, 0.5),
                v2s_p99_ms=percentile(probes + [5000.0] * lost, 0.99),
                note=note,
            )

        def measure_bare(rate: float) -> Level:
            out = tmp / f"bare-{rate:.0f}-{next(runs)}"
            out.mkdir(parents=True, exist_ok=True)
            argv = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(BAREFILE),
                "--headless",
                "-H",
                bare_url,
                "--only-summary",
                "--loglevel",
                "WARNING",
                "--stop-timeout",
                "5",
                "--logfile",
                str(out / "locust.log"),
            ]
            if args.processes:
                argv += ["--processes", str(args.processes)]
            benv = {
                **env,
                "BENCH_RATE": str(rate),
                "BENCH_SECONDS": str(args.level_seconds),
                "BENCH_USER_RATE": str(args.user_rate),
                "BENCH_OUT": str(out),
            }
            subprocess.run(
                argv,
                env=benv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=args.level_seconds + 60,
                check=False,
            )
            latency: list[tuple[int, float]] = []
            accepted: dict[int, int] = {}
            for path in out.glob("bare-*.json"):
                d = json.loads(path.read_text())
                latency += [(int(s), ms) for s, ms in d["latency"]]
                for s, n in d["accepted"].items():
                    accepted[int(s)] = accepted.get(int(s), 0) + n
            shape = (
                json.loads((out / "shape.json").read_text())
                if (out / "shape.json").exists()
                else []
            )
            start = shape[0][0] if shape else time.time()
            achieved, p50, p99 = _steady(start, args.level_seconds, latency, accepted)
            return Level(rate, achieved, p50, p99, achieved >= 0.95 * rate and p99 < args.p99_ms)

        print("stack (through HAProxy, audited):", flush=True)
        stack_search = _search(measure_stack, args, started + args.budget * 0.6, "stack")
        print("bare aiohttp (through HAProxy, the ceiling):", flush=True)
        bare_search = _search(measure_bare, args, deadline, "bare")
        best = stack_search.best
        if best is not None and args.rounds > 0:
            print(f"confirming rounds at {best.rate:.0f} votes/s, alternating:", flush=True)
            for rnd, side in order(args.rounds, ("bare", "stack")):
                lv = (measure_bare if side == "bare" else measure_stack)(best.rate)
                confirm[side].append(lv)
                print(f"r{rnd}{lv.line(side)}", flush=True)
        if best is not None and args.fixed_rates:
            rates = [max(1.0, round(best.rate * f)) for f in args.fixed_rates]
            print(f"open loop at fixed rates {rates} votes/s:", flush=True)
            fixed = asyncio.run(
                _fixed_rates(
                    stack_url, admin, env["BUZZER_TOKEN_SECRET"], rates, args.fixed_seconds
                )
            )
            for share, row in zip(args.fixed_rates, fixed, strict=True):
                row["share_of_max"] = share
                print(_fixed_line(row), flush=True)
    finally:
        if bare_lb is not None:
            bare_lb.stop()
        for proc in bares:
            stop(proc, 10)
        stack.stop()
        _drop_prefix(common.redis_url, prefix)
        shutil.rmtree(tmp, ignore_errors=True)

    sb, bb = stack_search.best, bare_search.best
    bare_at_stack = next((lv for lv in bare_search.levels if sb and lv.rate == sb.rate), None)
    print()
    if sb is None:
        print(f"stack: no rate from {args.start_rate:.0f}/s up was sustained")
    else:
        print(
            f"stack:  {sb.rate:6.0f} votes/s sustained through HAProxy, p99 {sb.p99_ms:.1f} ms, "
            f"audit exact; vote-to-screen p99 {sb.v2s_p99_ms:.0f} ms (p50 {sb.v2s_p50_ms:.0f} ms)"
        )
    if bb is None:
        print(f"bare:   no rate from {args.start_rate:.0f}/s up was sustained")
    else:
        print(
            f"bare:   {bb.rate:6.0f} votes/s sustained through HAProxy, p99 {bb.p99_ms:.1f} ms"
            + (f"; at the stack's rate p99 {bare_at_stack.p99_ms:.1f} ms" if bare_at_stack else "")
        )
    if sb and bb:
        print(f"ratio stack/bare: {sb.rate / bb.rate:.2f}")
    all_exact = all(lv.audit_ok for lv in stack_search.levels if lv.ok)
    all_exact = all_exact and all(lv.audit_ok for lv in confirm["stack"])
    confirmed: dict[str, Any] = {}
    if confirm["stack"] and confirm["bare"]:
        p99 = summarise([lv.p99_ms for lv in confirm["stack"]])
        achieved = summarise(
            [
                st.achieved / ba.achieved if ba.achieved else 0.0
                for ba, st in zip(confirm["bare"], confirm["stack"], strict=True)
            ]
        )
        print(p99.line("stack p99 at the maximum, ms", ".1f"))
        print(achieved.line("stack/bare accepted votes/s at the maximum"))
        confirmed = {"stack_p99_ms": p99.as_dict(), "stack_bare_achieved": achieved.as_dict()}
    at80 = next((r for r in fixed if r.get("share_of_max") == 0.8), None)
    if at80 is not None:
        v2s = at80.get("vote_to_screen_p99_ms")
        ok = (at80["p99_ms"] or 1e9) < 100 and v2s is not None and v2s < 250
        print(
            f"targets at 80 %: vote p99 {at80['p99_ms']} ms (< 100), vote-to-screen p99"
            f" {v2s} ms (< 250) -> {'met' if ok else 'NOT met'}"
        )
    summary = {
        "bench": "stack",
        "stack_rate": round(sb.rate, 1) if sb else 0,
        "stack_p99_ms": round(sb.p99_ms, 1) if sb else None,
        "vote_to_screen_p99_ms": round(sb.v2s_p99_ms, 1)
        if sb and sb.v2s_p99_ms is not None
        else None,
        "vote_to_screen_p50_ms": round(sb.v2s_p50_ms, 1)
        if sb and sb.v2s_p50_ms is not None
        else None,
        "audit_exact": bool(sb) and all_exact,
        "bare_rate": round(bb.rate, 1) if bb else 0,
        "bare_p99_ms": round(bb.p99_ms, 1) if bb else None,
        "bare_p99_ms_at_stack_rate": round(bare_at_stack.p99_ms, 1) if bare_at_stack else None,
        "ratio": round(sb.rate / bb.rate, 3) if sb and bb else None,
        "bare_limited_by_search": bool(bb) and all(lv.ok for lv in bare_search.levels),
        "p99_limit_ms": args.p99_ms,
        "levels": {
            "stack": [
                [round(lv.rate), round(lv.achieved), round(lv.p99_ms, 1), lv.ok]
                for lv in stack_search.levels
            ],
            "bare": [
                [round(lv.rate), round(lv.achieved), round(lv.p99_ms, 1), lv.ok]
                for lv in bare_search.levels
            ],
        },
        "confirm": confirmed,
        "fixed_rate": fixed,
        "seconds": round(time.monotonic() - started),
    }
    print(jsonline.dumps(summary))
    return 0 if sb is not None and all_exact else 1


def _fixed_line(row: dict[str, Any]) -> str:
    return (
        f"  fixed {row['rate']:7.0f}/s ({row['share_of_max']:.0%} of max)  ok {row['ok']}"
        f"  failed {row['failed']}  vote p50 {row['p50_ms']} p99 {row['p99_ms']}"
        f" p99.9 {row['p999_ms']} ms  vote-to-screen p99 {row['vote_to_screen_p99_ms']} ms"
        f" ({row['vote_to_screen_probes']} probes)  generator lag max {row['max_lag_ms']} ms"
    )


def _drop_prefix(redis_url: str, prefix: str) -> None:
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url)
    try:
        batch = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(batch), 1000):
            r.delete(*batch[i : i + 1000])
    finally:
        r.close()


async def _fixed_rates(
    base: str, admin: str, secret: str, rates: list[float], seconds: float, devices: int = 5000
) -> list[dict[str, Any]]:
    """Votes at each fixed rate from the open-loop generator, with a prober beside it.

    The prober votes on an option the load never uses, one tap at a time, and times from
    its send until a live message on the poll's websocket counts it: vote-to-screen.
    """
    import aiohttp
    from pydantic import SecretStr

    from bench.tools.openloop import open_loop, percentile
    from buzzer.http import api
    from services.common.tokens import TokenService

    issuer = TokenService(SecretStr(secret))
    tokens = [issuer.issue().token for _ in range(devices)]
    show = await asyncio.to_thread(
        api, "POST", f"{base}/v1/admin/shows", admin, {"name": "bench open loop"}
    )
    poll = await asyncio.to_thread(
        api,
        "POST",
        f"{base}/v1/admin/polls",
        admin,
        {
            "show_id": show["id"],
            "title": "open loop",
            "options": [{"key": f"o{i}", "label": f"O{i}"} for i in range(8)],
            "max_votes_per_device": None,
            "max_count": 100,
        },
    )
    await asyncio.to_thread(api, "POST", f"{base}/v1/admin/polls/{poll['id']}/open", admin)
    votes_url = f"{base}/v1/polls/{poll['id']}/votes"
    out: list[dict[str, Any]] = []
    conn = aiohttp.TCPConnector(limit=2000)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def vote(option: str, token: str) -> int:
            body = {"option": option, "count": 1, "vote_id": str(uuid.uuid4())}
            headers = {"Authorization": f"Bearer {token}"}
            async with session.post(votes_url, json=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        async def send(i: int) -> bool:
            return await vote(f"o{i % 7}", tokens[i % len(tokens)]) == 202

        # Probe taps the websocket has counted, and taps accepted: across every rate, as
        # the poll's count of the probe option only grows.
        shown = {"n": 0}
        mine = {"n": 0}
        changed = asyncio.Event()

        async def watch(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                n = (data.get("counts") or {}).get("o7")
                if n is not None and int(n) > shown["n"]:
                    shown["n"] = int(n)
                    changed.set()

        async def probe(until: float, delays: list[float], probe_token: str) -> None:
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                if await vote("o7", probe_token) == 202:
                    mine["n"] += 1
                    while shown["n"] < mine["n"] and time.perf_counter() - t0 < 5:
                        changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), 0.5)
                    shown_in_time = shown["n"] >= mine["n"]
                    delays.append((time.perf_counter() - t0) * 1000 if shown_in_time else 5000.0)
                await asyncio.sleep(max(0.0, t0 + 0.2 - time.perf_counter()))

        live = base.replace("http", "ws", 1) + f"/v1/polls/{poll['id']}/live"
        async with session.ws_connect(live) as ws:
            watcher = asyncio.ensure_future(watch(ws))
            probe_token = issuer.issue().token
            try:
                for rate in rates:
                    delays: list[float] = []
                    prober = asyncio.ensure_future(
                        probe(time.perf_counter() + seconds, delays, probe_token)
                    )
                    r = await open_loop(send, rate, seconds)
                    await prober
                    delays.sort()
                    row = r.as_dict()
                    v2s = percentile(delays, 0.99)
                    row["vote_to_screen_p99_ms"] = None if v2s is None else round(v2s, 1)
                    row["vote_to_screen_probes"] = len(delays)
                    out.append(row)
            finally:
                watcher.cancel()
    return out
