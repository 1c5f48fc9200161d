"""The load test's summary: tables of figures, every option listed, zero votes included."""

from __future__ import annotations

import math
import re

import pytest

from loadtest.audit import Clients
from loadtest.plan import PROBE, Plan, PollPlan
from loadtest.report import summary_lines, table

pytestmark = pytest.mark.unit


def _plan() -> Plan:
    polls = [
        PollPlan(id="pclap0000001", title="Warm-up: clap or boo", kind="buzz",
                 options=["clap", "boo", PROBE], max_count=20, open_at=0, close_at=0.5),
        PollPlan(id="pact00000002", title="Your favourite act", kind="vote",
                 options=["act-1", "act-2", "act-3"], max_count=1, open_at=0.5, close_at=0.9),
    ]  # fmt: skip
    return Plan(host="http://h", ws_host="ws://h", admin_token="secret", profile="show",
                duration_s=60, scale=1, user_rate=2, viewers=2, out_dir="/tmp", polls=polls)  # fmt: skip


def _figures() -> dict[str, object]:
    return {
        "votes": {"requests": 1300, "p50_ms": 4.0, "p99_ms": 38.0, "failures": 2},
        "accepted_votes": 1200,
        "accepted_taps": 4150,
        "peak_accepted_per_s": 95,
        "retries": 7,
        "refused": {"409": 3},
        "vote_to_screen": {"samples": 80, "lost": 0, "p50_ms": 120.0, "p99_ms": 310.0,
                           "max_ms": 400.0},
    }  # fmt: skip


def test_summary_is_tables_and_lists_options_nobody_voted_for() -> None:
    clients = Clients(accepted={"pclap0000001": {"clap": 3000, "boo": 1000, PROBE: 50},
                                "pact00000002": {"act-1": 60, "act-2": 40}})  # fmt: skip
    text = "\n".join(summary_lines(_plan(), clients, _figures()))
    assert "{" not in text and "}" not in text, text  # no Python dicts
    rows = {tuple(line.split()[-3:]) for line in text.splitlines()}
    assert ("act-3", "0", "0.0%") in rows, text
    assert ("clap", "3,000", "75.0%") in rows and ("boo", "1,000", "25.0%") in rows
    assert ("act-1", "60", "60.0%") in rows
    # The probe is not an audience option: counted, but no share of the result.
    assert (PROBE, "50", "-") in rows
    assert re.search(r"^\s*409\s+3\s+closed", text, re.M), text
    assert re.search(r"^\s*80\s+120\s+310\s+400\s+0$", text, re.M), text


def test_a_poll_nobody_voted_in_still_lists_every_option() -> None:
    text = "\n".join(summary_lines(_plan(), Clients(), {**_figures(), "refused": {}}))
    for opt in ("clap", "boo", "act-1", "act-2", "act-3"):
        assert re.search(rf"\s{opt}\s+0\s+-$", text, re.M), (opt, text)
    assert re.search(r"^none\s+0$", text, re.M), text


def test_table_aligns_numbers_right_and_text_left() -> None:
    lines = table(["name", "n", "ms"], [["a", 5, 1.4], ["long name", 12_345, math.nan]])
    assert lines == [
        "name            n  ms",
        "a               5   1",
        "long name  12,345   -",
    ]
