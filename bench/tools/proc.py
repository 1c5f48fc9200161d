"""A process's CPU time and memory, from /proc: what the benchmarks read of the servers
they measure; and how they stop them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (``stat``; 10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    """A process's resident memory (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def steal_seconds(stat: str | None = None) -> dict[int, float]:
    """Per core, the seconds the hypervisor ran something else while this guest wanted the
    core (``steal`` in ``/proc/stat``): time no benchmark on that core could use."""
    text = Path("/proc/stat").read_text() if stat is None else stat
    out: dict[int, float] = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu" and len(fields) >= 8:
            out[int(name[3:])] = int(fields[7]) / TICK
    return out


def steal_pct(before: dict[int, float], after: dict[int, float], seconds: float) -> float:
    """The largest share of a core stolen between two :func:`steal_seconds` readings."""
    if seconds <= 0:
        return 0.0
    return max((100 * (after[c] - before.get(c, 0.0)) / seconds for c in after), default=0.0)


NOISY_STEAL_PCT = 5.0
"""Above this share of a core stolen in a round, the neighbours move the figures."""


def steal_line(stolen: list[float]) -> str:
    """One line on how much the hypervisor took during the rounds, and what it means."""
    if not stolen:
        return "hypervisor steal: not measured"
    top = max(stolen)
    line = (
        f"hypervisor steal (/proc/stat): up to {top:.0f} % of a core in a round,"
        f" {sum(s > NOISY_STEAL_PCT for s in stolen)} of {len(stolen)} rounds"
        f" above {NOISY_STEAL_PCT:.0f} %"
    )
    if top > NOISY_STEAL_PCT:
        line += ": the host ran other work on these cores, so compare only within a run"
    return line


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM (the servers stop gracefully on it), and SIGKILL if that takes longer than
    ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
