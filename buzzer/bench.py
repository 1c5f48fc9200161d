"""``buzzer bench ...``: benchmarks that print ratios against a baseline from the same run.

``buzzer bench ingest`` runs one ingest process on core 0 and wrk on core 1, against
(a) a bare aiohttp handler that reads the same JSON and answers 202 (the ceiling) and
(b) the real vote endpoint (token, validation, idempotency, atomic append to Redis),
then checks that every 202 is in the stream. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buzzer.http import api
from buzzer.ports import free_port

WRK_SCRIPT = r"""
local tokens, n, prefix, counter = {}, 0, "", 0
local poll = os.getenv("BENCH_POLL")
local options = tonumber(os.getenv("BENCH_OPTIONS") or "8")
function init(args)
  for line in io.lines(args[1]) do n = n + 1; tokens[n] = line end
  math.randomseed(os.time() * 1000 + tonumber(tostring({}):sub(8), 16) % 100000)
  prefix = string.format("%08x", math.random(0, 0x7fffffff))
end
function request()
  counter = counter + 1
  local vid = string.format("%s-%04x-4%03x-8%03x-%012x", prefix, math.random(0, 0xffff),
    math.random(0, 0xfff), math.random(0, 0xfff), counter)
  local body = '{"option":"o' .. (counter % options) .. '","count":1,"vote_id":"' .. vid .. '"}'
  local headers = {["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer " .. tokens[(counter % n) + 1]}
  return wrk.format("POST", "/v1/polls/" .. poll .. "/votes", headers, body)
end
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    bench = sub.add_parser("bench", help="benchmarks (ratios against a same-run baseline)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    ing = bsub.add_parser("ingest", help="vote endpoint vs bare aiohttp, one core each side")
    ing.add_argument("--seconds", type=float, default=8)
    ing.add_argument("--connections", type=int, default=64)
    ing.add_argument("--rounds", type=int, default=2)
    ing.add_argument("--devices", type=int, default=5000)
    ing.set_defaults(func=run_ingest)
    for name, module in (("lb", "lb.bench"), ("push", "services.push.bench"),
                         ("stack", "loadtest.bench")):
        try:
            mod = __import__(module, fromlist=["run"])
        except ImportError:
            continue
        p = bsub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)


def pinned(core: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *argv]
    return argv


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout}s")


@dataclass
class WrkResult:
    requests: int
    non2xx: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(out: str) -> WrkResult:
    req = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return WrkResult(
        requests=req,
        non2xx=int(non.group(1)) if non else 0,
        errors=sum(int(g) for g in errs.groups()) if errs else 0,
        rps=rps,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
    )


def wrk(url: str, seconds: float, connections: int, script: Path | None = None,
        script_args: list[str] | None = None, env: dict[str, str] | None = None) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    out = subprocess.run(pinned(1, argv), capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}, timeout=seconds + 60).stdout
    return parse_wrk(out)


async def _count_entries(redis_url: str, prefix: str, partitions: int) -> int:
    import redis.asyncio as aioredis

    from services.common.messages import Keys

    keys = Keys(prefix=prefix, partitions=partitions)
    client = aioredis.from_url(redis_url)
    try:
        return sum([int(await client.xlen(keys.votes(p))) for p in range(partitions)])
    finally:
        await client.aclose()


async def _drop_prefix(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        batch = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(batch), 1000):
            await client.delete(*batch[i : i + 1000])
    finally:
        await client.aclose()


@dataclass
class VoteTarget:
    """A running ingest process with an open 8-option poll and device tokens, and the
    wrk script that casts unique votes against it."""

    url: str
    script: Path
    script_args: list[str]
    wrk_env: dict[str, str]
    prefix: str
    redis_url: str
    partitions: int

    def wrk(self, seconds: float, connections: int, url: str | None = None) -> WrkResult:
        return wrk(url or self.url, seconds, connections, self.script, self.script_args, self.wrk_env)

    def entries(self) -> int:
        return asyncio.run(_count_entries(self.redis_url, self.prefix, self.partitions))


@contextlib.contextmanager
def vote_target(devices: int = 5000, cpu: int | None = 0) -> Iterator[VoteTarget]:
    from pydantic import SecretStr

    from gateway.tokens import TokenService
    from services.common.db import migrate
    from services.common.settings import CommonSettings

    common = CommonSettings()
    dsn = common.database_url.get_secret_value().rsplit("/", 1)[0] + "/buzzer_bench"
    asyncio.run(migrate(dsn))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    secret, admin = uuid.uuid4().hex * 2, uuid.uuid4().hex
    env = {**os.environ, "BUZZER_KEY_PREFIX": prefix, "BUZZER_TOKEN_SECRET": secret,
           "BUZZER_ADMIN_TOKEN": admin, "DATABASE_URL": dsn, "BUZZER_LOG_LEVEL": "WARNING"}
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-bench-"))
    script = tmp / "vote.lua"
    script.write_text(WRK_SCRIPT)
    tokens = TokenService(SecretStr(secret))
    (tmp / "tokens").write_text("\n".join(tokens.issue().token for _ in range(devices)) + "\n")
    port = free_port()
    argv = [sys.executable, "-m", "buzzer", "serve", "ingest", "--port", str(port)]
    ingest = subprocess.Popen(pinned(cpu, argv) if cpu is not None else argv, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz")
        show = api("POST", f"{base}/v1/admin/shows", admin, {"name": "bench"})
        poll = api("POST", f"{base}/v1/admin/polls", admin, {
            "show_id": show["id"], "title": "bench",
            "options": [{"key": f"o{i}", "label": f"O{i}"} for i in range(8)],
            "max_votes_per_device": None, "max_count": 100})
        api("POST", f"{base}/v1/admin/polls/{poll['id']}/open", admin)
        yield VoteTarget(url=base, script=script, script_args=[str(tmp / "tokens")],
                         wrk_env={"BENCH_POLL": poll["id"], "BENCH_OPTIONS": "8"},
                         prefix=prefix, redis_url=common.redis_url, partitions=common.partitions)
    finally:
        ingest.terminate()
        try:
            ingest.wait(15)
        except subprocess.TimeoutExpired:
            ingest.kill()
        asyncio.run(_drop_prefix(common.redis_url, prefix))
        shutil.rmtree(tmp, ignore_errors=True)


def run_ingest(args: argparse.Namespace) -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (scripts/setup installs it)", file=sys.stderr)
        return 2
    results: dict[str, list[WrkResult]] = {"bare": [], "real": []}
    bare_port = free_port()
    bare = subprocess.Popen(pinned(0, [sys.executable, "-m", "buzzer.bare", str(bare_port)]))
    try:
        with vote_target(args.devices) as target:
            wait_http(f"http://127.0.0.1:{bare_port}/readyz")
            urls = {"bare": f"http://127.0.0.1:{bare_port}", "real": target.url}
            accepted = 0
            for name, url in urls.items():  # warm up both: caches, pools, token cache
                r = target.wrk(2, args.connections, url)
                accepted += r.ok if name == "real" else 0
            for _ in range(args.rounds):
                for name, url in urls.items():
                    r = target.wrk(args.seconds, args.connections, url)
                    results[name].append(r)
                    if name == "real":
                        accepted += r.ok
                    print(f"  {name:5} {r.rps:9.0f} req/s  p50 {r.p50_ms:6.2f} ms"
                          f"  p99 {r.p99_ms:6.2f} ms  non-2xx {r.non2xx}"
                          f"  socket errors {r.errors}", flush=True)
            time.sleep(0.5)
            in_stream = target.entries()
    finally:
        bare.terminate()
        bare.wait(15)

    best = {k: max(v, key=lambda r: r.rps) for k, v in results.items()}
    ratio = best["real"].rps / best["bare"].rps if best["bare"].rps else 0.0
    # wrk stops with requests in flight: those may be appended without wrk counting
    # their 202, so the stream may hold up to one extra entry per connection per run.
    cut_off = args.connections * (args.rounds + 2)
    durable = accepted <= in_stream <= accepted + cut_off
    print(f"bare aiohttp (ceiling): {best['bare'].rps:.0f} req/s, p99 {best['bare'].p99_ms:.2f} ms")
    print(f"vote endpoint:          {best['real'].rps:.0f} req/s, p99 {best['real'].p99_ms:.2f} ms")
    print(f"ratio real/bare: {ratio:.3f} (target >= 0.8)")
    print(f"202s: {accepted}, entries in the stream: {in_stream} (+ up to {cut_off} cut off by wrk"
          f" in flight) -> {'every 202 is in the stream' if durable else 'MISMATCH'}")
    summary = {
        "bench": "ingest",
        "bare_rps": round(best["bare"].rps, 1),
        "bare_p99_ms": best["bare"].p99_ms,
        "vote_rps": round(best["real"].rps, 1),
        "vote_p99_ms": best["real"].p99_ms,
        "ratio": round(ratio, 3),
        "connections": args.connections,
        "accepted": accepted,
        "in_stream": in_stream,
        "durable": durable,
        "non2xx": sum(r.non2xx for r in results["real"]),
    }
    print(json.dumps(summary))
    return 0 if durable else 1
