"""The show a load test replays: its polls, when they open and close, and its rate curve.

Stdlib only: imported by the parent (``buzzer loadtest run``) and by every locust process,
which must not import asyncio services next to gevent's monkey-patching.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from buzzer.http import api

PROBE = "probe"
"""An option in every buzz/clap poll that only the prober votes: its count is known exactly."""

PROFILES = ("show", "step", "soak")

BASE_RATE = 30.0
"""Votes per second of the quiet part of the show at ``--scale 1``."""


@dataclass
class PollPlan:
    id: str
    title: str
    kind: str
    """``buzz``: unlimited, batched taps; ``vote``: one vote per device."""
    options: list[str]
    max_count: int
    open_at: float
    """Fraction of the run's duration."""
    close_at: float
    weights: list[float] = field(default_factory=list)
    """Popularity of the audience options (the probe excluded)."""


@dataclass
class Plan:
    host: str
    ws_host: str
    admin_token: str = field(repr=False)
    """Never saved: ``plan.json`` is copied to load generators and kept with the reports."""
    profile: str
    duration_s: float
    scale: float
    user_rate: float
    """Votes per second one voter offers (one phone sending its batched taps)."""
    viewers: int
    out_dir: str
    show_id: str = ""
    polls: list[PollPlan] = field(default_factory=list)
    tail_s: float = 20.0
    """After the run: at most this long for the viewers to see every poll's final result."""
    probe_interval_s: float = 0.25

    def save(self, path: Path) -> None:
        data = asdict(self)
        del data["admin_token"]
        path.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: Path, admin_token: str | None = None) -> Plan:
        """The plan in ``path``; the admin token from ``admin_token`` or, in a locust
        process, from ``BUZZER_ADMIN_TOKEN`` (which ``buzzer loadtest run`` sets for it)."""
        raw = json.loads(path.read_text())
        raw.pop("admin_token", None)
        raw["polls"] = [PollPlan(**p) for p in raw["polls"]]
        token = os.environ.get("BUZZER_ADMIN_TOKEN", "") if admin_token is None else admin_token
        return cls(admin_token=token, **raw)

    def audience_options(self, poll: PollPlan) -> list[str]:
        return [o for o in poll.options if o != PROBE]


# -- rate curves ------------------------------------------------------------------------


def show_units(f: float) -> float:
    """The show's rate, in multiples of the quiet rate, at fraction ``f`` of the run.

    Quiet pre-show, ×3 over the stretch around the start (five minutes of a real show),
    ×10 on the call to action, then an exponential decay; the tail is silent so the last
    polls close on settled traffic.
    """
    if f < 0.15:
        return 1.0
    if f < 0.30:
        return 1.0 + 2.0 * (f - 0.15) / 0.15
    if f < 0.55:
        return 3.0
    if f < 0.58:
        return 3.0 + 7.0 * (f - 0.55) / 0.03
    if f < 0.68:
        return 10.0
    if f < 0.90:
        return 1.0 + 9.0 * math.exp(-(f - 0.68) / 0.06)
    return 0.0


def step_units(f: float, steps: int = 5) -> float:
    if f >= 0.90:
        return 0.0
    return float(1 + int(f / 0.90 * steps) * 2)


def soak_units(f: float) -> float:
    return 3.0 if f < 0.90 else 0.0


def rate_at(profile: str, f: float, scale: float) -> float:
    """Offered votes per second at fraction ``f`` of the run."""
    units = {"show": show_units, "step": step_units, "soak": soak_units}[profile](f)
    return units * BASE_RATE * scale


def offered(profile: str, f: float, scale: float) -> float:
    """Like :func:`rate_at`; a profile ``rate:N`` (for benchmarks) holds N votes/s."""
    if profile.startswith("rate:"):
        return float(profile.split(":", 1)[1]) if f < 0.90 else 0.0
    return rate_at(profile, f, scale)


def schedule(profile: str) -> list[dict[str, Any]]:
    """Polls of the profile, with the fractions of the run when they open and close."""
    acts = [f"act-{i}" for i in range(1, 5)]
    if profile == "show":
        return [
            {
                "title": "Warm-up: clap or boo",
                "kind": "buzz",
                "options": ["clap", "boo"],
                "weights": [3, 1],
                "max_count": 20,
                "open_at": 0.0,
                "close_at": 0.5,
            },
            {
                "title": "Buzz act 3",
                "kind": "buzz",
                "options": ["buzz", "golden"],
                "weights": [5, 1],
                "max_count": 50,
                "open_at": 0.3,
                "close_at": 0.92,
            },
            {
                "title": "Your favourite act",
                "kind": "vote",
                "options": acts,
                "weights": [4, 3, 2, 1],
                "max_count": 1,
                "open_at": 0.55,
                "close_at": 0.92,
            },
        ]
    return [
        {
            "title": "Clap",
            "kind": "buzz",
            "options": ["clap", "boo"],
            "weights": [3, 1],
            "max_count": 20,
            "open_at": 0.0,
            "close_at": 0.92,
        },
    ]


# -- admin API (setup happens in the parent, before locust starts) ----------------------


def create_show(plan: Plan) -> None:
    """The show and its polls, in draft: the Operator user opens them on schedule."""
    host = plan.host.rstrip("/")
    show = api(
        "POST", f"{host}/v1/admin/shows", plan.admin_token, {"name": f"load test ({plan.profile})"}
    )
    plan.show_id = show["id"]
    for spec in schedule(plan.profile):
        options = list(spec["options"])
        if spec["kind"] == "buzz":
            options.append(PROBE)
        poll = api(
            "POST",
            f"{host}/v1/admin/polls",
            plan.admin_token,
            {
                "show_id": show["id"],
                "title": spec["title"],
                "options": [{"key": o, "label": o} for o in options],
                "max_votes_per_device": None if spec["kind"] == "buzz" else 1,
                "max_count": spec["max_count"],
            },
        )
        plan.polls.append(
            PollPlan(
                id=poll["id"],
                title=spec["title"],
                kind=spec["kind"],
                options=options,
                max_count=spec["max_count"],
                open_at=spec["open_at"],
                close_at=spec["close_at"],
                weights=[float(w) for w in spec["weights"]],
            )
        )
