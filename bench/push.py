"""``buzzer bench push``: how many viewers one push process holds, at what memory and delay.

Starts ``--push-procs`` push processes (one by default; several share one port with
SO_REUSEPORT, ``BUZZER_REUSE_PORT=1``), connects ``--viewers`` websockets from load-generator
processes, casts votes and publishes ``--rate`` tally updates per second for ``--seconds``
through the real tally code (``bench.tools.tally``: vote_batch.lua, apply.lua, the
publisher), and measures: sockets held, RSS per socket of the push processes, and the delay
from an update's publication (its ``ts``) to its arrival at every viewer, p50/p99.
The last line printed is one JSON object with the figures.

Cores: on a machine of two or more cores, each push process is pinned to a core of its
own and the load generators to the others. With as many push processes as cores (two on
a 2-core machine) the load generators are not pinned and share the push processes'
cores, and the JSON says so (``shared_cores``): the figure is then a lower bound. Each
load-generator process reports its CPU (user+sys over the update window, % of one core,
``client_cpu_pct``), and ``client_cores_busy_pct`` is how busy the cores they were given
were (with push's share when shared); a line warns when either is over 85 %, because then
the viewers, not push, may be what is measured. Connect, load-generator and shutdown
failures (a ``TimeoutError`` among them) are counted in ``errors`` rather than ending the
run; a run with errors writes no profile and exits 1.

On loopback, push's ``write`` to a viewer's socket also runs the viewer's side of TCP on
push's core: py-spy puts about three quarters of push's time in that call at 6,000-10,000
viewers, so the figure is conservative for viewers on a real network.

The update window is judged in ``--rounds`` consecutive slices of the published versions:
delay-to-all p99 of each slice, their median and spread (bench.tools.rounds), so that a
single stall or a noisy neighbour shows as spread rather than as the figure. A delay that
grows in every slice, to twice the first, is a backlog, not noise (``falling_behind``):
push or the viewers cannot keep up, and the p99 then grows with ``--seconds``.

``--joiners N``: N more viewers connect while the updates flow, from one more load
generator started with them, as viewers arrive at a show's start. The delay is still
measured on the viewers that were there first, now through the join: handshakes,
snapshots and the collector's work on what the newcomers leave behind. The JSON gives
``joiners_connected`` and ``joiners_held``, and the joiners' CPU is among the load
generators'.

``--against REV``: push served from git revision REV (a worktree beside this one) and
from this tree, in whole runs of ``--viewers`` that alternate (REV first, then this tree
first, ...), ``--pairs`` of each. The ratios REV/this of each pair's delay-to-all p50
and p99 and of push's CPU, their median and spread, say what a change to push did; above
1, this tree is better. Only push changes sides: the viewers, the publisher and this
bench are this tree's. No profile is written.

``--find-max``: the viewers one push process (or ``--push-procs`` of them) holds with
delay-to-all p99 under ``--p99-ms`` (200) and no error. Each step starts fresh push
processes and measures ``--step-seconds`` of updates; the count doubles from
``--start-viewers`` until a step fails or ``--max-viewers``, then is bisected to within
10 %, within ``--budget-s`` (170 s) overall. Over 20,000 viewers the load generators
connect from several loopback addresses (127.0.0.2, .3, ...), since one source address
reaches one port through only ~28,000 ephemeral ports; the file-descriptor limit is raised
as far as the process may (``ulimit -Hn``; root with CAP_SYS_RESOURCE: fs.nr_open), and
the search is capped by it (``capped_at``: then the figure is a lower bound). The steps
are shorter than push's heartbeat, so none of them holds the viewers' pings: the largest
passing count is then run again for ``--confirm-seconds`` (a whole heartbeat period, in
which every viewer is pinged), and stepped down by a tenth until it passes; that run's
figures are the ones kept (``confirmed``). Written to
``lb/profiles/push.json`` as ``viewers_per_process`` (one process) or
``viewers_two_processes`` (two sharing a port), next to ``cores_per_1m_viewers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import msgspec

from bench.tools import jsonline
from bench.tools.proc import cpu_seconds, rss_bytes, steal_line, steal_pct, steal_seconds
from bench.tools.rounds import order, summarise
from buzzer.ports import free_port

LAT_BUCKETS_MS = 10_000
PUSH_PROFILE = Path(__file__).resolve().parents[1] / "lb" / "profiles" / "push.json"
CLIENT_CPU_WARN_PCT = 85.0
"""A load generator above this share of its core may be the limit, not push."""
PER_SOURCE = 20_000
"""Viewers per loopback source address (the ephemeral range holds ~28,000)."""
FD_MARGIN = 1_000
"""File descriptors a process needs besides its sockets (Redis, logs, pipes)."""

CONFIRM_TRIES = 3
"""Runs that confirm --find-max's figure, a tenth fewer viewers each after a failure."""


def heartbeat_s() -> float:
    """The longest ping period of the push processes this bench starts, read as they read
    it: their settings from this environment (the secrets, which _bench gives them, are
    stand-ins here so that none is made up and logged)."""
    from services.common.settings import PushSettings

    stand_in = uuid.uuid4().hex
    return PushSettings(admin_token=stand_in, token_secret=stand_in).heartbeat_s


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--viewers", type=int, default=10_000, help="websockets to connect (default 10000)"
    )
    p.add_argument("--seconds", type=float, default=20.0, help="how long updates flow (default 20)")
    p.add_argument("--rate", type=float, default=10.0, help="tally updates per second (default 10)")
    p.add_argument("--options", type=int, default=4, help="options in the poll (message size)")
    p.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="load-generator processes (more are added: one per 20,000 viewers at least)",
    )
    p.add_argument(
        "--connect-concurrency", type=int, default=200, help="handshakes in flight per process"
    )
    p.add_argument(
        "--joiners",
        type=int,
        default=0,
        help="more viewers that connect while the updates flow, as at a show's start; the"
        " delay is measured on the others, through the join (default 0)",
    )
    p.add_argument(
        "--push-procs",
        type=int,
        default=1,
        help="push processes sharing the port with SO_REUSEPORT (default 1)",
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--port", type=int, default=0, help="push port (default: a free one)")
    p.add_argument("--rounds", type=int, default=5, help="slices of the update window judged apart")
    p.add_argument(
        "--find-max",
        action="store_true",
        help="search the most viewers held at delay-to-all p99 under --p99-ms with no error",
    )
    p.add_argument(
        "--p99-ms",
        type=float,
        default=200.0,
        help="the p99 target: what --find-max searches under, and what a run must meet to"
        " write its CPU per viewer to the profile (default: %(default)s)",
    )
    p.add_argument(
        "--start-viewers", type=int, default=5_000, help="--find-max: first step (default 5000)"
    )
    p.add_argument(
        "--max-viewers", type=int, default=80_000, help="--find-max: largest step (default 80000)"
    )
    p.add_argument(
        "--step-seconds", type=float, default=6.0, help="--find-max: updates per step (default 6)"
    )
    p.add_argument(
        "--confirm-seconds",
        type=float,
        default=None,
        help="--find-max: updates in the run that confirms the figure (default: push's"
        " heartbeat period and 2 s, so every viewer's ping is in it; 0: no confirmation)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=170.0,
        help="--find-max: no new step once this much time has gone (default 170)",
    )
    p.add_argument(
        "--profile-out",
        type=Path,
        default=PUSH_PROFILE,
        help=f"where `bench cost` and the planner read push's figures (default {PUSH_PROFILE})",
    )
    p.add_argument("--no-profile", action="store_true", help="do not write the profile")
    p.add_argument(
        "--against",
        metavar="REV",
        help="also serve push from git revision REV: whole runs of the same viewers,"
        " alternating with this tree's (--pairs of each), give REV/this ratios of the"
        " delay-to-all p50 and p99 and of push's CPU (above 1: this tree is better);"
        " writes no profile",
    )
    p.add_argument("--pairs", type=int, default=3, help="--against: runs of each side (default 3)")


def run(args: argparse.Namespace) -> int:
    if args.against:
        if args.find_max:
            print("--against compares runs of --viewers; not with --find-max", file=sys.stderr)
            return 2
        result = asyncio.run(_against(args))
        print(jsonline.dumps(result, sort_keys=True))
        return 0 if result.get("error") is None else 1
    if args.find_max:
        result = asyncio.run(_find_max(args))
        ok = result.get("max_viewers") is not None
    else:
        result = asyncio.run(_bench(args, args.viewers, args.seconds))
        _warn_clients(result)
        ok = _failure(result) is None
    if ok and not args.no_profile:
        refused = _not_for_the_profile(args, result)
        if refused is None:
            _write_profile(args, result)
        else:
            print(f"profile not written: {refused}", file=sys.stderr)
    print(jsonline.dumps(result, sort_keys=True))
    return 0 if ok else 1


AGAINST_FIGURES = {
    "delay_to_all_ms_p50": "delay-to-all p50",
    "delay_to_all_ms_p99": "delay-to-all p99",
    "push_cpu_pct": "push CPU",
}
"""What ``--against`` compares, each as REV/this: lower is better for all three."""


async def _against(args: argparse.Namespace) -> dict[str, Any]:
    """Whole runs from REV's checkout and from this tree, alternating (REV first, then
    this tree first, ...), so that a change to push is judged by pairs measured back to
    back on one machine rather than by runs minutes or days apart. Each pair's ratio is
    REV/this; their median and spread say whether the difference outlasts the noise."""
    from bench.tools.checkout import checkout

    if args.pairs < 1:
        return {"bench": "push", "error": "--pairs must be at least 1"}
    runs: list[dict[str, Any]] = []
    with checkout(args.against) as (code, commit):
        print(f"against: {args.against} = {commit[:12]}, served from {code}", file=sys.stderr)
        for pair, side in order(args.pairs, ("against", "this")):
            r = await _bench(args, args.viewers, args.seconds, code if side == "against" else None)
            _warn_clients(r)
            brief = {"pair": pair, "side": side, "errors": r.get("errors") or {}}
            for key in (
                *AGAINST_FIGURES,
                "client_cores_busy_pct",
                "connections_held",
                "versions_received_by_all",
                "versions_partially_received",
                "falling_behind",
                "error",
            ):
                brief[key] = r.get(key)
            runs.append(brief)
            print(
                f"pair {pair + 1} {side}: delay-to-all p50 {r.get('delay_to_all_ms_p50')} ms,"
                f" p99 {r.get('delay_to_all_ms_p99')} ms, push CPU {r.get('push_cpu_pct')} %,"
                f" load generators {r.get('client_cores_busy_pct')} % busy",
                file=sys.stderr,
            )
            failure = _failure(r)
            if failure is not None:
                return {
                    "bench": "push",
                    "against": commit,
                    "runs": runs,
                    "error": f"pair {pair + 1} ({side}) failed: {failure}",
                }
    result: dict[str, Any] = {
        "bench": "push",
        "against": commit,
        "viewers": args.viewers,
        "seconds": args.seconds,
        "rate_per_s": args.rate,
        "runs": runs,
        "error": None,
    }
    by_side = {s: [r for r in runs if r["side"] == s] for s in ("against", "this")}
    for key, label in AGAINST_FIGURES.items():
        pairs = list(zip(by_side["against"], by_side["this"], strict=True))
        ratios = [a[key] / t[key] for a, t in pairs if a.get(key) and t.get(key)]
        if not ratios:
            continue
        summary = summarise(ratios)
        result[f"{key}_against_over_this"] = {**summary.as_dict(), "values": ratios}
        print(summary.line(f"{label}, {args.against}/this", ".3f"), file=sys.stderr)
    return result


def _not_for_the_profile(args: argparse.Namespace, result: dict[str, Any]) -> str | None:
    """Why this run's figures must not reach the planner's profile; None if they may."""
    if args.find_max or _passes(result, args.viewers, args.p99_ms):
        return None
    # Behind on its updates, push did less work per viewer than the viewers asked of
    # it: its CPU share would understate what a viewer costs.
    return (
        f"delay-to-all p99 {result.get('delay_to_all_ms_p99')} ms is not under"
        f" {args.p99_ms:g} ms for all {args.viewers} viewers, so push's CPU per viewer"
        " understates what a viewer costs"
    )


def _failure(r: dict[str, Any]) -> object | None:
    """What went wrong in a run (its error, else its counted errors); None if nothing."""
    if r.get("error") is not None:
        return r["error"]
    return r.get("errors") or None


def _passes(r: dict[str, Any], viewers: int, p99_ms: float) -> bool:
    p99 = r.get("delay_to_all_ms_p99")
    return (
        _failure(r) is None
        and r.get("connections_held") == viewers
        and not r.get("versions_partially_received")
        and p99 is not None
        and p99 < p99_ms
    )


def _warn_clients(r: dict[str, Any]) -> None:
    hot = [p for p in r.get("client_cpu_pct") or [] if p > CLIENT_CPU_WARN_PCT]
    if hot:
        print(
            f"WARNING: a load-generator process used {max(hot):.0f} % of a core (over"
            f" {CLIENT_CPU_WARN_PCT:.0f} %): the viewers may be the limit, not push;"
            " rerun with more --client-procs or on more cores",
            file=sys.stderr,
        )
    busy = r.get("client_cores_busy_pct")
    if busy is not None and busy > CLIENT_CPU_WARN_PCT:
        print(
            f"WARNING: the load generators' cores were {busy:.0f} % busy (over"
            f" {CLIENT_CPU_WARN_PCT:.0f} %): the viewers may be the limit, not push;"
            " rerun on more cores",
            file=sys.stderr,
        )


def _fd_cap() -> int:
    """Most viewers one process can hold under the file-descriptor limit it can get
    (raised as far as allowed: root with CAP_SYS_RESOURCE may go up to fs.nr_open)."""
    want = 1 << 20
    with contextlib.suppress(OSError, ValueError):
        want = int(Path("/proc/sys/fs/nr_open").read_text())
    _raise_nofile(want)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return want - FD_MARGIN
    return hard - FD_MARGIN


async def _find_max(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    procs = max(1, args.push_procs)
    cap = min(args.max_viewers, procs * _fd_cap())
    lo, hi = 0, None  # largest passing count, smallest failing one
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    n = min(args.start_viewers, cap)
    last_s = 0.0

    async def measured(n: int, seconds: float, what: str) -> tuple[dict[str, Any], bool]:
        nonlocal last_s
        t0 = time.monotonic()
        r = await _bench(args, n, seconds)
        last_s = time.monotonic() - t0
        ok = _passes(r, n, args.p99_ms)
        _warn_clients(r)
        steps.append(
            {
                "viewers": n,
                "seconds": seconds,
                "confirm": what == "confirm",
                "pass": ok,
                "held": r.get("connections_held"),
                "delay_to_all_ms_p50": r.get("delay_to_all_ms_p50"),
                "delay_to_all_ms_p99": r.get("delay_to_all_ms_p99"),
                "push_cpu_pct": r.get("push_cpu_pct"),
                "client_cpu_pct": r.get("client_cpu_pct"),
                "client_cores_busy_pct": r.get("client_cores_busy_pct"),
                "errors": r.get("errors"),
                "error": r.get("error"),
                "step_s": round(last_s, 1),
            }
        )
        print(
            f"{what}: {n} viewers, {seconds:g} s -> {'pass' if ok else 'fail'} (p99"
            f" {r.get('delay_to_all_ms_p99')} ms, held {r.get('connections_held')},"
            f" errors {_failure(r) or 0}, {last_s:.0f} s)",
            file=sys.stderr,
        )
        return r, ok

    while True:
        r, ok = await measured(n, args.step_seconds, "find-max")
        if ok:
            lo, best = n, r
        else:
            hi = n
        if hi is None:
            nxt = min(n * 2, cap)
            if nxt == n:
                break
        else:
            if hi - lo <= max(500, lo // 10):
                break
            nxt = (lo + hi) // 2 // 250 * 250 or hi // 2
            if nxt in (lo, hi):
                break
        # A step costs about its connect time, which grows with the count.
        if time.monotonic() - started + last_s * max(1.0, nxt / n) > args.budget_s:
            print("find-max: time budget reached", file=sys.stderr)
            break
        n = nxt
    confirm_s = args.confirm_seconds
    if confirm_s is None:
        confirm_s = heartbeat_s() + 2.0
    confirmed = None
    if lo and confirm_s > 0:
        # A step this short holds no pings; the figure must hold them too.
        for _ in range(CONFIRM_TRIES):
            r, ok = await measured(lo, confirm_s, "confirm")
            if ok:
                best, confirmed = r, True
                break
            hi, lo, best, confirmed = lo, lo * 9 // 10 // 250 * 250, None, False
            if not lo:
                break
        else:
            lo = 0
    return {
        "find_max": True,
        "confirmed": confirmed,
        "confirm_seconds": confirm_s,
        "push_procs": procs,
        "p99_target_ms": args.p99_ms,
        "rate_per_s": args.rate,
        "step_seconds": args.step_seconds,
        "max_viewers": lo or None,
        "first_failing_viewers": hi,
        "capped_at": cap if hi is None else None,
        "elapsed_s": round(time.monotonic() - started, 1),
        "steps": steps,
        "best": best,
    }


def _write_profile(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Add this run's figures to the profile, keeping those other runs wrote."""
    path: Path = args.profile_out
    profile: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        profile = json.loads(path.read_text())
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r = result["best"] if result.get("find_max") else result
    held = r.get("connections_held") if r else None
    if r and held and r.get("push_procs") == 1:
        # One push process is one core: the share of it these viewers used, scaled.
        profile.update(
            {
                "bench": "push",
                "measured_at": now,
                "viewers": held,
                "updates_per_s": args.rate,
                "push_cpu_pct": r["push_cpu_pct"],
                "delay_to_all_ms_p99": r["delay_to_all_ms_p99"],
                "cores_per_1m_viewers": round(r["push_cpu_pct"] / 100 * 1_000_000 / held, 2),
            }
        )
    if result.get("find_max"):
        key = {1: "viewers_per_process", 2: "viewers_two_processes"}.get(result["push_procs"])
        if key is None:
            key = f"viewers_{result['push_procs']}_processes"
        profile[key] = result["max_viewers"]
        profile[key + "_measured"] = {
            "measured_at": now,
            "p99_target_ms": args.p99_ms,
            "updates_per_s": args.rate,
            "first_failing_viewers": result["first_failing_viewers"],
            "confirmed_over_s": result["confirm_seconds"] if result.get("confirmed") else None,
            "capped_at": result["capped_at"],
            "shared_cores": r.get("shared_cores") if r else None,
            "client_cpu_pct_max": max(r.get("client_cpu_pct") or [0]) if r else None,
            "client_cores_busy_pct": r.get("client_cores_busy_pct") if r else None,
            "how": "bench push --find-max: most viewers with delay-to-all p99 under the"
            " target and no error, push procs on their own cores unless shared_cores",
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonline.dumps(profile, indent=2, sort_keys=True) + "\n")
    print(f"profile written to {path}", file=sys.stderr)


# -- load generator (one process; many sockets on one loop) ------------------------------


class _Msg(msgspec.Struct):
    poll: str = ""
    version: int = 0
    ts: int = 0
    type: str = ""
    final: bool = False


def _client_main(
    url: str, n: int, concurrency: int, cpus: list[int], source: str | None, conn: Connection
) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    _raise_nofile(n + FD_MARGIN)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client(url, n, concurrency, source, conn))


async def _client(url: str, n: int, concurrency: int, source: str | None, conn: Connection) -> None:
    from bench.tools import wsclient

    decoder = msgspec.json.Decoder(_Msg)
    per_version: dict[int, list[float]] = {}  # version -> [received, max delay ms]
    hist = [0] * (LAT_BUCKETS_MS + 1)
    snapshots = 0
    target = [n]
    all_snapshots = asyncio.Event()

    def on_text(data: bytes) -> None:
        nonlocal snapshots
        m = decoder.decode(data)
        if m.type == "snapshot":
            snapshots += 1
            if snapshots >= target[0]:
                all_snapshots.set()
            return
        delay = time.time() * 1000 - m.ts
        slot = per_version.get(m.version)
        if slot is None:
            per_version[m.version] = [1, delay]
        else:
            slot[0] += 1
            if delay > slot[1]:
                slot[1] = delay
        hist[min(LAT_BUCKETS_MS, max(0, int(delay)))] += 1

    sem = asyncio.Semaphore(concurrency)
    clients: list[Any] = []
    errors: dict[str, int] = {}

    async def one() -> None:
        async with sem:
            try:
                clients.append(
                    await wsclient.connect(url, on_text=on_text, timeout=30, source=source)
                )
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    target[0] = len(clients)
    if snapshots >= target[0]:
        all_snapshots.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_snapshots.wait(), 30)
    conn.send({"connected": len(clients), "snapshots": snapshots, "errors": errors})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "stop"
    closes: dict[str, int] = {}
    open_now = 0
    for c in clients:
        if c.closed.done():
            code = str(c.closed.result()[0])
            closes[code] = closes.get(code, 0) + 1
        else:
            open_now += 1
    conn.send({"per_version": per_version, "hist": hist, "open": open_now, "closes": closes})
    await loop.run_in_executor(None, conn.recv)  # "shutdown": count 1001s after SIGTERM
    if clients:
        await asyncio.wait([c.closed for c in clients], timeout=20)
    codes: dict[str, int] = {}
    for c in clients:
        code = str(c.closed.result()[0]) if c.closed.done() else "open"
        codes[code] = codes.get(code, 0) + 1
    conn.send({"shutdown_codes": codes})
    for c in clients:
        c.abort()


# -- coordinator -------------------------------------------------------------------------


def _raise_nofile(need: int = 0) -> None:
    """Soft limit to the hard one; as root, both up to ``need`` if that is higher."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and need > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _hist_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q (Prometheus cumulative buckets)."""
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    for le, cum in buckets:
        if cum >= target:
            return le
    return None


async def _server_delays(port: int) -> dict[str, Any]:
    """Push's own view: publication to written-to-every-socket, and one fan-out's duration."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return server_delays(await r.text())


def server_delays(text: str) -> dict[str, Any]:
    """:func:`_server_delays` from the text of push's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    out: dict[str, Any] = {}
    for metric, name in (
        ("buzzer_push_delivery_delay_seconds", "server_publish_to_written_ms"),
        ("buzzer_push_fanout_seconds", "server_fanout_ms"),
    ):
        family = families.get(metric)
        buckets = sorted(
            (float(s.labels["le"]), s.value)
            for s in (family.samples if family is not None else ())
            if s.name.endswith("_bucket")
        )
        top = max((le for le, _ in buckets if math.isfinite(le)), default=None)
        for q in (0.5, 0.99):
            v = _hist_quantile(buckets, q)
            key = f"{name}_p{int(q * 100)}"
            if v is not None and not math.isfinite(v) and top is not None:
                # Past the histogram's last bound: say how far it does reach.
                out[f"{key}_le"], out[f"{key}_above"] = None, round(top * 1000, 1)
            else:
                out[f"{key}_le"] = None if v is None else round(v * 1000, 1)
    return out


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return round(sorted_values[i], 1)


def falling_behind(round_p99s: list[float]) -> bool:
    """Whether the delay grew in every round, to at least twice the first: a backlog
    building up rather than noise around a steady state."""
    if len(round_p99s) < 3:
        return False
    rising = all(b > a for a, b in itertools.pairwise(round_p99s))
    return rising and round_p99s[-1] >= 2 * round_p99s[0]


def _round_p99s(per_version: dict[int, list[float]], held: int, rounds: int) -> list[float]:
    """Delay-to-all p99 of each of ``rounds`` consecutive slices of the versions, in
    publication order; a version some viewer missed counts as the 10 s cap."""
    versions = sorted(per_version)
    if rounds < 1 or len(versions) < rounds:
        return []
    size = len(versions) / rounds
    out: list[float] = []
    for r in range(rounds):
        chunk = versions[int(r * size) : int((r + 1) * size)]
        delays = sorted(
            per_version[v][1] if per_version[v][0] >= held else float(LAT_BUCKETS_MS) for v in chunk
        )
        p99 = _percentile(delays, 0.99)
        if p99 is not None:
            out.append(p99)
    return out


def _hist_percentile(hist: list[int], q: float) -> int | None:
    total = sum(hist)
    if total == 0:
        return None
    target = q * total
    seen = 0
    for ms, n in enumerate(hist):
        seen += n
        if seen >= target:
            return ms
    return len(hist) - 1


def _listeners(port: int) -> int:
    """Sockets listening on ``port`` (one per push process sharing it)."""
    want = f":{port:04X}"
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1].endswith(want) and parts[3] == "0A":
                    n += 1
    return n


async def _wait_ready(
    port: int, procs: list[asyncio.subprocess.Process], timeout: float = 30
) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.returncode is not None:
                    raise RuntimeError(f"push exited with {proc.returncode}")
            # Sharing a port, /readyz answers from any one of them: count the listeners too.
            if len(procs) == 1 or _listeners(port) >= len(procs):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            return
            await asyncio.sleep(0.1)
    raise RuntimeError("push did not become ready")


async def _recv(conn: Connection, timeout: float) -> Any:
    """The next message from a load generator, or TimeoutError if it has none in time."""
    loop = asyncio.get_running_loop()
    ready = await loop.run_in_executor(None, conn.poll, timeout)
    if not ready:
        raise TimeoutError(f"load generator silent for {timeout:.0f} s")
    return conn.recv()


def _count(errors: dict[str, int], exc: BaseException, where: str) -> None:
    _add_errors(errors, {type(exc).__name__: 1}, where)


def _add_errors(errors: dict[str, int], counts: dict[str, int], where: str) -> None:
    """A load generator's error counts, each under ``where:`` its name."""
    for name, n in counts.items():
        key = f"{where}:{name}"
        errors[key] = errors.get(key, 0) + n


def _fds(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


async def _bench(
    args: argparse.Namespace, viewers: int, seconds: float, code: Path | None = None
) -> dict[str, Any]:
    """One run; ``code``: the checkout push is served from (default: this tree)."""
    import redis.asyncio as aioredis

    from bench.tools.tally import LiveTally
    from services.common.messages import Keys

    npush = max(1, args.push_procs)
    fd_cap = _fd_cap()
    nclients = max(1, args.client_procs, math.ceil(viewers / min(PER_SOURCE, fd_cap)))
    per_proc = math.ceil((viewers + args.joiners) / npush)
    if per_proc > fd_cap:
        print(
            f"WARNING: {per_proc} viewers per push process is over the file-descriptor limit"
            f" ({fd_cap + FD_MARGIN}): the rest will be refused (raise `ulimit -Hn`)",
            file=sys.stderr,
        )
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2 and shutil.which("taskset") is not None
    # Each push process on a core of its own, the viewers on the rest; with as many push
    # processes as cores the viewers are not pinned and share the cores with push.
    shared = pin and npush >= len(cpus)
    push_cpus: list[int | None] = [cpus[i % len(cpus)] if pin else None for i in range(npush)]
    client_cpus = cpus[npush:] if pin and not shared else []
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix=prefix)
    redis = aioredis.from_url(args.redis_url)
    tally = LiveTally(redis, keys)
    poll = "bench"
    options = [f"opt{i}" for i in range(args.options)]
    await tally.define(poll, options, title="Bench poll")
    port = args.port or free_port()
    env = {
        **os.environ,
        "REDIS_URL": args.redis_url,
        "BUZZER_KEY_PREFIX": prefix,
        "BUZZER_PORT": str(port),
        "BUZZER_MAX_CONNECTIONS": str(viewers + args.joiners + 100),
        "BUZZER_MAX_CONNECTIONS_PER_IP": str(viewers + args.joiners + 100),
        "BUZZER_LOG_LEVEL": "WARNING",
        "BUZZER_ADMIN_TOKEN": uuid.uuid4().hex,
        "BUZZER_TOKEN_SECRET": uuid.uuid4().hex,
        "BUZZER_REUSE_PORT": "1" if npush > 1 else "0",
    }
    base_cmd = [
        sys.executable,
        "-c",
        "from services.common.settings import PushSettings\n"
        "from services.push.main import run\n"
        "run(PushSettings())",
    ]
    errors: dict[str, int] = {}
    result: dict[str, Any] = {
        "viewers_target": viewers,
        "push_procs": npush,
        "push_cpu": push_cpus[0] if npush == 1 else push_cpus,
        "client_procs": nclients,
        "client_cpus": client_cpus,
        "shared_cores": shared,
        "rate_per_s": args.rate,
        "seconds": seconds,
        "errors": errors,
        "error": None,
    }
    if shared:
        print(
            f"note: {npush} push processes on {len(cpus)} cores: push and the load generators"
            " share the cores (shared_cores), so this is a lower bound for them",
            file=sys.stderr,
        )
    logs: list[IO[bytes]] = []
    pushes: list[asyncio.subprocess.Process] = []
    ctx = mp.get_context("spawn")
    procs: list[tuple[Any, Connection]] = []
    alive: list[tuple[Any, Connection]] = []
    joiner: tuple[Any, Connection] | None = None
    try:
        for i in range(npush):
            cmd = list(base_cmd)
            if push_cpus[i] is not None:
                cmd = ["taskset", "-c", str(push_cpus[i]), *cmd]
            # Closed in the finally below, after its tail is printed.
            log = tempfile.TemporaryFile()  # noqa: SIM115
            logs.append(log)
            penv = {**env, "BUZZER_INSTANCE_ID": f"bench-{os.getpid()}-{i}"}
            pushes.append(
                await asyncio.create_subprocess_exec(
                    *cmd, env=penv, stdout=log, stderr=log, cwd=code
                )
            )
        await _wait_ready(port, pushes)
        await asyncio.sleep(0.5)
        rss_before = sum(rss_bytes(p.pid) // 1024 for p in pushes)
        fds_before = [_fds(p.pid) for p in pushes]
        url = f"ws://127.0.0.1:{port}/v1/polls/{poll}/live"
        share = [
            viewers // nclients + (1 if i < viewers % nclients else 0) for i in range(nclients)
        ]
        # One loopback source per load generator once one source's ports could run out.
        sources = [f"127.0.0.{2 + i}" if viewers > PER_SOURCE else None for i in range(nclients)]
        started = time.monotonic()
        for n, src in zip(share, sources, strict=True):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_client_main,
                args=(url, n, args.connect_concurrency, client_cpus, src, child),
            )
            p.start()
            procs.append((p, parent))
        ready: list[dict[str, Any]] = []
        connect_timeout = 60 + viewers / 500
        for pc in procs:
            try:
                ready.append(await _recv(pc[1], connect_timeout))
                alive.append(pc)
            except (TimeoutError, EOFError, OSError) as exc:
                _count(errors, exc, "loadgen")
        connected = sum(r["connected"] for r in ready)
        result["connect_s"] = round(time.monotonic() - started, 2)
        for r in ready:
            _add_errors(errors, r["errors"], "connect")
        result["snapshots"] = sum(r["snapshots"] for r in ready)
        await asyncio.sleep(1.0)
        rss_after = sum(rss_bytes(p.pid) // 1024 for p in pushes)
        result["connections"] = connected
        result["connections_per_push_proc"] = [
            _fds(p.pid) - b for p, b in zip(pushes, fds_before, strict=True)
        ]
        result["rss_before_mb"] = round(rss_before / 1024, 1)
        result["rss_after_mb"] = round(rss_after / 1024, 1)
        result["kb_per_connection"] = round((rss_after - rss_before) / max(1, connected), 1)

        cpu_push0 = [cpu_seconds(p.pid) for p in pushes]
        cpu_clients0 = [cpu_seconds(p.pid or 0) for p, _ in procs]
        steal0 = steal_seconds()
        wall0 = time.monotonic()
        if args.joiners > 0:
            # One more load generator, on the viewers' cores, started with the updates.
            parent, child = ctx.Pipe()
            source = f"127.0.0.{2 + nclients}" if viewers + args.joiners > PER_SOURCE else None
            jp = ctx.Process(
                target=_client_main,
                args=(url, args.joiners, args.connect_concurrency, client_cpus, source, child),
            )
            jp.start()
            joiner = (jp, parent)
        # Votes flowing: each round's votes appended, applied and published by the real
        # tally code at `rate` rounds per second; an update's ts is its publication time.
        updates = 0
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        end = next_at + seconds
        while time.monotonic() < end:
            updates += 1
            await tally.add_votes(
                poll, {o: 1 + (updates * (i + 1)) % 7 for i, o in enumerate(options)}
            )
            await tally.publish(poll)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        wall = time.monotonic() - wall0
        joiner_cpu = cpu_seconds(joiner[0].pid or 0) if joiner is not None else 0.0
        # A p99 over 200 ms with the host taking the cores is not the code's alone.
        result["steal_pct_max"] = round(steal_pct(steal0, steal_seconds(), wall), 1)
        print(steal_line([result["steal_pct_max"]]), file=sys.stderr)
        per_push = [
            round(100 * (cpu_seconds(p.pid) - c0) / wall, 1)
            for p, c0 in zip(pushes, cpu_push0, strict=True)
        ]
        result["push_cpu_pct"] = round(sum(per_push), 1)
        if npush > 1:
            result["push_cpu_pct_per_proc"] = per_push
        client_pct = []
        for (p, _), c0 in zip(procs, cpu_clients0, strict=True):
            with contextlib.suppress(OSError):
                client_pct.append(round(100 * (cpu_seconds(p.pid or 0) - c0) / wall, 1))
        if joiner is not None:
            client_pct.append(round(100 * joiner_cpu / wall, 1))
        result["client_cpu_pct"] = client_pct
        result["clients_cpu_pct"] = round(sum(client_pct), 1)
        # Load generators pinned together share their cores: what is left of those.
        client_cores = len(client_cpus) or len(cpus) or 1
        result["client_cores_busy_pct"] = round(
            (sum(client_pct) + (sum(per_push) if shared else 0)) / client_cores, 1
        )
        await asyncio.sleep(2.0)
        if npush == 1:
            # Sharing a port, a scrape reaches one process only: its histograms would
            # describe an arbitrary half of the viewers.
            try:
                result.update(await _server_delays(port))
            except Exception as exc:
                _count(errors, exc, "metrics")
        result["updates_published"] = updates
        result["rss_end_mb"] = round(sum(rss_bytes(p.pid) // 1024 for p in pushes) / 1024, 1)
        if joiner is not None:
            await _joined(joiner, result, errors, connect_timeout)
        for _, c in alive:
            c.send("stop")
        stats: list[dict[str, Any]] = []
        for pc in list(alive):
            try:
                stats.append(await _recv(pc[1], 60))
            except (TimeoutError, EOFError, OSError) as exc:
                _count(errors, exc, "loadgen")
                alive.remove(pc)
        held = sum(s["open"] for s in stats)
        per_version: dict[int, list[float]] = {}
        hist = [0] * (LAT_BUCKETS_MS + 1)
        for s in stats:
            for v, (n, mx) in s["per_version"].items():
                slot = per_version.setdefault(int(v), [0, 0.0])
                slot[0] += n
                slot[1] = max(slot[1], mx)
            for i, n in enumerate(s["hist"]):
                hist[i] += n
        to_all = sorted(mx for n, mx in per_version.values() if n >= held)
        result["connections_held"] = held
        result["client_closes"] = {k: v for s in stats for k, v in s["closes"].items()}
        result["versions_received_by_all"] = len(to_all)
        result["versions_partially_received"] = sum(1 for n, _ in per_version.values() if n < held)
        result["delay_to_all_ms_p50"] = _percentile(to_all, 0.50)
        result["delay_to_all_ms_p99"] = _percentile(to_all, 0.99)
        result["delay_to_all_ms_max"] = _percentile(to_all, 1.0)
        rounds = _round_p99s(per_version, held, args.rounds)
        if rounds:
            summary = summarise(rounds)
            result["delay_to_all_ms_p99_rounds"] = {**summary.as_dict(), "values": rounds}
            print(summary.line("delay-to-all p99 per round, ms", ".0f"), file=sys.stderr)
            result["falling_behind"] = falling_behind(rounds)
            if result["falling_behind"]:
                print(
                    f"WARNING: delay-to-all grew in every round ({rounds[0]:.0f} ->"
                    f" {rounds[-1]:.0f} ms): not a steady state. Push or the viewers cannot"
                    " keep up at this rate, and the p99 is only as long as the run; fewer"
                    " viewers, or more cores",
                    file=sys.stderr,
                )
        result["delay_per_message_ms_p50"] = _hist_percentile(hist, 0.50)
        result["delay_per_message_ms_p99"] = _hist_percentile(hist, 0.99)
        result["messages_received"] = sum(hist)
        if joiner is not None and "joiners_held" in result:
            alive.append(joiner)  # its viewers see the shutdown too
        await _shutdown(pushes, alive, result, errors)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for f in logs:
            f.seek(0)
            tail = f.read()[-3000:].decode(errors="replace")
            if tail.strip():
                sys.stderr.write(tail)
            f.close()
        for p, _ in procs + ([joiner] if joiner is not None else []):
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        for proc in pushes:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await tally.cleanup()
        await redis.aclose()
    return result


async def _joined(
    joiner: tuple[Any, Connection],
    result: dict[str, Any],
    errors: dict[str, int],
    timeout: float,
) -> None:
    """What the viewers that joined during the updates report once connected; their
    stats are then read apart from the others' (they missed the first updates)."""
    try:
        ready = await _recv(joiner[1], timeout)
    except (TimeoutError, EOFError, OSError) as exc:
        _count(errors, exc, "joiners")
        return
    result["joiners_connected"] = ready["connected"]
    _add_errors(errors, ready["errors"], "joiners")
    joiner[1].send("stop")
    try:
        stats = await _recv(joiner[1], 60)
    except (TimeoutError, EOFError, OSError) as exc:
        _count(errors, exc, "joiners")
        return
    result["joiners_held"] = stats["open"]
    result["joiners_closes"] = stats["closes"]


async def _shutdown(
    pushes: list[asyncio.subprocess.Process],
    alive: list[tuple[Any, Connection]],
    result: dict[str, Any],
    errors: dict[str, int],
) -> None:
    """SIGTERM: every viewer should see 1001, then each process exits."""
    t0 = time.monotonic()
    for proc in pushes:
        proc.send_signal(signal.SIGTERM)
    for _, c in alive:
        c.send("shutdown")
    codes: dict[str, int] = {}
    for _, c in alive:
        try:
            got = await _recv(c, 60)
        except (TimeoutError, EOFError, OSError) as exc:
            _count(errors, exc, "shutdown")
            continue
        for k, v in got["shutdown_codes"].items():
            codes[k] = codes.get(k, 0) + v
    rcs: list[int | None] = []
    for proc in pushes:
        try:
            rcs.append(await asyncio.wait_for(proc.wait(), 30))
        except TimeoutError as exc:
            _count(errors, exc, "shutdown")
            rcs.append(None)
    result["shutdown_s"] = round(time.monotonic() - t0, 2)
    result["shutdown_close_codes"] = codes
    result["push_exit_code"] = rcs[0] if len(rcs) == 1 else rcs


def main() -> None:
    parser = argparse.ArgumentParser(prog="buzzer bench push", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
