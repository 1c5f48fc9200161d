from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from lb.planner import (
    HAPROXY_FD_BUDGET,
    HAPROXY_FD_RESERVE,
    HISTORICAL,
    MEASURED_DEFAULTS,
    PlanInputs,
    Profile,
    _ceil,
    conn_limit,
    haproxy_nofile,
    load_measured,
    plan,
)

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
    assert p.binding["haproxy"] == "concurrent connections (haproxy_max_conns constant)"
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
    no_push = tmp_path / "push.json"
    no_tally = tmp_path / "tally.json"
    assert (
        load_measured(path, redis_path=no_redis, push_path=no_push, tally_path=no_tally)
        == MEASURED_DEFAULTS
    )
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
    prof = load_measured(path, redis_path=no_redis, push_path=no_push, tally_path=no_tally)
    assert prof.name == "measured"
    assert prof.haproxy_new_conns_per_s == 17_000.5
    assert prof.haproxy_tls_resumed_per_s == 3000
    assert prof.haproxy_tls_full_per_s == MEASURED_DEFAULTS.haproxy_tls_full_per_s
    assert prof.source == str(path)


def test_redis_shard_figure_comes_from_bench_redis(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    redis = tmp_path / "redis.json"
    assert (
        load_measured(missing, redis_path=redis, push_path=missing, tally_path=missing)
        == MEASURED_DEFAULTS
    )
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


# Sizing maxconn from memory, descriptors and the update fan-out.

WS = replace(
    FLAT, haproxy_bytes_per_conn=6 * 1024, haproxy_kernel_bytes_per_conn=2 * 1024
)  # 8 KiB per websocket on the node


def test_conn_limit_is_memory_over_bytes_per_websocket() -> None:
    lim = conn_limit(WS, memory_gib=16, reserve_gib=1)
    # 15 GiB / 8 KiB = 1,966,080; descriptors: (4,194,304 - 10,000) / 2 = 2,092,152
    assert (lim.maxconn, lim.binding, lim.measured) == (1_966_080, "memory", True)
    assert any("(16 GiB - 1 GiB reserve) / (6,144 HAProxy + 2,048 kernel" in s for s in lim.steps)


def test_conn_limit_is_descriptors_when_memory_is_plenty() -> None:
    lim = conn_limit(WS, memory_gib=128, reserve_gib=1)
    assert lim.maxconn == (HAPROXY_FD_BUDGET - HAPROXY_FD_RESERVE) // 2
    assert lim.binding == "file descriptors"


def test_conn_limit_falls_back_to_the_constant_and_says_so() -> None:
    lim = conn_limit(FLAT, memory_gib=16)
    assert (lim.maxconn, lim.measured) == (FLAT.haproxy_max_conns, False)
    assert "fallback" in lim.steps[0] and "bench lb --only websockets" in lim.steps[0]
    unknown = conn_limit(WS, memory_gib=None)
    assert unknown.maxconn == FLAT.haproxy_max_conns and "memory unknown" in unknown.steps[0]


def test_plan_sizes_nodes_from_the_core_share_of_instance_memory() -> None:
    inputs = PlanInputs(
        peak_votes_per_s=1000, viewers=3_000_000, viewer_ramp_s=600,
        haproxy_instance_type="c7g.2xlarge",
    )  # fmt: skip
    p = plan(inputs, WS)
    # One core of c7g.2xlarge: 16 / 8 = 2 GiB, less 1/8 GiB reserve; / 8 KiB = 245,760.
    # 3,002,500 conns / (245,760 x 0.6) = 20.4 -> 21 nodes, not the constant's 51.
    assert p.load["haproxy_conns_per_node_limit"] == 245_760
    assert p.haproxy_nodes == 21
    assert p.binding["haproxy"] == "concurrent connections (memory)"
    assert p.maxconn_per_node == _ceil(3_002_500 / 21 / 0.6)
    assert any("= min(2,092,152, 245,760) = 245,760 (memory)" in s for s in p.steps)
    assert plan(inputs, FLAT).haproxy_nodes == 51
    # A memory-optimised type holds more per core.
    m7g = plan(replace(inputs, haproxy_instance_type="m7g.2xlarge"), WS)
    assert m7g.haproxy_nodes < p.haproxy_nodes
    # An unknown type without its memory: the constant, said so.
    odd = plan(replace(inputs, haproxy_instance_type="x9.huge"), WS)
    assert odd.haproxy_nodes == 51 and any("fallback" in s for s in odd.steps)


def test_update_fanout_costs_haproxy_cores() -> None:
    fan = replace(WS, haproxy_cpu_per_conn_update=2e-6)
    inputs = PlanInputs(
        peak_votes_per_s=1000, viewers=3_000_000, viewer_ramp_s=600, viewer_updates_per_s=10
    )
    p = plan(inputs, fan)
    # 3M viewers x 10/s x 2 us = 60 cores; + 5,500 new/s / 10K + 500 / 50K = 60.56 cores
    assert p.load["haproxy_cores"] == pytest.approx(60.56)
    assert p.haproxy_nodes == _ceil(60.56 / 0.6)
    assert p.binding["haproxy"] == "connection rate (update fanout)"
    assert any("3,000,000 viewers x 10 updates/s x 2.00 us = 60.00 cores" in s for s in p.steps)
    quiet = plan(replace(inputs, viewer_updates_per_s=0), fan)
    assert quiet.load["haproxy_cores"] == pytest.approx(0.56)
    assert any("update fan-out not costed" in s for s in plan(inputs, WS).steps)


def test_nofile_is_two_descriptors_per_connection_and_the_reserve() -> None:
    assert haproxy_nofile(100_000) == 200_000 + HAPROXY_FD_RESERVE
    # The largest maxconn the planner gives still fits in the budget.
    assert haproxy_nofile((HAPROXY_FD_BUDGET - HAPROXY_FD_RESERVE) // 2) <= HAPROXY_FD_BUDGET


def test_websocket_figures_come_from_bench_lb(tmp_path: Path) -> None:
    path = tmp_path / "measured.json"
    path.write_text(
        json.dumps(
            {
                "profile": {
                    "haproxy_bytes_per_conn": 6100.5,
                    "haproxy_kernel_bytes_per_conn": 7000,
                    "haproxy_cpu_per_conn_update": 3e-6,
                }
            }
        )
    )
    prof = load_measured(path, redis_path=tmp_path / "r.json", push_path=tmp_path / "p.json")
    assert prof.haproxy_bytes_per_conn == 6100.5
    assert prof.haproxy_kernel_bytes_per_conn == 7000
    assert prof.haproxy_cpu_per_conn_update == 3e-6


def test_push_viewers_come_from_bench_push(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    push = tmp_path / "push.json"
    assert load_measured(missing, redis_path=missing, push_path=push).push_viewers == 10_000
    push.write_text(json.dumps({"bench": "push", "viewers_per_process": 14_000}))
    assert load_measured(missing, redis_path=missing, push_path=push).push_viewers == 14_000
    push.write_text(json.dumps({"profile": {"viewers_per_process": 9_000.0}}))
    assert load_measured(missing, redis_path=missing, push_path=push).push_viewers == 9_000
    # A push profile without the figure (an older bench push) changes nothing.
    push.write_text(json.dumps({"bench": "push", "p99_ms": 180}))
    assert load_measured(missing, redis_path=missing, push_path=push).push_viewers == 10_000


def test_tally_and_postgres_figures_come_from_bench_tally(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    tally = tmp_path / "tally.json"

    def prof() -> Profile:
        return load_measured(missing, redis_path=missing, push_path=missing, tally_path=tally)

    assert (prof().tally_votes_per_s, prof().postgres_rows_per_vcpu_s) == (20_000.0, 10_000.0)
    tally.write_text(
        json.dumps({"tally_votes_per_cpu_s": 61_234.5, "postgres_rows_per_cpu_s": 14_321})
    )
    assert (prof().tally_votes_per_s, prof().postgres_rows_per_vcpu_s) == (61_234.5, 14_321.0)
    # The plan follows: fewer consumers for a faster consumer.
    inputs = PlanInputs(peak_votes_per_s=120_000)
    assert plan(inputs, prof()).tally_consumers < plan(inputs, MEASURED_DEFAULTS).tally_consumers
