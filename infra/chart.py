"""The capacity timeline as a PNG: instances per tier against the expected load."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from infra.runsheet import ASG_TIERS, Tier
from infra.timeline import CapacityTimeline


def _series(tl: CapacityTimeline, tier: Tier, times: list[datetime]) -> list[int]:
    if tier == "haproxy":
        end = tl.steps[-1].at
        return [tl.haproxy_nodes if tl.haproxy_ready_by <= t <= end else 0 for t in times]
    return [tl.level_at(tier, t) for t in times]


def render(tl: CapacityTimeline, out: Path) -> Path:
    import matplotlib

    # No display on a CI runner or an ops box: never let matplotlib pick a GUI backend.
    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    s = tl.sheet
    start = tl.haproxy_ready_by - timedelta(minutes=20)
    end = tl.steps[-1].at + timedelta(minutes=20)
    step = timedelta(minutes=1)
    times = [start + i * step for i in range(int((end - start) / step) + 1)]

    tiers: list[Tier] = ["haproxy", *ASG_TIERS]
    fig, axes = plt.subplots(len(tiers), 1, sharex=True, figsize=(11, 2.4 * len(tiers)))
    for ax, tier in zip(axes, tiers, strict=True):
        ax.step(times, _series(tl, tier, times), where="post", color="tab:blue", lw=2)
        ax.set_ylabel(f"{tier}\ninstances", color="tab:blue")
        ax.set_ylim(bottom=0)
        load = ax.twinx()
        if tier == "push":
            load.plot(times, [tl.viewers_at(t) for t in times], color="tab:orange")
            load.set_ylabel("viewers", color="tab:orange")
        else:
            load.plot(times, [tl.votes_at(t) for t in times], color="tab:orange")
            load.set_ylabel("votes/s", color="tab:orange")
        load.set_ylim(bottom=0)
        for t, style in [(s.on_air, "-"), (s.off_air, "-")]:
            ax.axvline(t, color="black", ls=style, lw=0.8)
        for poll in s.polls:
            ax.axvline(poll.call_to_action, color="tab:red", ls="--", lw=0.8)
    axes[0].set_title(
        f"show {s.show}: capacity (blue) vs expected load (orange); "
        "black = on/off air, red = call to action"
    )
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    axes[-1].set_xlabel("UTC")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
