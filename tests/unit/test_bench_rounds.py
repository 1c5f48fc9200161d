"""The statistics every bench shares: no timing here, only the arithmetic and the order."""

from __future__ import annotations

import pytest

from bench.tools.rounds import (
    BASELINE,
    SUBJECT,
    Rounds,
    median,
    order,
    run_rounds,
    spread,
    summarise,
)

pytestmark = pytest.mark.unit


def test_median_of_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    # One wild round moves a mean, not a median.
    assert median([0.95, 0.96, 0.10, 0.97, 0.94]) == 0.95
    with pytest.raises(ValueError):
        median([])


def test_spread_is_range_over_median() -> None:
    assert spread([1.0, 1.0, 1.0]) == 0.0
    assert spread([0.9, 1.0, 1.1]) == pytest.approx(0.2)
    assert spread([0.0, 0.0]) == 0.0


def test_the_three_runs_from_the_issue_are_too_wide_to_conclude() -> None:
    s = summarise([0.76, 0.98, 0.93])
    assert s.median == 0.93
    assert s.too_wide and not s.conclusive
    assert "too wide to conclude" in s.verdict
    assert s.meets(0.9) is None


def test_tight_rounds_conclude_and_are_judged_on_the_median() -> None:
    s = summarise([0.95, 0.96, 0.94, 0.97, 0.95])
    assert s.conclusive and "conclusive" in s.verdict
    assert s.meets(0.9) is True
    assert s.meets(0.96) is False
    assert summarise([80.0, 82.0, 81.0]).meets(100.0, higher_is_better=False) is True


def test_too_few_rounds_never_conclude() -> None:
    s = summarise([1.0, 1.0])
    assert not s.too_wide and not s.conclusive
    assert "too few" in s.verdict


def test_order_alternates_which_side_goes_first() -> None:
    assert order(3) == [
        (0, BASELINE),
        (0, SUBJECT),
        (1, SUBJECT),
        (1, BASELINE),
        (2, BASELINE),
        (2, SUBJECT),
    ]
    assert order(2, ("a", "b", "c")) == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a")]
    with pytest.raises(ValueError):
        order(0)


def test_run_rounds_measures_in_order_and_pairs_ratios_by_round() -> None:
    calls: list[str] = []
    figures = {BASELINE: iter([100.0, 200.0, 100.0]), SUBJECT: iter([90.0, 190.0, 95.0])}

    def measure(name: str):  # type: ignore[no-untyped-def]
        def one() -> float:
            calls.append(name)
            return next(figures[name])

        return one

    seen: list[tuple[int, str, float]] = []
    r = run_rounds(3, {n: measure(n) for n in (BASELINE, SUBJECT)}, lambda *a: seen.append(a))
    assert calls == [BASELINE, SUBJECT, SUBJECT, BASELINE, BASELINE, SUBJECT]
    assert r.taken == order(3)
    assert seen[1] == (0, SUBJECT, 90.0)
    assert r.ratios() == pytest.approx([0.9, 0.95, 0.95])
    assert r.ratio().median == pytest.approx(0.95)
    assert r.summary(BASELINE).median == 100.0


def test_ratio_needs_as_many_rounds_on_both_sides() -> None:
    r = Rounds()
    r.add(0, BASELINE, 1.0)
    r.add(0, SUBJECT, 1.0)
    r.add(1, SUBJECT, 1.0)
    with pytest.raises(ValueError):
        r.ratios()
