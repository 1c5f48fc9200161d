"""The cost table's arithmetic, from hand-written profiles: measured figures are used
and labelled as such, missing ones fall back to the planner's and say so."""

from __future__ import annotations

import pytest

from bench.cost import VIEWERS, VOTES, rows, table
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
    # Tally and PostgreSQL have no bench yet: never shown as measured.
    assert not any(r.measured for r in rows(LB, REDIS, PUSH) if r.tier in ("tally", "postgres"))
