"""The cost table's arithmetic, from hand-written profiles: measured figures are used
and labelled as such, missing ones fall back to the planner's and say so."""

from __future__ import annotations

import argparse
import importlib
import math
import time
from pathlib import Path

import pytest

from bench.cost import STEPS, VIEWERS, VOTES, Row, fresh, rows, step_argv, table, totals
from lb.planner import MEASURED_DEFAULTS

pytestmark = pytest.mark.unit

LB = {
    "profile": {
        "haproxy_h2_req_per_s": 50_000.0,
        "haproxy_tls_resumed_per_s": 4_000.0,
        "ingest_votes_per_s": 10_000.0,
    }
}
REDIS = {"accepted_per_cpu_s": 20_000, "applied_per_cpu_s": 25_000}
PUSH = {"cores_per_1m_viewers": 8.0, "updates_per_s": 10}


def test_measured_profiles_give_cores_per_100k_votes() -> None:
    by = {(r.tier, r.what.split(",")[0]): r for r in rows(LB, REDIS, PUSH)}
    assert by["haproxy", "h2"].cores == pytest.approx(2.0)
    assert by["haproxy", "HTTP/1.1"].cores == pytest.approx(25.0)
    assert by["ingest", "votes/s per process (through HAProxy)"].cores == pytest.approx(10.0)
    assert by["redis", "accept (vote_batch.lua)"].cores == pytest.approx(5.0)
    assert by["redis", "apply (apply.lua)"].cores == pytest.approx(4.0)
    push = next(r for r in rows(LB, REDIS, PUSH) if r.tier == "push")
    assert (push.demand, push.cores, push.measured) == (VIEWERS, pytest.approx(8.0), True)
    assert all(r.measured for r in rows(LB, REDIS, PUSH) if r.tier in ("haproxy", "redis"))


def test_missing_profiles_fall_back_to_the_planner_and_say_so() -> None:
    rs = rows(None, None, None)
    assert not any(r.measured for r in rs)
    ingest = next(r for r in rs if r.tier == "ingest")
    assert ingest.cores == pytest.approx(VOTES / MEASURED_DEFAULTS.ingest_votes_per_s)
    assert "(not measured)" in table(rs)
    # No h2 figure anywhere: the keep-alive figure stands in, as in the planner.
    assert math.isfinite(totals(rs)[0])
    # Without bench tally's profile, tally and PostgreSQL are never shown as measured.
    assert not any(r.measured for r in rows(LB, REDIS, PUSH) if r.tier in ("tally", "postgres"))


TALLY = {
    "tally_votes_per_cpu_s": 40_000.0,
    "pgwriter_votes_per_cpu_s": 500_000.0,
    "archiver_votes_per_cpu_s": 50_000.0,
    "postgres_rows_per_cpu_s": 20_000.0,
    "postgres_archived_per_cpu_s": 25_000.0,
}


def _by_what(rs: list[Row]) -> dict[tuple[str, str], Row]:
    return {(r.tier, r.what.split(" (")[0].split(",")[0]): r for r in rs}


def test_the_tally_profile_replaces_the_planners_tally_and_postgres_figures() -> None:
    rs = rows(LB, REDIS, PUSH, {"tally": "bench tally now"}, tally=TALLY)
    by = _by_what(rs)
    consumer = by["tally", "consumer"]
    assert (consumer.cores, consumer.measured, consumer.source) == (
        pytest.approx(2.5),
        True,
        "bench tally now",
    )
    assert by["tally", "PostgreSQL writer"].cores == pytest.approx(0.2)
    assert by["tally", "archiver"].cores == pytest.approx(2.0)
    assert by["postgres", "archive"].cores == pytest.approx(4.0)
    # The writer row keeps the planner's rows at this peak and divides by the measured
    # rows per core: 2x the estimate's rows per core is half its cores.
    writer = by["postgres", "writer"]
    estimate = _by_what(rows(LB, REDIS, PUSH))["postgres", "writer"]
    assert writer.measured and not estimate.measured
    assert writer.cores == pytest.approx(
        estimate.cores * MEASURED_DEFAULTS.postgres_rows_per_vcpu_s / 20_000.0
    )
    assert all(r.measured for r in rs if r.tier in ("tally", "postgres"))


def test_without_a_tally_profile_only_the_planner_rows_appear_and_are_marked() -> None:
    rs = rows(LB, REDIS, PUSH, tally={"tally_votes_per_cpu_s": 0})
    tally = [r for r in rs if r.tier == "tally"]
    assert len(tally) == 1 and not tally[0].measured
    assert tally[0].per_core == MEASURED_DEFAULTS.tally_votes_per_s
    postgres = [r for r in rs if r.tier == "postgres"]
    assert len(postgres) == 1 and not postgres[0].measured


def test_websocket_updates_are_costed_at_the_push_profiles_update_rate() -> None:
    # 2 us of HAProxy CPU per update per socket, 10 updates/s: 20 cores per 1M viewers.
    lb = {"profile": {**LB["profile"], "haproxy_cpu_per_conn_update": 2e-6}}
    ws = next(r for r in rows(lb, REDIS, PUSH) if "websocket" in r.what)
    assert (ws.tier, ws.demand, ws.measured) == ("haproxy", VIEWERS, True)
    assert ws.cores == pytest.approx(20.0)
    faster = next(r for r in rows(lb, REDIS, {**PUSH, "updates_per_s": 5}) if "websocket" in r.what)
    assert faster.cores == pytest.approx(10.0)
    assert not any("websocket" in r.what for r in rows(LB, REDIS, PUSH))


def test_viewer_rows_stay_out_of_the_vote_total() -> None:
    lb = {"profile": {**LB["profile"], "haproxy_cpu_per_conn_update": 2e-6}}
    rs = rows(lb, REDIS, PUSH, tally=TALLY)
    per_vote, per_viewer = totals(rs)
    assert per_viewer == pytest.approx(8.0 + 20.0)
    # h2 counted, the per-vote TLS connection row (its worst case) not.
    expected = sum(r.cores for r in rs if r.demand == VOTES) - 25.0
    assert per_vote == pytest.approx(expected)


def test_a_measured_ingest_summary_replaces_bench_lbs_ingest_figure() -> None:
    rs = rows(LB, REDIS, PUSH, {"ingest": "bench ingest now"}, ingest={"vote_rps": 20_000.0})
    ingest = [r for r in rs if r.tier == "ingest"]
    assert len(ingest) == 1
    assert (ingest[0].cores, ingest[0].source) == (pytest.approx(5.0), "bench ingest now")


def test_a_profile_is_fresh_only_if_measured_inside_the_run(tmp_path: Path) -> None:
    path = tmp_path / "tally.json"
    path.write_text("{}")
    start = time.time()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    assert fresh({"measured_at": now}, path, start, start + 5)
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start - 3600))
    assert not fresh({"measured_at": old}, path, start, start + 5)
    assert not fresh(None, path, start, start + 5)


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("step", STEPS)
def test_measure_steps_are_command_lines_their_benches_accept(
    step: str, quick: bool, tmp_path: Path
) -> None:
    module = importlib.import_module(f"bench.{step}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(step_argv(step, tmp_path, quick))
    # Every profile goes to the run's directory, never over the full runs' profiles.
    written = [v for v in vars(args).values() if isinstance(v, Path)]
    assert all(v.parent == tmp_path for v in written)
    assert step == "ingest" or written  # bench ingest writes no profile: cost keeps its JSON
