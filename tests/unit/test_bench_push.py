"""``bench push``: what counts as a passing step of ``--find-max``, and the profile it
writes next to the figures other runs wrote."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.push import _not_for_the_profile, _passes, _write_profile, add_arguments


def step(**kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "error": None,
        "errors": {},
        "connections_held": 10_000,
        "versions_partially_received": 0,
        "delay_to_all_ms_p99": 150.0,
        "push_cpu_pct": 50.0,
        "push_procs": 1,
        "client_cpu_pct": [40.0, 42.0],
        "shared_cores": False,
    }
    r.update(kw)
    return r


def test_a_step_passes_only_with_every_viewer_every_update_no_error_and_p99_under() -> None:
    assert _passes(step(), 10_000, 200.0)
    assert not _passes(step(delay_to_all_ms_p99=200.0), 10_000, 200.0)
    assert not _passes(step(errors={"shutdown:TimeoutError": 1}), 10_000, 200.0)
    assert not _passes(step(error="RuntimeError: push did not become ready"), 10_000, 200.0)
    assert not _passes(step(connections_held=9_999), 10_000, 200.0)
    assert not _passes(step(versions_partially_received=1), 10_000, 200.0)
    assert not _passes(step(delay_to_all_ms_p99=None), 10_000, 200.0)


def args(tmp_path: Path) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--profile-out", str(tmp_path / "push.json")])


def test_find_max_adds_its_figure_and_keeps_the_others(tmp_path: Path) -> None:
    a = args(tmp_path)
    a.profile_out.write_text(json.dumps({"viewers_two_processes": 30_000, "other": 1}))
    _write_profile(
        a,
        {
            "find_max": True,
            "push_procs": 1,
            "max_viewers": 12_000,
            "first_failing_viewers": 14_000,
            "capped_at": None,
            "best": step(connections_held=12_000),
        },
    )
    got = json.loads(a.profile_out.read_text())
    assert got["viewers_per_process"] == 12_000
    assert got["viewers_per_process_measured"]["first_failing_viewers"] == 14_000
    assert got["viewers_two_processes"] == 30_000 and got["other"] == 1
    # One push process is one core: 50 % of it for 12,000 viewers.
    assert got["cores_per_1m_viewers"] == round(0.5 * 1_000_000 / 12_000, 2)


def test_two_processes_write_their_own_key_and_not_the_per_core_figure(tmp_path: Path) -> None:
    a = args(tmp_path)
    _write_profile(
        a,
        {
            "find_max": True,
            "push_procs": 2,
            "max_viewers": 18_000,
            "first_failing_viewers": 20_000,
            "capped_at": None,
            "best": step(connections_held=18_000, push_procs=2, shared_cores=True),
        },
    )
    got = json.loads(a.profile_out.read_text())
    assert got["viewers_two_processes"] == 18_000
    assert got["viewers_two_processes_measured"]["shared_cores"] is True
    assert "viewers_per_process" not in got and "cores_per_1m_viewers" not in got


def test_a_run_behind_on_its_updates_does_not_write_its_cpu_per_viewer(tmp_path: Path) -> None:
    a = args(tmp_path)  # --viewers 10000, --p99-ms 200
    assert _not_for_the_profile(a, step()) is None
    # Saturated: p99 1.9 s. Push used 88 % of its core for less than the viewers needed.
    why = _not_for_the_profile(a, step(delay_to_all_ms_p99=1881.9, push_cpu_pct=88.0))
    assert why is not None and "1881.9 ms is not under 200 ms" in why
    assert _not_for_the_profile(a, step(connections_held=9_000)) is not None
    # --find-max writes only the steps that passed (its "best"), whatever the last did.
    a.find_max = True
    assert _not_for_the_profile(a, step(delay_to_all_ms_p99=1881.9)) is None
