"""The collector's thresholds: a smaller young generation (push) trades one long pause
for several short ones without collecting the larger generations any more often."""

from __future__ import annotations

import pytest

from services.common.runner import MIDDLE_GC_EVERY, YOUNG_GC, gc_thresholds


@pytest.mark.parametrize("young", [YOUNG_GC, 10_000, 1_000])
def test_the_middle_generation_is_collected_as_often_whatever_the_young_threshold(
    young: int,
) -> None:
    first, middle, old = gc_thresholds(young)
    assert first == young
    # Objects allocated between two middle collections: young collections times their size.
    assert first * middle == MIDDLE_GC_EVERY
    assert old == gc_thresholds()[2]


def test_the_default_is_the_services_own() -> None:
    assert gc_thresholds() == (YOUNG_GC, MIDDLE_GC_EVERY // YOUNG_GC, 100)


def test_a_young_threshold_over_the_middle_one_still_collects_the_middle() -> None:
    assert gc_thresholds(MIDDLE_GC_EVERY * 2)[1] == 1
