"""The capacity timeline as a PNG: per tier, capacity and expected load on one axis.

Each tier is drawn in the unit it is sized in (votes/s, viewers, HAProxy's concurrent
connections or busy cores, the Redis shards' votes/s), so the gap between the two
curves is the headroom.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from infra.capacity import Measure, measure, postgres_measure, postgres_vcpus, redis_measure
from infra.runsheet import ASG_TIERS, Tier
from infra.timeline import CapacityTimeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CAPACITY = "tab:blue"
LOAD = "tab:orange"


def instances(tl: CapacityTimeline, tier: Tier, times: list[datetime]) -> list[int]:
    if tier == "haproxy":
        end = tl.steps[-1].at
        return [tl.haproxy_nodes if tl.haproxy_ready_by <= t <= end else 0 for t in times]
    return [tl.level_at(tier, t) for t in times]


def _times(tl: CapacityTimeline) -> list[datetime]:
    start = tl.haproxy_ready_by - timedelta(minutes=20)
    end = tl.steps[-1].at + timedelta(minutes=20)
    step = timedelta(minutes=1)
    return [start + i * step for i in range(int((end - start) / step) + 1)]


def _short(x: float, _pos: object = None) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _x(t: datetime) -> float:
    """Matplotlib's date number: plain floats keep the plotting calls simply typed."""
    import matplotlib.dates as mdates

    return float(mdates.date2num(t))


def _label_levels(
    ax: Axes, xs: list[float], counts: list[int], caps: list[float], what: str = "inst."
) -> None:
    """Write the instance count where it changes, on the capacity line."""
    prev = None
    for t, n, c in zip(xs, counts, caps, strict=True):
        if n != prev and n > 0:
            ax.annotate(
                f"{n:,} {what}",
                (t, c),
                textcoords="offset points",
                xytext=(3, 4),
                fontsize=8,
                color=CAPACITY,
            )
        prev = n


def _tier(ax: Axes, tl: CapacityTimeline, tier: Tier, times: list[datetime]) -> None:
    m = measure(tl.sheet, tier, tl.peak.binding["haproxy"])
    itype = tl.sheet.tiers.get(tier).instance_type
    _panel(ax, tl, times, m, instances(tl, tier, times), f"{tier} (", f"per {itype}", "inst.")


def made_before_the_show(tl: CapacityTimeline, times: list[datetime], n: int) -> list[int]:
    """``n`` from the HAProxy lead on: what ``apply`` makes at the peak's size and does
    not resize on air (the Redis shards, the PostgreSQL writer)."""
    end = tl.steps[-1].at
    return [n if tl.haproxy_ready_by <= t <= end else 0 for t in times]


def _redis(ax: Axes, tl: CapacityTimeline, times: list[datetime]) -> None:
    shards = made_before_the_show(tl, times, tl.peak.redis_shards)
    _panel(ax, tl, times, redis_measure(tl.sheet), shards, "redis (", "per shard", "shards")


def _postgres(ax: Axes, tl: CapacityTimeline, times: list[datetime], vcpus: int) -> None:
    counts = made_before_the_show(tl, times, vcpus)
    _panel(ax, tl, times, postgres_measure(tl.sheet), counts, "postgres (", "per vCPU", "vCPUs")


def _panel(
    ax: Axes,
    tl: CapacityTimeline,
    times: list[datetime],
    m: Measure,
    counts: list[int],
    name: str,
    per: str,
    what: str,
) -> None:
    h = tl.sheet.traffic.headroom
    caps = [n * m.per_instance for n in counts]
    load = [m.load(tl.votes_at(t), tl.viewers_at(t)) for t in times]
    xs = [_x(t) for t in times]

    ax.fill_between(xs, caps, step="post", color=CAPACITY, alpha=0.12, lw=0)
    ax.step(xs, caps, where="post", color=CAPACITY, lw=2, label="capacity (100 %)")
    ax.step(
        xs,
        [c * h for c in caps],
        where="post",
        color=CAPACITY,
        lw=1,
        ls="--",
        label=f"planned utilisation ({h:.0%})",
    )
    ax.fill_between(xs, load, color=LOAD, alpha=0.35, lw=0)
    ax.plot(xs, load, color=LOAD, lw=2, label="expected load")
    _label_levels(ax, xs, counts, caps, what)

    busiest = max(
        (i for i in range(len(times)) if caps[i] > 0 and load[i] > 0),
        key=lambda i: load[i] / caps[i],
        default=None,
    )
    title = f"{name}{_short(m.per_instance)} {m.unit} {per})"
    if busiest is not None:
        share = load[busiest] / caps[busiest]
        title += (
            f": busiest {times[busiest]:%H:%M}, {_short(load[busiest])} of"
            f" {_short(caps[busiest])} {m.unit} = {share:.0%} of capacity"
        )
        ax.plot([xs[busiest]], [load[busiest]], "o", color=LOAD, ms=5)
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_ylabel(m.unit)
    ax.set_ylim(0, max(caps + load) * 1.15 or 1)
    ax.grid(axis="y", alpha=0.3)

    import matplotlib.ticker as mticker

    ax.yaxis.set_major_formatter(mticker.FuncFormatter(_short))


def figure(tl: CapacityTimeline) -> Figure:
    """The chart, built without pyplot (no global state, no GUI backend)."""
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    s = tl.sheet
    times = _times(tl)
    tiers: list[Tier] = ["haproxy", *ASG_TIERS]
    pg_vcpus = postgres_vcpus(s, tl.peak)
    panels = len(tiers) + 1 + (pg_vcpus is not None)
    fig = Figure(figsize=(12, 2.6 * panels + 0.8), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True)
    for ax, tier in zip(axes, tiers, strict=False):
        _tier(ax, tl, tier, times)
    _redis(axes[len(tiers)], tl, times)
    if pg_vcpus is not None:
        _postgres(axes[-1], tl, times, pg_vcpus)
    for ax in axes:
        for t in (s.on_air, s.off_air):
            ax.axvline(_x(t), color="black", lw=0.8)
        for poll in s.polls:
            ax.axvline(_x(poll.call_to_action), color="tab:red", ls=":", lw=1)
    top = axes[0]
    for t, text in [(s.on_air, "on air"), (s.off_air, "off air")]:
        top.annotate(text, (_x(t), 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                     textcoords="offset points", fontsize=8)  # fmt: skip
    for poll in s.polls:
        top.annotate(f"vote now: {poll.id}", (_x(poll.call_to_action), 1),
                     xycoords=("data", "axes fraction"), xytext=(2, -20),
                     textcoords="offset points", fontsize=8, color="tab:red")  # fmt: skip
    handles, labels = top.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(
        f"show {s.show}: capacity vs expected load per tier (gap = headroom)",
        x=0.01,
        ha="left",
    )
    axes[-1].xaxis_date(tz="UTC")  # the x values are date numbers: hours, not 18:36
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz="UTC"))
    axes[-1].set_xlabel("UTC")
    return fig


def render(tl: CapacityTimeline, out: Path) -> Path:
    try:
        import matplotlib
    except ModuleNotFoundError:  # an extra: the production image has no use for charts
        raise SystemExit(
            "buzzer infra chart needs matplotlib: pip install 'buzzer[chart]'"
        ) from None

    # No display on a CI runner or an ops box: never let matplotlib pick a GUI backend.
    matplotlib.use("Agg", force=True)
    fig = figure(tl)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
