"""``buzzer bench push``: how many viewers one push process holds, at what memory and delay.

Starts one push process (pinned to core 0 when there are two or more), connects
``--viewers`` websockets from load-generator processes pinned to the other cores,
casts votes and publishes ``--rate`` tally updates per second for ``--seconds`` through
the real tally code (``bench.tools.tally``: vote_batch.lua, apply.lua, the publisher),
and measures: sockets held, RSS per socket of the push process, and the delay from
an update's publication (its ``ts``) to its arrival at every viewer, p50/p99.
The last line printed is one JSON object with the figures.

The update window is judged in ``--rounds`` consecutive slices of the published versions:
delay-to-all p99 of each slice, their median and spread (bench.tools.rounds), so that a
single stall or a noisy neighbour shows as spread rather than as the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from typing import Any

import msgspec

from bench.tools.rounds import summarise
from buzzer.ports import free_port

LAT_BUCKETS_MS = 10_000
PUSH_PROFILE = Path(__file__).resolve().parents[1] / "lb" / "profiles" / "push.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--viewers", type=int, default=10_000, help="websockets to connect (default 10000)"
    )
    p.add_argument("--seconds", type=float, default=20.0, help="how long updates flow (default 20)")
    p.add_argument("--rate", type=float, default=10.0, help="tally updates per second (default 10)")
    p.add_argument("--options", type=int, default=4, help="options in the poll (message size)")
    p.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    p.add_argument(
        "--connect-concurrency", type=int, default=200, help="handshakes in flight per process"
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--port", type=int, default=0, help="push port (default: a free one)")
    p.add_argument("--rounds", type=int, default=5, help="slices of the update window judged apart")
    p.add_argument(
        "--profile-out",
        type=Path,
        default=PUSH_PROFILE,
        help=f"where `bench cost` reads push's CPU per viewer (default {PUSH_PROFILE})",
    )
    p.add_argument("--no-profile", action="store_true", help="do not write the profile")


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(_bench(args))
    if result.get("error") is None and not args.no_profile and result.get("connections_held"):
        profile = {
            "bench": "push",
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "viewers": result["connections_held"],
            "updates_per_s": args.rate,
            "push_cpu_pct": result["push_cpu_pct"],
            "delay_to_all_ms_p99": result["delay_to_all_ms_p99"],
            # One push process is one core: the share of it these viewers used, scaled.
            "cores_per_1m_viewers": round(
                result["push_cpu_pct"] / 100 * 1_000_000 / result["connections_held"], 2
            ),
        }
        args.profile_out.parent.mkdir(parents=True, exist_ok=True)
        args.profile_out.write_text(json.dumps(profile, indent=2, sort_keys=True) + "\n")
        print(f"profile written to {args.profile_out}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    return 0 if result.get("error") is None else 1


# -- load generator (one process; many sockets on one loop) ------------------------------


class _Msg(msgspec.Struct):
    poll: str = ""
    version: int = 0
    ts: int = 0
    type: str = ""
    final: bool = False


def _client_main(url: str, n: int, concurrency: int, cpus: list[int], conn: Connection) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    _raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client(url, n, concurrency, conn))


async def _client(url: str, n: int, concurrency: int, conn: Connection) -> None:
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
                clients.append(await wsclient.connect(url, on_text=on_text, timeout=30))
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


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        text = await r.text()
    out: dict[str, Any] = {}
    for metric, name in (
        ("buzzer_push_delivery_delay_seconds", "server_publish_to_written_ms"),
        ("buzzer_push_fanout_seconds", "server_fanout_ms"),
    ):
        buckets: list[tuple[float, float]] = []
        for line in text.splitlines():
            if line.startswith(metric + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append(
                    (float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1]))
                )
        for q in (0.5, 0.99):
            v = _hist_quantile(buckets, q)
            out[f"{name}_p{int(q * 100)}_le"] = None if v is None else round(v * 1000, 1)
    return out


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return round(sorted_values[i], 1)


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


async def _wait_ready(port: int, proc: asyncio.subprocess.Process, timeout: float = 20) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"push exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("push did not become ready")


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from bench.tools.tally import LiveTally
    from services.common.messages import Keys

    _raise_nofile()
    ncpu = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = ncpu >= 2 and shutil.which("taskset") is not None
    push_cpu, client_cpus = (cpus[0], cpus[1:]) if pin else (None, [])
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
        "BUZZER_MAX_CONNECTIONS": str(args.viewers + 100),
        "BUZZER_MAX_CONNECTIONS_PER_IP": str(args.viewers + 100),
        "BUZZER_LOG_LEVEL": "WARNING",
        "BUZZER_ADMIN_TOKEN": uuid.uuid4().hex,
        "BUZZER_TOKEN_SECRET": uuid.uuid4().hex,
        "BUZZER_INSTANCE_ID": f"bench-{os.getpid()}",
    }
    cmd = [
        sys.executable,
        "-c",
        "from services.common.settings import PushSettings\n"
        "from services.push.main import run\n"
        "run(PushSettings())",
    ]
    if pin:
        cmd = ["taskset", "-c", str(push_cpu), *cmd]
    # Closed in the finally below, after its tail is printed.
    log = tempfile.TemporaryFile()  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=log, stderr=log)
    result: dict[str, Any] = {
        "viewers_target": args.viewers,
        "push_cpu": push_cpu,
        "client_cpus": client_cpus,
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "error": None,
    }
    ctx = mp.get_context("spawn")
    procs: list[tuple[Any, Connection]] = []
    try:
        await _wait_ready(port, proc)
        await asyncio.sleep(0.5)
        rss_before = _rss_kb(proc.pid)
        url = f"ws://127.0.0.1:{port}/v1/polls/{poll}/live"
        nprocs = max(1, args.client_procs)
        share = [
            args.viewers // nprocs + (1 if i < args.viewers % nprocs else 0) for i in range(nprocs)
        ]
        started = time.monotonic()
        for n in share:
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_client_main, args=(url, n, args.connect_concurrency, client_cpus, child)
            )
            p.start()
            procs.append((p, parent))
        loop = asyncio.get_running_loop()
        ready = [await loop.run_in_executor(None, c.recv) for _, c in procs]
        connected = sum(r["connected"] for r in ready)
        result["connect_s"] = round(time.monotonic() - started, 2)
        result["connect_errors"] = {k: v for r in ready for k, v in r["errors"].items()}
        result["snapshots"] = sum(r["snapshots"] for r in ready)
        await asyncio.sleep(1.0)
        rss_after = _rss_kb(proc.pid)
        result["connections"] = connected
        result["rss_before_mb"] = round(rss_before / 1024, 1)
        result["rss_after_mb"] = round(rss_after / 1024, 1)
        result["kb_per_connection"] = round((rss_after - rss_before) / max(1, connected), 1)

        cpu_push0 = _cpu_s(proc.pid)
        cpu_clients0 = sum(_cpu_s(p.pid or 0) for p, _ in procs)
        wall0 = time.monotonic()
        # Votes flowing: each round's votes appended, applied and published by the real
        # tally code at `rate` rounds per second; an update's ts is its publication time.
        updates = 0
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        end = next_at + args.seconds
        while time.monotonic() < end:
            updates += 1
            await tally.add_votes(
                poll, {o: 1 + (updates * (i + 1)) % 7 for i, o in enumerate(options)}
            )
            await tally.publish(poll)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        wall = time.monotonic() - wall0
        result["push_cpu_pct"] = round(100 * (_cpu_s(proc.pid) - cpu_push0) / wall, 1)
        result["clients_cpu_pct"] = round(
            100 * (sum(_cpu_s(p.pid or 0) for p, _ in procs) - cpu_clients0) / wall, 1
        )
        await asyncio.sleep(2.0)
        result.update(await _server_delays(port))
        result["updates_published"] = updates
        result["rss_end_mb"] = round(_rss_kb(proc.pid) / 1024, 1)
        for _, c in procs:
            c.send("stop")
        stats = [await loop.run_in_executor(None, c.recv) for _, c in procs]
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
        result["delay_per_message_ms_p50"] = _hist_percentile(hist, 0.50)
        result["delay_per_message_ms_p99"] = _hist_percentile(hist, 0.99)
        result["messages_received"] = sum(hist)

        # SIGTERM: every viewer should see 1001, then the process exits.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for _, c in procs:
            c.send("shutdown")
        codes: dict[str, int] = {}
        for _, c in procs:
            for k, v in (await loop.run_in_executor(None, c.recv))["shutdown_codes"].items():
                codes[k] = codes.get(k, 0) + v
        rc = await asyncio.wait_for(proc.wait(), 30)
        result["shutdown_s"] = round(time.monotonic() - t0, 2)
        result["shutdown_close_codes"] = codes
        result["push_exit_code"] = rc
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        log.seek(0)
        tail = log.read()[-3000:].decode(errors="replace")
        if tail.strip():
            sys.stderr.write(tail)
        for p, _ in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        await tally.cleanup()
        await redis.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="buzzer bench push", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
