"""``bench lb`` writes its profile whole, or, for an ``--only`` run, merged into the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.lb import write_profile
from lb.planner import load_measured

pytestmark = pytest.mark.unit


def test_only_run_merges_its_figures_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "measured.json"
    full = {
        "bench": "lb",
        "measured_at": "2026-12-01T00:00:00Z",
        "figures": {"keepalive": {"ratio": 0.97}},
        "profile": {"haproxy_keepalive_req_per_s": 77_000.0, "haproxy_bytes_per_conn": 1.0},
    }
    write_profile(path, full, merge=False)
    ws = {
        "bench": "lb",
        "measured_at": "2026-12-02T00:00:00Z",
        "figures": {"websockets": {"held": 2000, "measured_at": "2026-12-02T00:00:00Z"}},
        "profile": {"haproxy_bytes_per_conn": 6000.0, "haproxy_cpu_per_conn_update": 4e-6},
    }
    write_profile(path, ws, merge=True)
    data = json.loads(path.read_text())
    assert set(data["figures"]) == {"keepalive", "websockets"}
    assert data["profile"] == {
        "haproxy_keepalive_req_per_s": 77_000.0,
        "haproxy_bytes_per_conn": 6000.0,
        "haproxy_cpu_per_conn_update": 4e-6,
    }
    # The file's date stays the full run's; the merged figure carries its own.
    assert data["measured_at"] == "2026-12-01T00:00:00Z"
    prof = load_measured(path, redis_path=tmp_path / "r.json", push_path=tmp_path / "p.json")
    assert prof.haproxy_bytes_per_conn == 6000.0
    # A full run replaces the file.
    write_profile(path, ws, merge=False)
    assert set(json.loads(path.read_text())["figures"]) == {"websockets"}


def test_merge_into_a_missing_file_writes_the_figures(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "measured.json"
    write_profile(path, {"figures": {"a": {}}, "profile": {"x": 1}}, merge=True)
    assert json.loads(path.read_text())["profile"] == {"x": 1}
