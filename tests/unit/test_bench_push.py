"""``bench push``: what counts as a passing step of ``--find-max``, and the profile it
writes next to the figures other runs wrote."""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

import bench.push
from bench.push import (
    _against,
    _joined,
    _not_for_the_profile,
    _passes,
    _write_profile,
    add_arguments,
    falling_behind,
    server_delays,
)


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


def test_server_delays_past_the_last_bucket_say_how_far_the_histogram_reaches() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    delivery = Histogram(
        "buzzer_push_delivery_delay_seconds", "d", registry=registry, buckets=(0.1, 0.25, 1.0)
    )
    fanout = Histogram(
        "buzzer_push_fanout_seconds", "f", registry=registry, buckets=(0.01, 0.05, 0.25)
    )
    for _ in range(60):
        delivery.observe(0.2)  # p50 in the 250 ms bucket
    for _ in range(40):
        delivery.observe(3.0)  # p99 past the last bound
    fanout.observe(0.02)
    out = server_delays(generate_latest(registry).decode())
    assert out["server_publish_to_written_ms_p50_le"] == 250.0
    assert "server_publish_to_written_ms_p50_above" not in out
    assert out["server_publish_to_written_ms_p99_le"] is None
    assert out["server_publish_to_written_ms_p99_above"] == 1000.0
    assert out["server_fanout_ms_p50_le"] == out["server_fanout_ms_p99_le"] == 50.0
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_falling_behind_is_a_delay_that_grows_every_round_not_noise() -> None:
    # This machine's 10,000-viewer run: each slice later than the one before.
    assert falling_behind([2238.9, 3397.0, 4913.7, 7075.5, 10259.5])
    # Noise around a steady state, even a wide one, is not a backlog.
    assert not falling_behind([180.0, 95.0, 354.0, 103.0, 120.0])
    # Rising a little every round, as a quiet run may: not twice the first.
    assert not falling_behind([100.0, 110.0, 120.0, 130.0, 140.0])
    assert not falling_behind([100.0, 900.0])  # too few rounds to call a trend


async def test_joiners_are_read_apart_from_the_measured_viewers() -> None:
    ours, theirs = multiprocessing.Pipe()
    # What a load generator sends: connected, then (after "stop") its stats.
    theirs.send({"connected": 2_990, "snapshots": 2_990, "errors": {"HandshakeError": 10}})
    theirs.send({"per_version": {}, "hist": [], "open": 2_984, "closes": {"1013": 1}})
    result: dict[str, Any] = {}
    errors: dict[str, int] = {}
    await _joined((None, ours), result, errors, timeout=5)
    assert result == {
        "joiners_connected": 2_990,
        "joiners_held": 2_984,
        "joiners_closes": {"1013": 1},
    }
    assert errors == {"joiners:HandshakeError": 10}
    assert theirs.recv() == "stop"


async def test_joiners_that_never_report_are_an_error_not_a_hang() -> None:
    ours, _theirs = multiprocessing.Pipe()
    result: dict[str, Any] = {}
    errors: dict[str, int] = {}
    await _joined((None, ours), result, errors, timeout=0.2)
    assert result == {}
    assert errors == {"joiners:TimeoutError": 1}


def against_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--profile-out", str(tmp_path / "push.json"), "--against", "HEAD", *extra])


async def test_against_alternates_whole_runs_and_serves_rev_from_its_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[Path | None] = []

    async def fake_bench(
        a: argparse.Namespace, viewers: int, seconds: float, code: Path | None = None
    ) -> dict[str, Any]:
        served.append(code)
        # REV is twice as slow in the first pair and three times in the others.
        slow = 1.0 if code is None else (2.0 if len(served) <= 2 else 3.0)
        return step(
            delay_to_all_ms_p50=50.0 * slow,
            delay_to_all_ms_p99=100.0 * slow,
            push_cpu_pct=40.0 * slow,
            client_cores_busy_pct=60.0,
        )

    monkeypatch.setattr(bench.push, "_bench", fake_bench)
    result = await _against(against_args(tmp_path, "--pairs", "3"))
    assert result["error"] is None
    # REV first, then this tree first, and so on: a drifting machine hurts both alike.
    assert [c is None for c in served] == [False, True, True, False, False, True]
    checkouts = {c for c in served if c is not None}
    assert len(checkouts) == 1
    (checked_out,) = checkouts
    assert not checked_out.exists()  # removed afterwards
    assert [r["side"] for r in result["runs"]] == ["against", "this", "this", "against"] + [
        "against",
        "this",
    ]
    p99 = result["delay_to_all_ms_p99_against_over_this"]
    assert p99["values"] == [2.0, 3.0, 3.0] and p99["median"] == 3.0
    assert result["push_cpu_pct_against_over_this"]["median"] == 3.0
    assert not (tmp_path / "push.json").exists()  # --against writes no profile


async def test_against_stops_at_a_failed_run_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def fake_bench(
        a: argparse.Namespace, viewers: int, seconds: float, code: Path | None = None
    ) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return step(errors={"loadgen:TimeoutError": 1}) if calls == 2 else step()

    monkeypatch.setattr(bench.push, "_bench", fake_bench)
    result = await _against(against_args(tmp_path))
    assert calls == 2
    assert result["error"] == "pair 1 (this) failed: {'loadgen:TimeoutError': 1}"
    assert "delay_to_all_ms_p99_against_over_this" not in result


def test_against_is_refused_with_find_max(tmp_path: Path) -> None:
    assert bench.push.run(against_args(tmp_path, "--find-max")) == 2


async def test_find_max_confirms_its_figure_over_a_heartbeat_and_steps_down_if_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[tuple[int, float]] = []

    async def fake_bench(
        a: argparse.Namespace, viewers: int, seconds: float, code: Path | None = None
    ) -> dict[str, Any]:
        runs.append((viewers, seconds))
        # Short steps pass up to 12,000 viewers; with the pings in, only up to 11,000.
        limit = 12_000 if seconds < 10 else 11_000
        p99 = 100.0 if viewers <= limit else 300.0
        return step(connections_held=viewers, delay_to_all_ms_p99=p99, push_cpu_pct=viewers / 200)

    monkeypatch.setattr(bench.push, "_bench", fake_bench)
    monkeypatch.setenv("BUZZER_HEARTBEAT_S", "30")
    a = args(tmp_path)
    a.find_max = True
    a.start_viewers = 6_000
    result = await bench.push._find_max(a)
    confirms = [(v, s) for v, s in runs if s != a.step_seconds]
    searched = max(s["viewers"] for s in result["steps"] if s["pass"] and not s["confirm"])
    assert searched == 12_000
    # Every confirmation lasts the heartbeat and 2 s; the search's figure failed it once.
    assert confirms[0] == (searched, 32.0)
    assert [v for v, _ in confirms] == [confirms[0][0], confirms[0][0] * 9 // 10 // 250 * 250]
    assert result["confirmed"] is True
    assert result["max_viewers"] == confirms[-1][0] <= 11_000
    assert result["best"]["connections_held"] == result["max_viewers"]
    bench.push._write_profile(a, result)
    profile = json.loads((tmp_path / "push.json").read_text())
    assert profile["viewers_per_process"] == result["max_viewers"]
    assert profile["viewers_per_process_measured"]["confirmed_over_s"] == 32.0


async def test_find_max_reports_no_figure_when_no_confirmation_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fake_bench(
        a: argparse.Namespace, viewers: int, seconds: float, code: Path | None = None
    ) -> dict[str, Any]:
        ok = seconds == a.step_seconds and viewers <= 10_000
        return step(connections_held=viewers, delay_to_all_ms_p99=100.0 if ok else 300.0)

    monkeypatch.setattr(bench.push, "_bench", fake_bench)
    a = args(tmp_path)
    a.find_max = True
    result = await bench.push._find_max(a)
    assert result["confirmed"] is False
    assert result["max_viewers"] is None
    assert sum(1 for s in result["steps"] if s["confirm"]) == bench.push.CONFIRM_TRIES
