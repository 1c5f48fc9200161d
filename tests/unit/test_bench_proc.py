"""What the benchmarks read of the machine: the hypervisor's steal per core."""

from __future__ import annotations

import pytest

from bench.tools.proc import TICK, steal_line, steal_pct, steal_seconds

STAT = """cpu  140182 1077 28964 164564 2258 0 5409 8412 0 0
cpu0 63251 558 12075 92470 460 0 2678 {s0} 0 0
cpu1 76931 519 16889 72093 1798 0 2731 {s1} 0 0
intr 1234 0 0
ctxt 99
"""


def test_steal_is_read_per_core_from_the_eighth_field() -> None:
    before = steal_seconds(STAT.format(s0=3912, s1=4500))
    assert before == {0: 3912 / TICK, 1: 4500 / TICK}
    # 5 s later core 1 lost 1 s (TICK ticks) to the host, core 0 nothing: 20 % at most.
    after = steal_seconds(STAT.format(s0=3912, s1=4500 + TICK))
    assert steal_pct(before, after, 5.0) == pytest.approx(20.0)
    assert steal_pct(before, before, 5.0) == 0.0


def test_steal_seconds_reads_this_machine() -> None:
    cores = steal_seconds()
    assert cores and all(v >= 0 for v in cores.values())


def test_the_line_says_when_the_host_moved_the_figures() -> None:
    quiet = steal_line([0.0, 1.0, 2.0])
    assert "up to 2 %" in quiet and "0 of 3 rounds" in quiet and "compare" not in quiet
    noisy = steal_line([1.0, 12.0, 7.0])
    assert "up to 12 %" in noisy and "2 of 3 rounds above 5 %" in noisy
    assert "compare only within a run" in noisy
    assert steal_line([]) == "hypervisor steal: not measured"
