"""The statistics every bench shares: no timing here, only the arithmetic and the order."""

from __future__ import annotations

import pytest

from bench.tools.rounds import (
    BASELINE,
    SUBJECT,
    Rounds,
    median,
    median_interval,
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


def test_the_interval_of_the_median_is_the_range_up_to_8_rounds_then_narrows() -> None:
    assert median_interval([5.0, 1.0, 3.0, 2.0, 4.0]) == (1.0, 5.0)
    assert median_interval([float(x) for x in range(1, 9)]) == (1.0, 8.0)
    # 9 rounds: 2nd to 8th smallest, which holds the median with 96 % (binomial).
    assert median_interval([float(x) for x in range(1, 10)]) == (2.0, 8.0)
    assert median_interval([float(x) for x in range(1, 16)]) == (4.0, 12.0)
    with pytest.raises(ValueError):
        median_interval([])


def test_more_rounds_can_settle_a_run_two_disturbed_rounds_cannot_spoil() -> None:
    # A noisy machine: most pairs agree, a neighbour disturbs one round now and then.
    five = [0.60, 0.61, 0.62, 0.48, 0.63]
    assert summarise(five).too_wide  # the disturbed round is the min: the range is wide
    nine = [*five, 0.61, 0.62, 0.75, 0.60]
    s = summarise(nine)
    assert s.conclusive and s.interval == (0.60, 0.63)
    assert (s.low, s.high) == (0.48, 0.75)  # still reported, no longer judged on
    assert "median within 0.6-0.63 at 95%" in s.line("ratio")
    assert s.as_dict()["interval"] == [0.6, 0.63]
    # Rounds that really disagree stay too wide however many there are.
    wide = summarise([0.4, 0.5, 0.6, 0.7, 0.8, 0.45, 0.55, 0.65, 0.75])
    assert wide.too_wide


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
