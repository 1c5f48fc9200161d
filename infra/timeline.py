"""Run sheet to capacity timeline: how many instances per tier, from when, and why.

Rules (docs/infra.md explains them):

- HAProxy nodes are at the show's peak count ``haproxy_lead_min`` before on-air and
  stay there until ``destroy``: a DNS change or a new node mid-show reaches viewers only
  as resolvers expire, so the front door is never resized while the audience is there.
- Each ASG tier rises to the on-air level ``boot_lead_min`` before on-air and to each
  poll's peak level ``boot_lead_min`` before its call to action; an instance needs
  minutes to boot and install, and a TV spike arrives in seconds.
- Levels only go up until off-air (a later, smaller poll keeps the earlier level): a
  scale-in between polls saves little and risks being caught by a second "vote now".
- ``drain_min`` after off-air everything scales in, once the tally has drained the
  stream and the final results have been pushed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from infra.capacity import TierCounts, tier_counts
from infra.runsheet import (
    ASG_TIERS,
    DEFAULT_AFTER,
    DEFAULT_IDLE,
    RunSheet,
    Tier,
)


@dataclass(frozen=True)
class Step:
    name: str
    """Scheduled action name: ``warmup``, ``cta-<poll>`` or ``scalein``."""
    at: datetime
    counts: dict[Tier, int]
    reason: str


@dataclass(frozen=True)
class ScheduledAction:
    name: str
    at: datetime
    min_size: int
    desired: int


@dataclass(frozen=True)
class CapacityTimeline:
    sheet: RunSheet
    haproxy_nodes: int
    haproxy_ready_by: datetime
    peak: TierCounts
    idle: dict[Tier, int]
    steps: list[Step]

    @property
    def freeze(self) -> tuple[datetime, datetime]:
        """While the audience may be there: no HAProxy change, no ASG lowered by apply."""
        return self.haproxy_ready_by, self.steps[-1].at

    def in_freeze(self, now: datetime) -> bool:
        start, end = self.freeze
        return start <= now < end

    def level_at(self, tier: Tier, t: datetime) -> int:
        level = self.idle[tier]
        for step in self.steps:
            if step.at <= t:
                level = step.counts[tier]
        return level

    def max_size(self, tier: Tier) -> int:
        peak = max([self.idle[tier]] + [s.counts[tier] for s in self.steps])
        return max(1, math.ceil(peak * self.sheet.timeline.max_factor))

    def actions(
        self, tier: Tier, now: datetime, due_margin: timedelta = timedelta(minutes=2)
    ) -> list[ScheduledAction]:
        """Future level changes of ``tier``; those due within ``due_margin`` are left out.

        AWS refuses a StartTime in the past, so an action about to fire is instead
        folded into the group's current size by the caller (``level_at(now + margin)``).
        """
        out: list[ScheduledAction] = []
        level = self.idle[tier]
        for step in self.steps:
            n = step.counts[tier]
            if n == level and step.name != "scalein":
                continue
            level = n
            if step.at > now + due_margin:
                out.append(ScheduledAction(step.name, step.at, min_size=n, desired=n))
        return out

    def votes_at(self, t: datetime) -> float:
        """Expected votes/s: the baseline on air, plus a decaying spike per call to action."""
        s = self.sheet
        if not s.on_air <= t <= s.off_air:
            return 0.0
        votes = s.traffic.baseline_votes_per_s
        for poll in s.polls:
            end = poll.closes or s.off_air
            if poll.call_to_action <= t <= end:
                minutes = (t - poll.call_to_action).total_seconds() / 60
                # Most votes arrive in the first minutes after "vote now".
                votes += poll.peak_votes_per_s * math.exp(-minutes / 4)
            elif poll.opens <= t < poll.call_to_action:
                votes += poll.peak_votes_per_s * 0.02
        return votes

    def viewers_at(self, t: datetime) -> int:
        s = self.sheet
        if not s.on_air <= t <= s.off_air:
            return 0
        return max(p.viewers for p in s.polls)


def build(sheet: RunSheet) -> CapacityTimeline:
    tl = sheet.timeline
    boot = timedelta(minutes=tl.boot_lead_min)
    viewers = max(p.viewers for p in sheet.polls)

    idle: dict[Tier, int] = {}
    for tier in ASG_TIERS:
        spec = sheet.tiers.get(tier)
        idle[tier] = DEFAULT_IDLE[tier] if spec.idle is None else spec.idle

    def as_dict(c: TierCounts, floor: dict[Tier, int]) -> dict[Tier, int]:
        return {tier: max(c.get(tier), floor[tier]) for tier in ASG_TIERS}

    on_air = tier_counts(sheet, sheet.traffic.baseline_votes_per_s, viewers)
    level = on_air
    steps = [
        Step(
            "warmup",
            sheet.on_air - boot,
            as_dict(level, idle),
            f"on-air level: {viewers:,} viewers, {sheet.traffic.baseline_votes_per_s:,.0f} votes/s",
        )
    ]
    for poll in sorted(sheet.polls, key=lambda p: p.call_to_action):
        level = level | tier_counts(sheet, poll.peak_votes_per_s, poll.viewers)
        steps.append(
            Step(
                f"cta-{poll.id}",
                max(poll.call_to_action - boot, steps[0].at),
                as_dict(level, idle),
                f"poll {poll.id}: {poll.peak_votes_per_s:,.0f} votes/s, {poll.viewers:,} viewers",
            )
        )
    after: dict[Tier, int] = {}
    for tier in ASG_TIERS:
        spec = sheet.tiers.get(tier)
        after[tier] = DEFAULT_AFTER[tier] if spec.after_show is None else spec.after_show
    steps.append(
        Step(
            "scalein",
            sheet.off_air + timedelta(minutes=tl.drain_min),
            after,
            f"off-air + {tl.drain_min} min drain",
        )
    )
    return CapacityTimeline(
        sheet=sheet,
        haproxy_nodes=level.haproxy,
        haproxy_ready_by=sheet.on_air - timedelta(minutes=tl.haproxy_lead_min),
        peak=level,
        idle=idle,
        steps=steps,
    )


def describe(tl: CapacityTimeline) -> str:
    """The timeline as a table, for ``infra plan``."""
    units = f"{' instances per tier ':-^{7 + 8 * len(ASG_TIERS)}}"
    rows = [
        f"{'':<16}  {'':<16}  {units}",
        f"{'time (UTC)':<16}  {'step':<16}  {'haproxy':>7}  "
        + "  ".join(f"{t:>6}" for t in ASG_TIERS)
        + "  why",
    ]
    rows.append(
        f"{'from apply':<16}  {'idle':<16}  {'-':>7}  "
        + "  ".join(f"{tl.idle[t]:>6}" for t in ASG_TIERS)
        + "  proves AMI and user data boot before the show"
    )
    rows.append(
        f"{tl.haproxy_ready_by:%Y-%m-%d %H:%M}  {'haproxy ready':<16}  {tl.haproxy_nodes:>7}  "
        + "  ".join(f"{'':>6}" for _ in ASG_TIERS)
        + "  plain instances at peak count, never resized on air"
    )
    for s in tl.steps:
        rows.append(
            f"{s.at:%Y-%m-%d %H:%M}  {s.name:<16}  {'':>7}  "
            + "  ".join(f"{s.counts[t]:>6}" for t in ASG_TIERS)
            + f"  {s.reason}"
        )
    return "\n".join(rows)
