"""bench.tools.script_cpu (`bench redis --against`): the script's Redis CPU per vote, as
a checkout on PYTHONPATH calls it, every vote accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.tools.redisproc import redis_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_this_checkout_is_measured_with_every_vote_accepted(tmp_path: Path) -> None:
    with redis_server(tmp_path) as port:
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "tools" / "script_cpu.py"), str(port), "20", "8"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert float(out.split()[-1]) > 0
        # A vote refused would have ended the tool with an error (check=True above); it
        # leaves none of its keys behind.
        keys = subprocess.run(
            ["redis-cli", "-p", str(port), "--scan", "--pattern", "cpu*"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert keys == []
