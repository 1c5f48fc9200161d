"""Instructions per request, counted by valgrind's callgrind: a cost that a busy
neighbour cannot move.

On these 2-core VMs the same server's CPU time per request wanders by a third between
rounds minutes apart (``bench ingest``: 159 to 217 µs a vote in one run), so a change of
a few µs can't be seen, let alone proved. Callgrind counts the instructions the server
executes, whatever else the machine does: the same server answering the same requests
counts within a fraction of a percent, round after round.

The server starts under callgrind with counting off (``--instr-atstart=no``), so its
imports and start cost nothing and take seconds, not minutes. :meth:`Counted.count`
zeroes the counters, turns counting on, runs the requests, turns it off and dumps: the
figure is what those requests cost the server, and nothing else. What it leaves out is
the kernel's work (system calls, the TCP stack), which callgrind can't see: a proxy for
the user-space CPU of a request, not a time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def wrapped(argv: list[str], out: Path) -> list[str]:
    """``argv`` run under callgrind, counting nothing until told; dumps go to ``out``.N."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--quiet",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *argv,
    ]


def totals(dump: bytes) -> int:
    """The instructions (Ir) a callgrind dump counted."""
    m = _TOTALS.findall(dump)
    if not m:
        raise ValueError("no totals in the callgrind dump")
    return max(int(x) for x in m)


class Counted:
    """A process started with :func:`wrapped`: ``pid`` is valgrind's, which is the
    server's (valgrind runs its guest in its own process)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self._dumps = 0

    def _control(self, *args: str) -> None:
        # It reports every command it sends on stderr: kept, and shown only on failure.
        done = subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode:
            raise RuntimeError(f"callgrind_control {' '.join(args)}: {done.stderr or done.stdout}")

    def count(self, work: Callable[[], T]) -> tuple[int, T]:
        """The instructions the server executed while ``work`` ran, and ``work``'s result."""
        self._control("--zero")
        self._control("--instr=on")
        try:
            result = work()
        finally:
            self._control("--instr=off")
        self._control("--dump")
        self._dumps += 1
        return totals(Path(f"{self.out}.{self._dumps}").read_bytes()), result
