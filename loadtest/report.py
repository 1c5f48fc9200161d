"""The PNG chart of a run: offered load, accepted rate, p50/p99 and vote-to-screen over time."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from loadtest.audit import Clients
from loadtest.plan import Plan

NUMBER = re.compile(r"-|[-+]?[\d,.]+%?")

REFUSED = {
    "400": "bad request",
    "401": "no or bad device token",
    "403": "forbidden",
    "404": "no such poll or option",
    "409": "closed, not open yet, or already voted",
}


def _history(out: Path) -> list[dict[str, str]]:
    path = out / "locust_stats_history.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _num(x: str | None) -> float:
    try:
        v = float(x or "nan")
    except ValueError:
        return math.nan
    return v if v > 0 else math.nan


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summary(out: Path, clients: Clients) -> dict[str, Any]:
    """Figures of the whole run, from locust's CSV and the clients' own records."""
    stats_path = out / "locust_stats.csv"
    votes: dict[str, float] = {}
    if stats_path.exists():
        with stats_path.open() as f:
            rows = [r for r in csv.DictReader(f) if r["Name"].startswith("vote (")]
        n = sum(int(r["Request Count"]) for r in rows)
        if rows:
            main = max(rows, key=lambda r: int(r["Request Count"]))
            votes = {
                "requests": n,
                "p50_ms": _num(main["50%"]),
                "p99_ms": _num(main["99%"]),
                "failures": sum(int(r["Failure Count"]) for r in rows),
            }
    probes = [ms for _, ms in clients.probe if ms is not None]
    busy = [s for s in clients.timeline.values() if s.get("accepted")]
    return {
        "votes": votes,
        "accepted_votes": clients.votes_accepted,
        "accepted_taps": sum(sum(o.values()) for o in clients.accepted.values()),
        "peak_accepted_per_s": max((s.get("accepted", 0) for s in busy), default=0),
        "retries": clients.retries,
        "refused": clients.refused,
        "vote_to_screen": {
            "samples": len(probes),
            "lost": len(clients.probe) - len(probes),
            "p50_ms": percentile(probes, 0.5),
            "p99_ms": percentile(probes, 0.99),
            "max_ms": max(probes, default=math.nan),
        },
    }


def table(head: list[str], rows: list[list[Any]]) -> list[str]:
    """Aligned text columns: numbers (and "-" for none) right-aligned, text left-aligned."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    cells = [head, *[[cell(v) for v in r] for r in rows]]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    right = [all(NUMBER.fullmatch(r[i]) for r in cells[1:]) for i in range(len(head))]
    return [
        "  ".join(c.rjust(w[i]) if right[i] else c.ljust(w[i]) for i, c in enumerate(r)).rstrip()
        for r in cells
    ]


def summary_lines(plan: Plan, clients: Clients, figures: dict[str, Any]) -> list[str]:
    """The figures of a run as tables; every option of every poll, zero votes included."""
    votes = figures["votes"]
    out = ["votes (the clients' view)"]
    out += table(
        ["accepted", "taps", "retries", "failed requests", "p50 ms", "p99 ms", "peak accepted/s"],
        [[figures["accepted_votes"], figures["accepted_taps"], figures["retries"],
          int(votes.get("failures", 0)), float(votes.get("p50_ms", math.nan)),
          float(votes.get("p99_ms", math.nan)), int(figures["peak_accepted_per_s"])]],
    )  # fmt: skip

    out += ["", "taps accepted per option"]
    rows: list[list[Any]] = []
    for p in plan.polls:
        counts = clients.accepted.get(p.id, {})
        # The plan's options, not the clients': an option nobody voted for is a result too.
        total = sum(counts.get(o, 0) for o in plan.audience_options(p))
        for opt in p.options:
            n = counts.get(opt, 0)
            share = f"{n / total:.1%}" if total and opt in plan.audience_options(p) else "-"
            rows.append([p.title, p.id, opt, n, share])
    out += table(["poll", "id", "option", "taps", "share"], rows)

    out += ["", "refused votes (a definite no, not retried)"]
    refused = figures["refused"] or {}
    out += table(
        ["status", "votes", "meaning"],
        [[k, n, REFUSED.get(k, "")] for k, n in sorted(refused.items())] or [["none", 0, ""]],
    )

    v2s = figures["vote_to_screen"]
    out += ["", "vote-to-screen (probe vote to a viewer's screen)"]
    out += table(
        ["probes", "p50 ms", "p99 ms", "max ms", "not shown in 5 s"],
        [[v2s["samples"], float(v2s["p50_ms"]), float(v2s["p99_ms"]), float(v2s["max_ms"]),
          v2s["lost"]]],
    )  # fmt: skip
    return out


def chart(out: Path, clients: Clients, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = json.loads((out / "shape.json").read_text()) if (out / "shape.json").exists() else []
    times = [t for t, _, _ in shape] + list(clients.timeline) + [t for t, _ in clients.probe]
    t0 = min(times) if times else 0.0

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    if shape:
        ax1.plot(
            [t - t0 for t, _, _ in shape],
            [r for _, r, _ in shape],
            label="offered (target)",
            drawstyle="steps-post",
            color="0.5",
        )
    secs = sorted(clients.timeline)
    ax1.plot(
        [s - t0 for s in secs],
        [clients.timeline[s].get("sent", 0) for s in secs],
        label="sent (incl. retries)",
        alpha=0.7,
    )
    ax1.plot(
        [s - t0 for s in secs],
        [clients.timeline[s].get("accepted", 0) for s in secs],
        label="accepted (202)",
    )
    ax1.set_ylabel("votes / s")
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)

    hist = [r for r in _history(out) if r.get("Name", "").startswith("vote (buzz")]
    if hist:
        ht = [float(r["Timestamp"]) - t0 for r in hist]
        ax2.plot(ht, [_num(r.get("50%")) for r in hist], label="p50")
        ax2.plot(ht, [_num(r.get("99%")) for r in hist], label="p99")
    ax2.axhline(100, color="red", lw=0.8, ls="--", label="100 ms")
    ax2.set_ylabel("vote latency (ms)")
    ax2.set_yscale("log")
    ax2.legend(loc="upper left")
    ax2.grid(alpha=0.3)

    seen = [(t - t0, ms) for t, ms in clients.probe if ms is not None]
    lost = [t - t0 for t, ms in clients.probe if ms is None]
    if seen:
        ax3.plot([t for t, _ in seen], [ms for _, ms in seen], ".", ms=3, label="probe")
        window: list[float] = []
        p99 = []
        for _, ms in seen:
            window = [*window[-39:], ms]
            p99.append(percentile(window, 0.99))
        ax3.plot([t for t, _ in seen], p99, label="p99 (last 40 probes)")
    if lost:
        ax3.plot(lost, [5000] * len(lost), "x", color="red", label="not shown in 5 s")
    ax3.set_ylabel("vote-to-screen (ms)")
    ax3.set_xlabel("seconds since start")
    ax3.legend(loc="upper left")
    ax3.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
