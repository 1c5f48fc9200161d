"""Run h2load (Debian's nghttp2-client) and parse its report.

h2load speaks what phone HTTP stacks speak: HTTP/2 over one TLS connection per client,
several streams in flight on it. ``--h1`` makes it an HTTP/1.1 client for comparison,
and ``--rps`` turns it into an open-loop generator (each client sends on schedule).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class H2loadResult:
    rps: float
    requests: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    protocol: str
    """The ALPN protocol h2load negotiated ("h2", "http/1.1"), or "" over plain HTTP/1.1."""
    request_ms: dict[str, float] = field(default_factory=dict)
    """min/max/mean of "time for request", in milliseconds."""
    raw: str = ""

    @property
    def errors(self) -> int:
        return self.failed + self.errored + self.timeout + (self.succeeded - self.status_2xx)


def available() -> bool:
    return shutil.which("h2load") is not None


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"not an h2load duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse(out: str) -> H2loadResult:
    fin = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    req = re.search(
        r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed,"
        r" (\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not (fin and req and codes):
        raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
    proto = re.search(r"Application protocol: (\S+)", out)
    timing = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    request_ms = (
        dict(zip(("min", "max", "mean"), (_ms(t) for t in timing.groups()), strict=True))
        if timing
        else {}
    )
    return H2loadResult(
        rps=float(fin.group(1)),
        requests=int(req.group(1)),
        succeeded=int(req.group(2)),
        failed=int(req.group(3)),
        errored=int(req.group(4)),
        timeout=int(req.group(5)),
        status_2xx=int(codes.group(1)),
        protocol=proto.group(1) if proto else "",
        request_ms=request_ms,
        raw=out,
    )


def h2load(
    url: str,
    *,
    clients: int = 8,
    streams: int = 10,
    seconds: float | None = None,
    requests: int | None = None,
    h1: bool = False,
    rps: float | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    cpu: int | None = None,
) -> H2loadResult:
    """One h2load run: ``seconds`` (duration mode) or ``requests`` (a fixed count)."""
    cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1"]
    if seconds is not None:
        # Duration mode needs a warm-up; connections open during it, off the clock.
        cmd += ["-D", f"{max(1, round(seconds))}", "--warm-up-time", "1"]
    else:
        cmd += ["-n", str(requests or clients * streams)]
    if h1:
        cmd.append("--h1")
    if rps is not None:
        cmd += ["--rps", f"{rps:g}"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        if body is not None:
            data = Path(tmp) / "body"
            data.write_bytes(body)
            cmd += ["-d", str(data)]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        limit = (seconds or 0) + 60
        res = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=limit)
    return parse(res.stdout + res.stderr)
