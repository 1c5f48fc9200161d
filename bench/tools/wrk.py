"""wrk, pinned to a core, with the Lua script that casts unique votes, and its output parsed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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


def pinned(core: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *argv]
    return argv


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


def wrk(
    url: str,
    seconds: float,
    connections: int,
    script: Path | None = None,
    script_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> WrkResult:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    out = subprocess.run(
        pinned(1, argv),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        timeout=seconds + 60,
    ).stdout
    return parse_wrk(out)
