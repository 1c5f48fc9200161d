from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from lb.planner import HISTORICAL, MEASURED_DEFAULTS, PlanInputs, _ceil, load_measured, plan

pytestmark = pytest.mark.unit

FLAT = replace(
    MEASURED_DEFAULTS,
    haproxy_new_conns_per_s=10_000,
    haproxy_keepalive_req_per_s=50_000,
    haproxy_tls_full_per_s=500,
    haproxy_tls_full_ecdsa_per_s=1000,
    haproxy_tls_resumed_per_s=2000,
    haproxy_max_conns=100_000,
    ingest_votes_per_s=5000,
    push_viewers=10_000,
    tally_votes_per_s=20_000,
    # High enough that one shard carries every plan below but the Redis tests'.
    redis_votes_per_s=10_000_000,
)


def test_plain_plan_is_bound_by_connection_rate() -> None:
    p = plan(PlanInputs(peak_votes_per_s=60_000, new_conn_share=0.5, headroom=0.5), FLAT)
    # 30K new/s / 10K = 3 cores; 30K keep-alive / 50K = 0.6 cores; 3.6 / 0.5 -> 8 nodes
    assert p.haproxy_nodes == 8
    assert p.binding["haproxy"] == "connection rate (new conns)"
    assert p.ingest_processes == 24  # 60K / (5K x 0.5)
    assert p.tally_consumers == 6
    assert p.partitions == 8


def test_tls_counts_full_and_resumed_handshakes_separately() -> None:
    inputs = PlanInputs(
        peak_votes_per_s=10_000, new_conn_share=1.0, tls=True, tls_resumption_rate=0.75,
        ecdsa=False, headroom=1.0, min_haproxy_nodes=1,
    )  # fmt: skip
    p = plan(inputs, FLAT)
    # 2,500 full / 500 = 5 cores; 7,500 resumed / 2,000 = 3.75 cores -> 9 nodes
    assert p.haproxy_nodes == 9
    assert p.binding["haproxy"] == "connection rate (tls full)"
    assert any("full RSA-2048 handshakes/s" in s and "2,500" in s for s in p.steps)
    ecdsa = plan(replace(inputs, ecdsa=True), FLAT)
    assert ecdsa.haproxy_nodes == 7  # 2.5 + 3.75 = 6.25 cores
    plain = plan(replace(inputs, tls=False), FLAT)
    assert plain.haproxy_nodes == 1


def test_viewers_bind_on_concurrent_connections_and_set_maxconn() -> None:
    p = plan(PlanInputs(peak_votes_per_s=1000, viewers=1_000_000, viewer_ramp_s=600), FLAT)
    # 1M + 500 new/s x 5 s = 1,002,500 conns / (100K x 0.6) -> 17 nodes
    assert p.haproxy_nodes == 17
    assert p.binding["haproxy"] == "concurrent connections"
    assert p.push_processes == 167
    assert p.maxconn_per_node <= FLAT.haproxy_max_conns
    assert p.maxconn_per_node * p.haproxy_nodes * 0.6 >= 1_002_500


def test_small_show_keeps_two_nodes() -> None:
    p = plan(PlanInputs(peak_votes_per_s=10), FLAT)
    assert p.haproxy_nodes == 2
    assert "redundancy" in p.binding["haproxy"]
    assert (p.ingest_processes, p.push_processes, p.partitions) == (1, 1, 4)


def test_historical_profile_needs_more_nodes_than_measured() -> None:
    inputs = PlanInputs(peak_votes_per_s=50_000, new_conn_share=0.5)
    assert plan(inputs, HISTORICAL).haproxy_nodes > plan(inputs, MEASURED_DEFAULTS).haproxy_nodes
    # (25K new/s / 5K + 25K keep-alive / 15K) cores / 0.6 -> 12 nodes
    assert plan(inputs, HISTORICAL).haproxy_nodes == 12


def test_overrides_replace_profile_figures() -> None:
    base = PlanInputs(peak_votes_per_s=12_000, headroom=1.0)
    assert plan(base, FLAT).ingest_processes == 3
    assert plan(replace(base, overrides={"ingest_votes_per_s": 1000}), FLAT).ingest_processes == 12


def test_json_is_stable_and_table_shows_the_arithmetic() -> None:
    p = plan(PlanInputs(peak_votes_per_s=50_000, viewers=2_000_000, tls=True,
                        tls_resumption_rate=0.7), HISTORICAL)  # fmt: skip
    d = p.to_json()
    assert list(d) == sorted(d)
    for key in ("haproxy_nodes", "ingest_processes", "push_processes", "tally_consumers",
                "partitions", "maxconn_per_node", "binding", "steps"):  # fmt: skip
        assert key in d
    assert json.loads(json.dumps(d)) == d
    table = p.to_table()
    assert "haproxy nodes" in table and "arithmetic:" in table
    assert "resumed handshakes/s" in table


@pytest.mark.parametrize(
    "bad",
    [dict(new_conn_share=1.5), dict(tls_resumption_rate=-0.1), dict(headroom=0.0),
     dict(viewer_ramp_s=0.0)],
)  # fmt: skip
def test_inputs_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PlanInputs(peak_votes_per_s=1, **bad)  # type: ignore[arg-type]


def test_measured_profile_comes_from_bench_output(tmp_path: Path) -> None:
    path = tmp_path / "measured.json"
    no_redis = tmp_path / "redis.json"
    assert load_measured(path, redis_path=no_redis) == MEASURED_DEFAULTS
    path.write_text(
        json.dumps(
            {
                "bench": "lb",
                "profile": {
                    "haproxy_new_conns_per_s": 17_000.5,
                    "haproxy_tls_resumed_per_s": 3000,
                    "junk": 1,
                },
            }
        )
    )
    prof = load_measured(path, redis_path=no_redis)
    assert prof.name == "measured"
    assert prof.haproxy_new_conns_per_s == 17_000.5
    assert prof.haproxy_tls_resumed_per_s == 3000
    assert prof.haproxy_tls_full_per_s == MEASURED_DEFAULTS.haproxy_tls_full_per_s
    assert prof.source == str(path)


def test_redis_shard_figure_comes_from_bench_redis(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    redis = tmp_path / "redis.json"
    assert load_measured(missing, redis_path=redis) == MEASURED_DEFAULTS
    redis.write_text(json.dumps({"bench": "redis", "votes_per_cpu_s": 12_688}))
    assert load_measured(missing, redis_path=redis).redis_votes_per_s == 12_688
    # Without the combined figure: a vote costs one accept and one apply on its shard.
    redis.write_text(json.dumps({"accepted_per_cpu_s": 20_000, "applied_per_cpu_s": 30_000}))
    assert load_measured(missing, redis_path=redis).redis_votes_per_s == pytest.approx(12_000)


REDIS = replace(FLAT, redis_votes_per_s=10_000)


@pytest.mark.parametrize(
    ("votes", "shards", "partitions"),
    [(5_000, 1, 4), (6_000, 1, 4), (6_001, 2, 8), (24_000, 4, 16), (48_000, 8, 32)],
)
def test_redis_shards_are_votes_over_the_measured_shard_at_headroom(
    votes: int, shards: int, partitions: int
) -> None:
    p = plan(PlanInputs(peak_votes_per_s=votes, headroom=0.6), REDIS)
    # shards = ceil(votes / (10K x 0.6)); partitions: power of two >= 4 per shard
    assert (p.redis_shards, p.partitions) == (shards, partitions)
    assert p.binding["redis"] == "votes/s per shard (one core)"
    table = p.to_table()
    assert re.search(rf"^redis +{shards} +shards \(1 core each, 1 replica\(s\) each\)", table, re.M)


def test_uneven_partition_split_adds_a_shard() -> None:
    # 36K / (10K x 0.6) = 6 shards; 32 partitions over 6: the busiest has 6 of 32 =
    # 6,750 votes/s > 6,000. With 7 shards it has 5 of 32 = 5,625: fits.
    p = plan(PlanInputs(peak_votes_per_s=36_000, headroom=0.6), REDIS)
    assert p.partitions == 32
    assert p.redis_shards == 7
    assert "busiest shard" in p.binding["redis"]
    assert p.load["redis_busiest_shard_votes_per_s"] == pytest.approx(36_000 * 5 / 32)


def test_redis_replicas_are_carried_and_validated() -> None:
    assert plan(PlanInputs(peak_votes_per_s=1, redis_replicas=2), FLAT).redis_replicas == 2
    with pytest.raises(ValueError, match="redis_replicas"):
        PlanInputs(peak_votes_per_s=1, redis_replicas=-1)


def test_postgres_is_sized_by_partitions_flushes_polls_and_options_not_votes() -> None:
    pg = replace(FLAT, postgres_flushes_per_s=20, postgres_rows_per_vcpu_s=1_000,
                 postgres_commit_rows=10)  # fmt: skip
    small = plan(PlanInputs(peak_votes_per_s=1_000, headroom=0.5), pg)
    big = plan(PlanInputs(peak_votes_per_s=40_000, headroom=0.5), pg)
    # Same 4 partitions: 80 commits/s x (1 x 8 x 3 + 10) rows = 2,720 rows/s; / 500 = 5.44
    assert small.partitions == big.partitions == 4
    assert small.load["postgres_rows_per_s"] == big.load["postgres_rows_per_s"] == 2_720
    assert small.postgres_vcpus == big.postgres_vcpus == 8
    more = plan(PlanInputs(peak_votes_per_s=1_000, headroom=0.5, polls=2, options_per_poll=12), pg)
    # 80 x (2 x 12 x 3 + 10) = 6,560 rows/s / 500 = 13.1 -> 16
    assert more.postgres_vcpus == 16
    tiny = replace(pg, postgres_rows_per_vcpu_s=1_000_000)
    assert plan(PlanInputs(peak_votes_per_s=1), tiny).postgres_vcpus == 2


def test_ceil_ignores_float_noise_but_not_a_real_fraction() -> None:
    assert _ceil(0.1 * 3 / 0.3) == 1  # 1.0000000000000002
    assert _ceil(2.0000000001) == 2
    assert _ceil(2.001) == 3
    assert _ceil(-0.5) == 0


@pytest.mark.parametrize(
    ("tally", "partitions"), [(1, 4), (4, 4), (5, 8), (8, 8), (9, 16), (17, 32)]
)
def test_partitions_are_the_next_power_of_two_of_the_consumers_and_at_least_4(
    tally: int, partitions: int
) -> None:
    # headroom 1: tally consumers = votes / 20K per consumer exactly
    p = plan(PlanInputs(peak_votes_per_s=tally * 20_000, headroom=1.0), FLAT)
    assert p.tally_consumers == tally
    assert p.partitions == partitions


def test_keepalive_requests_can_bind_the_haproxy_rate() -> None:
    # No new connections: 500K keep-alive / 50K = 10 cores / 0.5 -> 20 nodes
    p = plan(PlanInputs(peak_votes_per_s=500_000, new_conn_share=0.0, headroom=0.5), FLAT)
    assert p.haproxy_nodes == 20
    assert p.binding["haproxy"] == "connection rate (keepalive)"
    assert p.load["haproxy_cores"] == pytest.approx(10.0)


def test_viewer_ramp_adds_connects_to_the_rate() -> None:
    quiet = plan(PlanInputs(peak_votes_per_s=0, viewers=600_000, viewer_ramp_s=60), FLAT)
    # 600K viewers over 60 s = 10K new/s
    assert quiet.load["haproxy_new_conns_per_s"] == pytest.approx(10_000)
    faster = plan(PlanInputs(peak_votes_per_s=0, viewers=600_000, viewer_ramp_s=6), FLAT)
    assert faster.load["haproxy_new_conns_per_s"] == pytest.approx(100_000)


def test_unknown_ecdsa_figure_falls_back_to_rsa() -> None:
    inputs = PlanInputs(
        peak_votes_per_s=10_000, new_conn_share=1.0, tls=True, ecdsa=True,
        headroom=1.0, min_haproxy_nodes=1,
    )  # fmt: skip
    unknown = plan(inputs, replace(FLAT, haproxy_tls_full_ecdsa_per_s=0.0))
    # 10K full handshakes / 500 (RSA) = 20 cores
    assert unknown.haproxy_nodes == 20
    assert any("full RSA-2048 handshakes/s" in s for s in unknown.steps)


def test_maxconn_is_the_node_share_at_headroom_floored_and_capped() -> None:
    # 60K viewers over 3 nodes at 0.5: 40K each
    p = plan(
        PlanInputs(peak_votes_per_s=0, viewers=60_000, headroom=0.5, min_haproxy_nodes=3), FLAT
    )
    assert (p.haproxy_nodes, p.maxconn_per_node) == (3, 40_000)
    tiny = plan(PlanInputs(peak_votes_per_s=10), FLAT)
    assert tiny.maxconn_per_node == 1000
    capped = plan(
        PlanInputs(peak_votes_per_s=0, viewers=60_000, headroom=0.5, min_haproxy_nodes=3),
        replace(FLAT, haproxy_max_conns=30_000),
    )
    # The cap binds the per-node share, and raises the node count by concurrent conns.
    assert capped.maxconn_per_node <= 30_000
    assert capped.haproxy_nodes == 4  # ceil(60K / (30K x 0.5))


def test_no_votes_still_plans_one_process_of_each_service() -> None:
    p = plan(PlanInputs(peak_votes_per_s=0), FLAT)
    assert (p.ingest_processes, p.push_processes, p.tally_consumers) == (1, 1, 1)


def test_tls_kept_alive_votes_cost_the_measured_h2_figure() -> None:
    inputs = PlanInputs(
        peak_votes_per_s=100_000, new_conn_share=0.0, tls=True, headroom=1.0, min_haproxy_nodes=1
    )
    # Unknown h2 figure: the plain keep-alive one, 100K / 50K = 2 cores.
    assert plan(inputs, FLAT).haproxy_nodes == 2
    h2 = plan(inputs, replace(FLAT, haproxy_h2_req_per_s=20_000))
    assert h2.haproxy_nodes == 5  # 100K / 20K
    assert any("keep-alive requests (TLS, h2): 100,000 / 20,000" in s for s in h2.steps)
    # Plain HTTP never speaks h2 here: the figure does not apply.
    plain = plan(replace(inputs, tls=False), replace(FLAT, haproxy_h2_req_per_s=20_000))
    assert plain.haproxy_nodes == 2
