"""Redis tier: votes accepted and applied per Redis CPU-second, WAIT's cost, cluster vs one node.

Everything runs on throwaway ``redis-server`` processes on free ports (never the Redis
at REDIS_URL, whose CPU counters other work shares), each with ``appendonly yes`` and
``appendfsync always``, what a 202 means on one node:

1. the ceiling: ``redis-benchmark`` XADD on the same server, in the same run;
2. accepted: ``vote_batch.lua`` through the ingest appender itself (coalesced per
   event-loop turn, hiredis-packed, 4 pipelines in flight), from 512 concurrent voters;
3. applied: ``apply.lua`` over those entries, read with XREADGROUP as the tally does;
4. accepted again with one replica attached and ``WAIT 1`` after every pipeline;
5. the appender's votes/s on a local cluster (3 primaries + 3 replicas) against one
   node, alternating rounds, median and spread.

Per CPU-second figures come from the server's own ``INFO CPU`` (used_cpu_sys +
used_cpu_user) before and after each step. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError

from bench.tools import jsonline
from bench.tools.checkout import checkout
from bench.tools.redisproc import cli as _cli
from bench.tools.redisproc import redis_server
from bench.tools.rounds import order, summarise
from bench.tools.wrk import pinned
from buzzer.rediscluster import LocalCluster
from services.common.messages import TALLY_GROUP, Keys, VoteEntry, decode_entry
from services.common.redisconn import connect
from services.common.scripts import (
    Scripts,
    VoteOutcome,
    VoteRules,
    apply_args,
    decode_apply,
    vote_call,
)
from services.ingest.appender import Appender
from services.ingest.transport import SingleNode, Transport, transport_for

PARTITIONS = 4
CLIENTS = 512
"""Concurrent voters: requests one ingest process holds under a spike."""
PIPELINES = 4
"""Pipelines in flight, the ingest default (BUZZER_MAX_PIPELINES)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=4.0, help="length of each measured step")
    p.add_argument("--rounds", type=int, default=3, help="cluster/single alternating rounds")
    p.add_argument(
        "--out",
        type=jsonline.out_path,
        default=Path("lb/profiles/redis.json"),
        help="where the planner reads the measured figures ('' to skip)",
    )
    p.add_argument(
        "--against",
        metavar="REV",
        help="instead: Redis CPU per vote of vote_batch.lua as git revision REV calls it"
        " against this checkout, alternating --rounds times on one redis-server"
        " (bench.tools.script_cpu); writes no profile",
    )


def cpu_seconds(port: int) -> float:
    info = dict(
        line.split(":", 1) for line in _cli(port, "INFO", "CPU").splitlines() if ":" in line
    )
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def ceiling(port: int, seconds: float) -> dict[str, float]:
    """redis-benchmark XADD, pipelined like the appender: entries per Redis CPU-second."""
    n = 0
    before = cpu_seconds(port)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(port),
                "-q",
                "-n",
                "20000",
                "-c",
                "4",
                "-P",
                "64",
                "XADD",
                "bench:ceiling",
                "*",
                "poll",
                "p",
                "option",
                "o1",
                "count",
                "1",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        n += 20000
    cpu = cpu_seconds(port) - before
    return {"per_s": n / (time.monotonic() - started), "per_cpu_s": n / cpu if cpu else 0.0}


async def open_partitions(redis: Any, keys: Keys, poll: str) -> None:
    for p in range(keys.partitions):
        await redis.set(keys.state(p, poll), "open")


async def accept(
    transport: Transport, redis: Any, keys: Keys, poll: str, scripts: Scripts, seconds: float
) -> int:
    """Votes accepted in ``seconds`` through the ingest appender itself (its coalescing,
    PIPELINES pipelines in flight), from CLIENTS concurrent voters."""
    appender = Appender(
        redis, scripts, keys, max_inflight=100_000, max_pipelines=PIPELINES, transport=transport
    )
    rules = VoteRules(max_votes=0, rate_per_s=0)
    done = 0
    deadline = time.monotonic() + seconds

    async def voter(v: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < deadline:
            i += 1
            now = int(time.time() * 1000)
            device = f"d{v}-{i}"
            e = VoteEntry(poll, f"o{i % 4}", 1, device, uuid.uuid4().hex, now, now)
            p = keys.partition_of(device)
            result = await appender.submit(p, vote_call(keys, p, e, rules))
            if result.outcome is not VoteOutcome.ACCEPTED:
                raise RuntimeError(f"vote refused: {result}")
            done += 1

    try:
        await asyncio.gather(*(voter(v) for v in range(CLIENTS)))
    finally:
        await appender.aclose()
    return done


async def apply_all(redis: Any, keys: Keys, scripts: Scripts) -> int:
    """Apply every entry of every partition with apply.lua, as the tally does."""
    applied = 0
    for p in range(keys.partitions):
        with contextlib.suppress(ResponseError):  # BUSYGROUP: made on an earlier pass
            await redis.xgroup_create(keys.votes(p), TALLY_GROUP, id="0", mkstream=True)
        while True:
            resp = await redis.xreadgroup(TALLY_GROUP, "bench", {keys.votes(p): ">"}, count=1000)
            entries = [(eid, decode_entry(f)) for _, es in resp or () for eid, f in es]
            if not entries:
                break
            ks, args = apply_args(keys, p, entries, 120)
            applied += decode_apply(await scripts.apply(keys=ks, args=args, client=redis)).applied
    return applied


async def one_node(port: int, seconds: float, *, wait: bool = False) -> dict[str, float]:
    redis = connect(f"redis://127.0.0.1:{port}/0", max_connections=16)
    try:
        keys = Keys(prefix=f"b{uuid.uuid4().hex[:6]}", partitions=PARTITIONS)
        scripts = Scripts.register(redis)
        await redis.script_load(scripts.vote_batch.script)
        await redis.script_load(scripts.apply.script)
        poll = "bench"
        await open_partitions(redis, keys, poll)
        transport = SingleNode(redis, ack_replicas=1 if wait else 0, ack_timeout_ms=1000)
        before = cpu_seconds(port)
        started = time.monotonic()
        accepted = await accept(transport, redis, keys, poll, scripts, seconds)
        elapsed = time.monotonic() - started
        mid = cpu_seconds(port)
        out = {
            "accepted_per_s": accepted / elapsed,
            "accepted_per_cpu_s": accepted / max(mid - before, 1e-9),
        }
        if not wait:
            t0 = time.monotonic()
            applied = await apply_all(redis, keys, scripts)
            out["applied_per_s"] = applied / (time.monotonic() - t0)
            out["applied_per_cpu_s"] = applied / max(cpu_seconds(port) - mid, 1e-9)
            # Both together: what one core takes when it accepts and applies each vote.
            out["accepted_and_applied_per_cpu_s"] = 1 / (
                1 / out["accepted_per_cpu_s"] + 1 / out["applied_per_cpu_s"]
            )
        return out
    finally:
        await redis.aclose()


async def appender_rate(url: str, seconds: float) -> float:
    redis = connect(url, max_connections=16)
    try:
        keys = Keys(prefix=f"b{uuid.uuid4().hex[:6]}", partitions=PARTITIONS)
        scripts = Scripts.register(redis)
        await redis.script_load(scripts.vote_batch.script)
        await open_partitions(redis, keys, "bench")
        transport = transport_for(redis)
        started = time.monotonic()
        n = await accept(transport, redis, keys, "bench", scripts, seconds)
        return n / (time.monotonic() - started)
    finally:
        await redis.aclose()


def against(args: argparse.Namespace) -> int:
    """``--against REV``: the script's Redis CPU per vote, REV against this checkout."""
    tool = Path(__file__).resolve().parent / "tools" / "script_cpu.py"
    here = Path(__file__).resolve().parents[1]
    rates: dict[str, list[float]] = {"against": [], "this": []}
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-bench-redis-"))
    try:
        with checkout(args.against) as (code, commit), redis_server(tmp, cpu=1) as port:
            print(f"against: {args.against} = {commit[:12]}, served from {code}")
            for rnd, side in order(max(args.rounds, 3), ("against", "this")):
                out = subprocess.run(
                    [*pinned(0, [sys.executable, str(tool), str(port), "1500", "16"])],
                    env={**os.environ, "PYTHONPATH": str(code if side == "against" else here)},
                    cwd=code if side == "against" else here,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                rates[side].append(float(out.split()[-1]))
                print(f"  r{rnd} {side:7} {rates[side][-1]:>10,.0f} votes/Redis CPU-s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = summarise([t / a for a, t in zip(rates["against"], rates["this"], strict=True)])
    print(ratio.line(f"votes per Redis CPU-second, this checkout/{args.against}"))
    print(
        jsonline.dumps(
            {
                "bench": "redis-against",
                "rev": args.against,
                "commit": commit,
                "votes_per_cpu_s": rates,
                "ratio_rounds": ratio.as_dict(),
            }
        )
    )
    return 0


def run(args: argparse.Namespace) -> int:
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"bench redis: {tool} not found (Debian package redis-server)")
            return 2
    if args.against:
        return against(args)
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-bench-redis-"))
    seconds = args.seconds
    try:
        with redis_server(tmp) as primary, redis_server(tmp, replica_of=primary) as replica:
            deadline = time.monotonic() + 20
            while "master_link_status:up" not in _cli(replica, "INFO", "replication"):
                if time.monotonic() > deadline:
                    raise RuntimeError("replica did not sync")
                time.sleep(0.1)
            ceil = ceiling(primary, seconds)
            print(f"ceiling    redis-benchmark XADD   {ceil['per_cpu_s']:>10,.0f} entries/CPU-s")
            # Alternating rounds with and without WAIT: this machine's other load shifts
            # over seconds, and a ratio of medians taken side by side is what it can give.
            plains: list[dict[str, float]] = []
            waits: list[dict[str, float]] = []
            for _, kind in order(args.rounds, ("plain", "wait")):
                (plains if kind == "plain" else waits).append(
                    asyncio.run(one_node(primary, seconds / 2, wait=kind == "wait"))
                )
            plain = {k: statistics.median(r[k] for r in plains) for k in plains[0]}
            waited = {k: statistics.median(r[k] for r in waits) for k in waits[0]}
        print(
            f"accepted   vote_batch.lua         {plain['accepted_per_cpu_s']:>10,.0f} votes/CPU-s"
            f"  {plain['accepted_per_s']:>9,.0f} votes/s"
        )
        print(f"applied    apply.lua              {plain['applied_per_cpu_s']:>10,.0f} votes/CPU-s")
        print(
            f"both       accepted + applied     "
            f"{plain['accepted_and_applied_per_cpu_s']:>10,.0f} votes/CPU-s"
        )
        print(
            f"with WAIT  1 replica, per pipeline {waited['accepted_per_cpu_s']:>10,.0f} "
            f"votes/CPU-s  {waited['accepted_per_s']:>9,.0f} votes/s"
        )
        wait_cost = 1 - waited["accepted_per_s"] / plain["accepted_per_s"]
        print(f"WAIT costs {wait_cost:.0%} of accepted votes/s (target <= 20 %)")
        wait_rounds = summarise(
            [w["accepted_per_s"] / p["accepted_per_s"] for p, w in zip(plains, waits, strict=True)]
        )
        print(wait_rounds.line("WAIT/plain accepted votes/s per round"))

        single_rates: list[float] = []
        cluster_rates: list[float] = []
        with redis_server(tmp) as single, LocalCluster(base_dir=tmp / "cluster") as cluster:
            for _, kind in order(args.rounds, ("single", "cluster")):
                url = f"redis://127.0.0.1:{single}/0" if kind == "single" else cluster.url
                rates = single_rates if kind == "single" else cluster_rates
                rates.append(asyncio.run(appender_rate(url, seconds / 2)))
        ratio = statistics.median(cluster_rates) / statistics.median(single_rates)
        print(
            f"appender   one node  {statistics.median(single_rates):>9,.0f} votes/s "
            f"(spread {min(single_rates):,.0f}-{max(single_rates):,.0f})"
        )
        print(
            f"appender   cluster   {statistics.median(cluster_rates):>9,.0f} votes/s "
            f"(spread {min(cluster_rates):,.0f}-{max(cluster_rates):,.0f})"
        )
        print(f"cluster/single {ratio:.2f} (target >= 0.9)")
        cluster_rounds = summarise(
            [c / s for s, c in zip(single_rates, cluster_rates, strict=True) if s]
        )
        print(cluster_rounds.line("cluster/single per round"))
        result = {
            "bench": "redis",
            "appendfsync": "always",
            "clients": CLIENTS,
            "pipelines": PIPELINES,
            "ceiling_xadd_per_cpu_s": round(ceil["per_cpu_s"]),
            "accepted_per_cpu_s": round(plain["accepted_per_cpu_s"]),
            "applied_per_cpu_s": round(plain["applied_per_cpu_s"]),
            "votes_per_cpu_s": round(plain["accepted_and_applied_per_cpu_s"]),
            "accepted_per_cpu_s_wait": round(waited["accepted_per_cpu_s"]),
            "accepted_per_s": round(plain["accepted_per_s"]),
            "accepted_per_s_wait": round(waited["accepted_per_s"]),
            "wait_cost": round(wait_cost, 3),
            "single_votes_per_s": [round(r) for r in single_rates],
            "cluster_votes_per_s": [round(r) for r in cluster_rates],
            "cluster_single_ratio": round(ratio, 3),
            "targets_met": bool(ratio >= 0.9 and wait_cost <= 0.2),
            "wait_rounds": wait_rounds.as_dict(),
            "cluster_single_rounds": cluster_rounds.as_dict(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(jsonline.dumps(result, indent=2) + "\n")
        print(jsonline.dumps(result))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
