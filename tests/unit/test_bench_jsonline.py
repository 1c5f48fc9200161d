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


def test_an_empty_out_argument_writes_no_profile() -> None:
    import argparse
    from pathlib import Path

    from bench.redis import add_arguments as redis_args
    from bench.tally import add_arguments as tally_args
    from bench.tools.jsonline import out_path

    assert out_path("") is None
    assert out_path("lb/profiles/x.json") == Path("lb/profiles/x.json")
    for add in (redis_args, tally_args):
        parser = argparse.ArgumentParser()
        add(parser)
        # Path('') would be '.', a directory: the bench then crashed at its very end.
        assert parser.parse_args(["--out", ""]).out is None
        assert parser.parse_args([]).out is not None
