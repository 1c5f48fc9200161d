"""Repeated, alternating rounds of a baseline and a subject, summarised by the median and
the spread of the per-round ratio.

One run of a benchmark on a shared machine measures the neighbours as much as the code:
the same ``bench lb`` keep-alive ratio came out 0.76, 0.98 and 0.93 in three runs. So
every bench measures in rounds, each round one baseline and one subject back to back,
and judges the ratio of each pair rather than the best of each side. The order flips
every round (A B, B A, A B, ...): a machine that drifts slower during the run then
penalises both sides alike instead of always the one measured second.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

BASELINE = "baseline"
SUBJECT = "subject"

DEFAULT_MAX_SPREAD = 0.10
"""Widest relative spread (:func:`spread`) of the per-round ratios that still lets a run
conclude: a target of 0.9 is not judged on ratios that wander by more than 0.1."""

CONFIDENCE = 0.95
"""How sure the interval of :func:`median_interval` is to hold the true median."""


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """An interval holding the true median with at least ``confidence`` (or the whole
    range when there are too few rounds for that), with no assumption about the noise:
    the k-th smallest and k-th largest rounds, for the largest k the binomial allows.

    Up to 8 rounds it is the range, min to max. With more, it narrows: the min and the
    max are the rounds a neighbour disturbed, and more rounds leave them out, where a
    range would only ever widen.
    """
    if not values:
        raise ValueError("interval of no values")
    xs = sorted(values)
    n = len(xs)
    k = 1
    # P(the median lies outside [x(k+1), x(n-k)]) = 2 * P(Binomial(n, 1/2) <= k).
    while k < n - k and 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= 1 - confidence:
        k += 1
    return xs[k - 1], xs[n - k]


def spread(values: Sequence[float]) -> float:
    """Relative spread: the width of :func:`median_interval` over the median; 0 for
    identical rounds. Up to 8 rounds, (max - min) / median."""
    m = median(values)
    low, high = median_interval(values)
    if m == 0:
        return 0.0 if high == low else float("inf")
    return (high - low) / abs(m)


def order(rounds: int, names: Sequence[str] = (BASELINE, SUBJECT)) -> list[tuple[int, str]]:
    """(round, name) in the order to measure them: each round reverses the previous one."""
    if rounds < 1:
        raise ValueError("at least one round")
    out: list[tuple[int, str]] = []
    for r in range(rounds):
        seq = names if r % 2 == 0 else tuple(reversed(names))
        out += [(r, n) for n in seq]
    return out


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    spread: float
    rounds: int
    max_spread: float = DEFAULT_MAX_SPREAD
    interval: tuple[float, float] = (0.0, 0.0)
    """:func:`median_interval`; the spread is its width over the median."""

    @property
    def too_wide(self) -> bool:
        return self.spread > self.max_spread

    @property
    def verdict(self) -> str:
        if self.rounds < 3:
            return f"only {self.rounds} round(s): too few to conclude"
        if self.too_wide:
            return (
                f"spread {self.spread:.0%} > {self.max_spread:.0%}: too wide to conclude"
                " (machine busy? rerun on a quiet one, or with more rounds)"
            )
        return f"spread {self.spread:.0%} <= {self.max_spread:.0%}: conclusive"

    @property
    def _interval_note(self) -> str:
        lo, hi = self.interval
        if (lo, hi) == (self.low, self.high):
            return ""
        return f", median within {lo:.3g}-{hi:.3g} at {CONFIDENCE:.0%}"

    @property
    def conclusive(self) -> bool:
        return self.rounds >= 3 and not self.too_wide

    def meets(self, target: float, higher_is_better: bool = True) -> bool | None:
        """Whether the median meets ``target``; ``None`` when the spread forbids a verdict."""
        if not self.conclusive:
            return None
        return self.median >= target if higher_is_better else self.median <= target

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": round(self.median, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "spread": round(self.spread, 4),
            "interval": [round(self.interval[0], 4), round(self.interval[1], 4)],
            "rounds": self.rounds,
            "conclusive": self.conclusive,
        }

    def line(self, label: str, fmt: str = ".3f") -> str:
        return (
            f"{label}: median {self.median:{fmt}} (min {self.low:{fmt}}, max {self.high:{fmt}},"
            f" {self.rounds} rounds{self._interval_note}) -> {self.verdict}"
        )


def summarise(values: Sequence[float], max_spread: float = DEFAULT_MAX_SPREAD) -> Summary:
    return Summary(
        median=median(values),
        low=min(values),
        high=max(values),
        spread=spread(values),
        rounds=len(values),
        max_spread=max_spread,
        interval=median_interval(values),
    )


@dataclass
class Rounds:
    """Samples per name, per round, in the order they were taken."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    taken: list[tuple[int, str]] = field(default_factory=list)

    def add(self, rnd: int, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)
        self.taken.append((rnd, name))

    def summary(self, name: str, max_spread: float = DEFAULT_MAX_SPREAD) -> Summary:
        return summarise(self.samples[name], max_spread)

    def ratios(self, subject: str = SUBJECT, baseline: str = BASELINE) -> list[float]:
        """subject / baseline of each round (the pair measured back to back)."""
        return [
            s / b if b else 0.0
            for s, b in zip(self.samples[subject], self.samples[baseline], strict=True)
        ]

    def ratio(
        self,
        subject: str = SUBJECT,
        baseline: str = BASELINE,
        max_spread: float = DEFAULT_MAX_SPREAD,
    ) -> Summary:
        return summarise(self.ratios(subject, baseline), max_spread)


def run_rounds(
    rounds: int,
    measure: dict[str, Callable[[], float]],
    on_sample: Callable[[int, str, float], None] | None = None,
) -> Rounds:
    """Measure each of ``measure`` (name -> callable returning a figure) once per round,
    in :func:`order`; ``on_sample`` sees each figure as it comes (for progress lines)."""
    out = Rounds()
    for rnd, name in order(rounds, tuple(measure)):
        value = measure[name]()
        out.add(rnd, name, value)
        if on_sample is not None:
            on_sample(rnd, name, value)
    return out
