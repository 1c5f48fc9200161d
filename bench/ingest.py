"""vote endpoint vs bare aiohttp, one core each side.

``buzzer bench ingest`` runs one ingest process on core 0 and wrk on core 1, against
(a) a bare aiohttp handler that reads the same JSON and answers 202 (the ceiling) and
(b) the real vote endpoint (token, validation, idempotency, atomic append to Redis),
then checks that every 202 is in the stream. The last line is one JSON object.

A third side, the floor (bench.tools.floor), is the bare handler that also waits for one
durable Redis round trip per loop turn, as votes do: floor/bare is what aiohttp and the
round trip leave of the ceiling, the best any Redis-backed handler could reach here, and
real/floor is what Buzzer's own work per vote costs on top.

Ingest writes to a ``redis-server`` of the bench's own with the deployment's durability
(AOF, ``appendfsync always``: a 202 is on Redis's disk), pinned to core 1 with wrk:
Redis's CPU is the Redis tier's cost (``bench redis``), and on ingest's core it would
be charged to ingest. ``--redis-cpu -1`` leaves it unpinned, as the figures before
2026-12-02 were measured (against the shared Redis, AOF off).

Bare and real are measured in ``--rounds`` rounds, back to back in alternating order
(bench.tools.rounds); the ratio is the median of the rounds' ratios, with its spread.

``--against REV`` adds a fourth side: the vote endpoint served from git revision REV
(a temporary worktree, with its own Redis, poll and tokens), in the same rounds. Its
ratio real/against is what a change gained or lost, measured in one run; on these
noisy machines two runs minutes apart differ by more than most changes do.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec

from bench.target import VoteTarget, vote_target, wait_http
from bench.tools import callgrind, exact, jsonline
from bench.tools.checkout import checkout
from bench.tools.proc import (
    NOISY_STEAL_PCT,
    cpu_seconds,
    steal_line,
    steal_pct,
    steal_seconds,
    stop,
)
from bench.tools.rounds import Summary, order, summarise
from bench.tools.wrk import WrkResult, pinned
from buzzer.ports import free_port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--devices", type=int, default=5000)
    p.add_argument(
        "--redis-cpu", type=int, default=1, help="core of the bench's Redis; -1: unpinned"
    )
    p.add_argument(
        "--appendfsync",
        choices=("always", "everysec", "no"),
        default="always",
        help="the bench Redis's AOF policy (default always: the deployment's)",
    )
    p.add_argument(
        "--against",
        metavar="REV",
        help="also serve the vote endpoint from git revision REV (a temporary worktree)"
        " in the same alternating rounds: real/against is a change's speed-up, measured"
        " in one run",
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count each side's instructions per request under valgrind's callgrind"
        " instead of timing it with wrk: a cost a busy machine cannot move (user space"
        " only; bench.tools.callgrind)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=3000,
        help="--instructions: requests per side and round, sent exactly (default 3000)",
    )


def _cheaper(base: list[float], subject: list[float]) -> Summary:
    """Per-round ratios of CPU per request, base/subject: above 1, the subject is cheaper."""
    return summarise([b / s if s else 0.0 for b, s in zip(base, subject, strict=True)])


def _ratios(base: list[WrkResult], subject: list[WrkResult]) -> Summary:
    """Per-round throughput ratios subject/base, rounds paired as measured."""
    return summarise([s.rps / b.rps if b.rps else 0.0 for b, s in zip(base, subject, strict=True)])


def run(args: argparse.Namespace) -> int:
    if args.instructions:
        return _instructions(args)
    if not shutil.which("wrk"):
        print("wrk is not installed (scripts/setup installs it)", file=sys.stderr)
        return 2
    sides: tuple[str, ...] = ("bare", "floor", "real") + (("against",) if args.against else ())
    results: dict[str, list[WrkResult]] = {k: [] for k in sides}
    cpu_pct: dict[str, list[float]] = {k: [] for k in sides}
    us_per_req: dict[str, list[float]] = {k: [] for k in sides}
    steal_of: dict[str, list[float]] = {k: [] for k in sides}
    bare_port, floor_port = free_port(), free_port()
    bare = subprocess.Popen(pinned(0, [sys.executable, "-m", "bench.tools.bare", str(bare_port)]))
    floor: subprocess.Popen[bytes] | None = None
    against_commit = ""
    try:
        redis_cpu = None if args.redis_cpu < 0 else args.redis_cpu
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(
                vote_target(args.devices, redis_cpu=redis_cpu, appendfsync=args.appendfsync)
            )
            other: VoteTarget | None = None
            if args.against:
                code, against_commit = stack.enter_context(checkout(args.against))
                other = stack.enter_context(
                    vote_target(
                        args.devices, redis_cpu=redis_cpu, appendfsync=args.appendfsync, code=code
                    )
                )
                print(f"against: {args.against} = {against_commit[:12]}, served from {code}")
            floor = subprocess.Popen(
                pinned(
                    0,
                    [
                        sys.executable,
                        "-m",
                        "bench.tools.floor",
                        str(floor_port),
                        target.redis_url,
                        f"{target.prefix}:floor",
                    ],
                )
            )
            wait_http(f"http://127.0.0.1:{bare_port}/readyz")
            wait_http(f"http://127.0.0.1:{floor_port}/readyz")
            urls = {
                "bare": f"http://127.0.0.1:{bare_port}",
                "floor": f"http://127.0.0.1:{floor_port}",
                "real": target.url,
            }
            pids = {"bare": bare.pid, "floor": floor.pid, "real": target.pid}
            # Each side's own poll, tokens and Redis: the other revision is driven by its
            # own target, so that its 202s are checked against its own stream.
            targets = {"bare": target, "floor": target, "real": target}
            if other is not None:
                urls["against"], pids["against"], targets["against"] = (
                    other.url,
                    other.pid,
                    other,
                )
            ok = dict.fromkeys(("real", "against"), 0)
            for name, url in urls.items():  # warm up every side: caches, pools, token cache
                r = targets[name].wrk(2, args.connections, url)
                if name in ok:
                    ok[name] += r.ok
            for rnd, name in order(args.rounds, tuple(urls)):
                cpu0, steal0 = cpu_seconds(pids[name]), steal_seconds()
                r = targets[name].wrk(args.seconds, args.connections, urls[name])
                # The server's share of its core: near 100 % it is the limit; well below,
                # the clients or Redis are, and the ratio says little about the code.
                busy = 100 * (cpu_seconds(pids[name]) - cpu0) / args.seconds
                steal_of[name].append(steal_pct(steal0, steal_seconds(), args.seconds))
                results[name].append(r)
                cpu_pct[name].append(busy)
                us_per_req[name].append(busy * 1e4 / r.rps if r.rps else 0.0)
                if name in ok:
                    ok[name] += r.ok
                print(
                    f"  r{rnd} {name:5} {r.rps:9.0f} req/s  p50 {r.p50_ms:6.2f} ms"
                    f"  p99 {r.p99_ms:6.2f} ms  cpu {busy:4.0f} %"
                    f"  {us_per_req[name][-1]:5.1f} us/req  non-2xx {r.non2xx}"
                    f"  socket errors {r.errors}  steal {steal_of[name][-1]:3.0f} %",
                    flush=True,
                )
            time.sleep(0.5)
            in_stream = target.entries()
            against_in_stream = other.entries() if other is not None else 0
    finally:
        for proc in (bare, floor):
            if proc is not None:
                stop(proc)

    # The round whose rate is the median stands for each side in the figures below.
    best = {k: sorted(v, key=lambda r: r.rps)[len(v) // 2] for k, v in results.items()}
    ratios = _ratios(results["bare"], results["real"])
    ratio = ratios.median
    floor_of_bare = _ratios(results["bare"], results["floor"])
    real_of_floor = _ratios(results["floor"], results["real"])
    cost = _cheaper(us_per_req["bare"], us_per_req["real"])
    # wrk stops with requests in flight: those may be appended without wrk counting
    # their 202, so the stream may hold up to one extra entry per connection per run.
    cut_off = args.connections * (args.rounds + 2)
    accepted = ok["real"]
    durable = accepted <= in_stream <= accepted + cut_off
    if args.against:
        durable = durable and ok["against"] <= against_in_stream <= ok["against"] + cut_off
    print(f"bare aiohttp (ceiling): {best['bare'].rps:.0f} req/s, p99 {best['bare'].p99_ms:.2f} ms")
    print(
        f"floor (bare + Redis):   {best['floor'].rps:.0f} req/s, p99 {best['floor'].p99_ms:.2f} ms"
    )
    print(f"vote endpoint:          {best['real'].rps:.0f} req/s, p99 {best['real'].p99_ms:.2f} ms")
    print(ratios.line("ratio real/bare (target >= 0.65, stretch 0.8)"))
    print(cost.line("CPU per request, bare/real (what the ratio would be at 100 % CPU)"))
    print(floor_of_bare.line("ratio floor/bare (aiohttp + one durable round trip per batch)"))
    print(real_of_floor.line("ratio real/floor (Buzzer's own work per vote)"))
    against: dict[str, object] | None = None
    if args.against:
        speedup = _ratios(results["against"], results["real"])
        cheaper = _cheaper(us_per_req["against"], us_per_req["real"])
        print(
            f"vote endpoint at {args.against} ({against_commit[:12]}): "
            f"{best['against'].rps:.0f} req/s, p99 {best['against'].p99_ms:.2f} ms, "
            f"{ok['against']} 202s, {against_in_stream} entries in its stream"
        )
        print(speedup.line(f"ratio real/against (this checkout's votes/s over {args.against}'s)"))
        print(cheaper.line(f"CPU per vote, {args.against}/this checkout"))
        against = {
            "rev": args.against,
            "commit": against_commit,
            "vote_rps": round(best["against"].rps, 1),
            "ratio_rounds": speedup.as_dict(),
            "cpu_ratio_rounds": cheaper.as_dict(),
            "accepted": ok["against"],
            "in_stream": against_in_stream,
        }
    for name in sides:
        print(f"{name} server CPU: {summarise(cpu_pct[name]).line('% of its core', '.0f')}")
    stolen = [pct for side in sides for pct in steal_of[side]]
    print(steal_line(stolen))
    # The pairs the host left alone, where there are enough of them to judge.
    quiet = [
        real.rps / bare.rps
        for bare, real, sb, sr in zip(
            results["bare"], results["real"], steal_of["bare"], steal_of["real"], strict=True
        )
        if bare.rps and max(sb, sr) <= NOISY_STEAL_PCT
    ]
    if stolen and max(stolen) > NOISY_STEAL_PCT:
        if len(quiet) >= 3:
            print(
                summarise(quiet).line(
                    f"ratio real/bare, rounds with steal <= {NOISY_STEAL_PCT:.0f} %"
                )
            )
        else:
            print(
                f"only {len(quiet)} round(s) with steal <= {NOISY_STEAL_PCT:.0f} %: too few to judge apart"
            )
    print(
        f"202s: {accepted}, entries in the stream: {in_stream} (+ up to {cut_off} cut off by wrk"
        f" in flight) -> {'every 202 is in the stream' if durable else 'MISMATCH'}"
    )
    summary = {
        "bench": "ingest",
        "bare_rps": round(best["bare"].rps, 1),
        "bare_p99_ms": best["bare"].p99_ms,
        "floor_rps": round(best["floor"].rps, 1),
        "vote_rps": round(best["real"].rps, 1),
        "vote_p99_ms": best["real"].p99_ms,
        "ratio": round(ratio, 3),
        "ratio_rounds": ratios.as_dict(),
        "cpu_ratio": round(cost.median, 3),
        "cpu_ratio_rounds": cost.as_dict(),
        "floor_ratio_rounds": floor_of_bare.as_dict(),
        "real_floor_ratio_rounds": real_of_floor.as_dict(),
        "us_per_request": {k: round(summarise(v).median, 1) for k, v in us_per_req.items()},
        "server_cpu_pct": {k: round(summarise(v).median, 1) for k, v in cpu_pct.items()},
        "connections": args.connections,
        "redis": {"cpu": args.redis_cpu, "appendfsync": args.appendfsync},
        "accepted": accepted,
        "in_stream": in_stream,
        "durable": durable,
        "non2xx": sum(r.non2xx for r in results["real"]),
        "steal_pct_max": round(max(stolen, default=0.0), 1),
        "ratio_quiet_rounds": summarise(quiet).as_dict() if quiet else None,
        "against": against,
    }
    print(jsonline.dumps(summary))
    return 0 if durable else 1


_WARM_DEVICES = 1000
"""Devices the counted requests come from, each seen once before counting starts: the
token cache then holds them all, as it does in a show (a device votes many times)."""


def _voter(target: VoteTarget) -> Callable[[int], list[bytes]]:
    """``n`` -> ``n`` unique votes on ``target``'s poll, from its first devices in turn,
    shaped as wrk's script shapes them (bench.tools.wrk). The tokens are read once."""
    tokens = Path(target.script_args[0]).read_text().split()[:_WARM_DEVICES]
    poll, options = target.wrk_env["BENCH_POLL"], int(target.wrk_env["BENCH_OPTIONS"])

    def votes(n: int) -> list[bytes]:
        return [
            exact.post(
                f"/v1/polls/{poll}/votes",
                msgspec.json.encode(
                    {"option": f"o{i % options}", "count": 1, "vote_id": str(uuid.uuid4())}
                ),
                {
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {tokens[i % len(tokens)]}",
                },
            )
            for i in range(n)
        ]

    return votes


def _instructions(args: argparse.Namespace) -> int:
    """The sides of the bench, each counted by callgrind (bench.tools.callgrind) while it
    answers the same number of votes over the same connections, in alternating rounds."""
    if not callgrind.available():
        print("valgrind is not installed (scripts/setup installs it)", file=sys.stderr)
        return 2
    if args.devices < _WARM_DEVICES:
        print(f"--instructions needs --devices >= {_WARM_DEVICES}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-callgrind-"))
    redis_cpu = None if args.redis_cpu < 0 else args.redis_cpu
    procs: list[subprocess.Popen[bytes]] = []
    targets: dict[str, VoteTarget] = {}
    ports: dict[str, int] = {}
    counters: dict[str, callgrind.Counted] = {}
    per_request: dict[str, list[float]] = {}
    statuses: dict[str, Counter[int]] = {}
    against_commit = ""

    def out(name: str) -> Path:
        return tmp / f"{name}.out"

    def counted_by(name: str) -> Callable[[list[str]], list[str]]:
        return lambda argv: callgrind.wrapped(argv, out(name))

    def side(name: str, target: VoteTarget, port: int, pid: int) -> None:
        targets[name], ports[name] = target, port
        counters[name] = callgrind.Counted(pid, out(name))

    def serve(name: str, target: VoteTarget, module: str, *extra: str) -> None:
        port = free_port()
        argv = [sys.executable, "-m", module, str(port), *extra]
        procs.append(subprocess.Popen(pinned(0, counted_by(name)(argv))))
        side(name, target, port, procs[-1].pid)

    try:
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(
                vote_target(
                    args.devices,
                    redis_cpu=redis_cpu,
                    appendfsync=args.appendfsync,
                    wrap=counted_by("real"),
                )
            )
            serve("bare", target, "bench.tools.bare")
            serve("floor", target, "bench.tools.floor", target.redis_url, f"{target.prefix}:floor")
            side("real", target, target.port, target.pid)
            if args.against:
                code, against_commit = stack.enter_context(checkout(args.against))
                other = stack.enter_context(
                    vote_target(
                        args.devices,
                        redis_cpu=redis_cpu,
                        appendfsync=args.appendfsync,
                        code=code,
                        wrap=counted_by("against"),
                    )
                )
                print(f"against: {args.against} = {against_commit[:12]}, served from {code}")
                side("against", other, other.port, other.pid)
            voters = {name: _voter(t) for name, t in targets.items()}
            for name, port in ports.items():
                wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
                # Not counted: every device's token checked once, pools and caches filled.
                warm = exact.send(port, voters[name](_WARM_DEVICES), args.connections)
                statuses[name] = Counter()
                per_request[name] = []
                if set(warm) != {202}:
                    print(f"{name}: warm-up answered {dict(warm)}", file=sys.stderr)
            before = {k: t.entries() for k, t in targets.items() if k in ("real", "against")}
            for rnd, name in order(args.rounds, tuple(ports)):
                votes = voters[name](args.requests)
                ir, answered = counters[name].count(
                    functools.partial(exact.send, ports[name], votes, args.connections)
                )
                statuses[name] += answered
                per_request[name].append(ir / args.requests)
                print(
                    f"  r{rnd} {name:7} {ir / args.requests:11,.0f} instructions/request"
                    f"  answers {dict(answered)}",
                    flush=True,
                )
            time.sleep(0.5)
            added = {k: targets[k].entries() - n for k, n in before.items()}
    finally:
        for proc in procs:
            stop(proc, 30)
        shutil.rmtree(tmp, ignore_errors=True)

    # Callgrind's counts repeat within a fraction of a percent: 2 % is already a change.
    def paired(base: str, subject: str) -> Summary:
        """Per-round ratios base/subject of instructions per request: above 1, the
        subject costs less."""
        return summarise(
            [b / s for b, s in zip(per_request[base], per_request[subject], strict=True)],
            max_spread=0.02,
        )

    cheaper = paired("bare", "real")
    print(cheaper.line("instructions per request, bare/real (target >= 0.65, stretch 0.8)"))
    floor_of_bare = paired("bare", "floor")
    print(floor_of_bare.line("instructions per request, bare/floor"))
    real_of_floor = paired("floor", "real")
    print(real_of_floor.line("instructions per request, floor/real (Buzzer's own work)"))
    against: dict[str, object] | None = None
    if args.against:
        speedup = paired("against", "real")
        print(speedup.line(f"instructions per vote, {args.against}/this checkout"))
        against = {"rev": args.against, "commit": against_commit, **speedup.as_dict()}
    accepted = {k: statuses[k][202] for k in added}
    # An exact client: every vote it was answered 202 for is in the stream, and no other.
    durable = all(accepted[k] == added[k] for k in added)
    all_202 = all(set(c) == {202} for c in statuses.values())
    for k in added:
        print(
            f"{k}: {accepted[k]} votes answered 202, {added[k]} added to the stream"
            f" -> {'every 202 is in the stream' if accepted[k] == added[k] else 'MISMATCH'}"
        )
    print(
        jsonline.dumps(
            {
                "bench": "ingest",
                "mode": "instructions",
                "instructions_per_request": {
                    k: round(summarise(v).median) for k, v in per_request.items()
                },
                "instructions_per_request_rounds": {
                    k: summarise(v, max_spread=0.02).as_dict() for k, v in per_request.items()
                },
                "cpu_ratio_rounds": cheaper.as_dict(),
                "floor_ratio_rounds": floor_of_bare.as_dict(),
                "real_floor_ratio_rounds": real_of_floor.as_dict(),
                "against": against,
                "requests": args.requests,
                "connections": args.connections,
                "statuses": {k: dict(v) for k, v in statuses.items()},
                "accepted": accepted,
                "in_stream": added,
                "durable": durable,
            }
        )
    )
    return 0 if durable and all_202 else 1
