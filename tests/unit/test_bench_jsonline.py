"""Every bench's last line is strict JSON: a non-finite figure becomes null."""

from __future__ import annotations

import json
import math

import pytest

from bench.tools.jsonline import dumps, finite


def strict_loads(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_figures_at_any_depth_become_null() -> None:
    result = {
        "p99": math.inf,
        "rounds": {"values": [1.5, -math.inf, math.nan], "pair": (2.0, math.inf)},
        "ok": 3,
        "name": "push",
    }
    assert strict_loads(dumps(result, sort_keys=True)) == {
        "name": "push",
        "ok": 3,
        "p99": None,
        "rounds": {"pair": [2.0, None], "values": [1.5, None, None]},
    }


def test_plain_json_would_not_parse() -> None:
    # Why the helper exists: the standard library writes a token no strict parser reads.
    with pytest.raises(ValueError, match="Infinity"):
        strict_loads(json.dumps({"p99": math.inf}))


def test_finite_leaves_finite_values_and_other_types_alone() -> None:
    obj = {"a": 0.1, "b": [1, "x", None, True]}
    assert finite(obj) == obj
