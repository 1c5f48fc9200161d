"""The Lua scripts that enforce the stream contract: what each takes, what each answers.

Every call goes through this module: a builder lays out a script's KEYS and ARGV from
typed input, and a decoder turns its reply into a typed outcome. ``vote_batch.lua``
finds each vote's keys and arguments by name, in a layout written into it when it is
registered (:func:`vote_batch_source`) from the fields of the named tuples below, so
the layout is written down in one place only.

Adding a vote rule: a field in :class:`VoteRules` and :class:`RuleArgs`, its check in
``vote_batch.lua`` answering a new :class:`VoteOutcome`, the outcome's field in
:class:`VoteResult` and :func:`decode_vote`, and its row in the ingest handler's table
of refusals (docs/architecture.md, "Adding a vote rule").
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from services.common.messages import (
    TALLY_GROUP,
    CloseEntry,
    Keys,
    StreamId,
    VoteEntry,
    parse_id,
)
from services.common.oidc import account_key


def _source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", name).read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    vote_batch: AsyncScript
    close: AsyncScript
    apply: AsyncScript
    trim: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        # register_script only hashes locally; EVALSHA falls back to loading on NOSCRIPT,
        # which also covers a Redis that restarted empty.
        return cls(
            vote_batch=redis.register_script(vote_batch_source()),
            close=redis.register_script(_source("close.lua")),
            apply=redis.register_script(_source("apply.lua")),
            trim=redis.register_script(_source("trim.lua")),
        )


class ScriptReplyError(Exception):
    """A script answered something its decoder does not know: the script and this
    module are out of step, which is a bug, never the caller's input."""


# ------------------------------------------------------------------- vote_batch.lua


@dataclass(frozen=True, slots=True)
class VoteRules:
    max_votes: int = 0
    """Most votes (taps) a device may cast in the poll; 0: unlimited."""
    max_votes_per_account: int = 0
    """Most votes (taps) all devices of one account may cast in the poll; 0: unlimited.
    Only atomic when the vote goes to its account's partition (the handler sees to it)."""
    rate_per_s: int = 0
    """Votes per second per device; 0: no limit."""
    dedupe_ttl_s: int = 6 * 3600
    """How long the vote id is remembered for retries (and the device's vote count)."""


class VoteKeys(NamedTuple):
    """One vote's KEYS, after the partition's votes stream."""

    state: str
    dedupe: str
    device_votes: str
    rate: str
    account_votes: str
    """Unused (never read or written) when the rule is off."""


class RuleArgs(NamedTuple):
    """One set of a poll's rules as the script reads them: sent once per call for all
    the votes that share it (a show's votes mostly do), not once per vote."""

    max_votes: int
    max_account_votes: int
    """0 for a vote without an account: the rule is off for it."""
    rate_per_s: int
    ttl_s: int
    """Of the dedupe key and the device's vote count."""


_AN_ENTRY = VoteEntry("", "", 0, "", "", 0, 0).to_fields()

ENTRY_FIELDS: tuple[str, ...] = tuple(_AN_ENTRY)
"""Stream entry field names; the script appends them with the values each vote carries."""

VOTE_TYPE: tuple[str, str] = (ENTRY_FIELDS[0], str(_AN_ENTRY[ENTRY_FIELDS[0]]))
"""The entry's first field and its value, the same for every vote: written by the
script, not sent with each vote."""

VOTE_FIELDS: tuple[str, ...] = ENTRY_FIELDS[1:]
"""The entry fields whose values each vote sends (:meth:`VoteEntry.values`)."""


def vote_batch_source() -> str:
    """``vote_batch.lua`` with its layout written in: the names of the keys, rules and
    entry fields, in the order Python lays them out. The script looks each one up by
    name, and the layout is built here from the named tuples, so nothing is kept in
    step by position, and no call carries the names (they were two dozen arguments of
    every call, packed by ingest and parsed by Redis each time)."""

    def names(xs: Sequence[str]) -> str:
        return "{" + ", ".join(f"'{x}'" for x in xs) + "}"

    layout = (
        f"local LAYOUT = {{keys = {names(VoteKeys._fields)},"
        f" rules = {names(RuleArgs._fields)}, fields = {names(VOTE_FIELDS)},"
        f" type = {names(VOTE_TYPE)}}}\n"
    )
    return layout + _source("vote_batch.lua")


class VoteCall(NamedTuple):
    """One vote's share of a ``vote_batch.lua`` call, built once when the vote arrives."""

    keys: VoteKeys
    rules: RuleArgs
    values: tuple[str | int, ...]
    """The stream entry's values, in the order of :data:`VOTE_FIELDS`."""


_tuple_new = tuple.__new__


def vote_partition(keys: Keys, device: str, account_key: str = "") -> int:
    """The partition a vote goes to: its account's, when the device has one, so that all
    devices of one account meet in one atomic script (their per-account count is exact);
    else the device's. A token's account never changes, so a device's dedupe and rate
    keys stay in one partition either way."""
    return keys.partition_of(account_key or device)


Placement = Callable[[str, str | None], tuple[int, str]]
"""(device, account) -> (partition, account key): where a device's votes go."""


def placements(keys: Keys, size: int = 100_000) -> Placement:
    """A device's partition and account key (oidc.account_key, "" for none) by its
    token's device and account. The same for every vote of the token, so worked out (a
    CRC, and a SHA-256 for an account) once per device, not once per vote: ``size``
    devices are remembered, as many as the token cache holds."""

    @functools.lru_cache(maxsize=size)
    def place(device: str, account: str | None) -> tuple[int, str]:
        acc = account_key(account) if account else ""
        return vote_partition(keys, device, acc), acc

    return place


def vote_call(
    keys: Keys, p: int, entry: VoteEntry, rules: VoteRules, account_key: str = ""
) -> VoteCall:
    """``account_key``: the voter's account (oidc.account_key), "" for none; with one,
    ``p`` must be the account's partition."""
    # The same names as Keys.state/dedupe/device_votes/rate/account_votes (a unit test
    # holds them equal), built from one tag: this runs once per vote.
    tag, poll, device = keys.tags[p], entry.poll, entry.device
    # tuple.__new__: half the cost of the named tuples' constructors, once per vote.
    vote_keys = _tuple_new(
        VoteKeys,
        (
            f"{tag}:state:{poll}",
            f"{tag}:vid:{poll}:{device}:{entry.vote_id}",
            f"{tag}:dv:{poll}:{device}",
            f"{tag}:rate:{device}",
            f"{tag}:av:{poll}:{account_key or '-'}",
        ),
    )
    rule_args = _tuple_new(
        RuleArgs,
        (
            rules.max_votes,
            rules.max_votes_per_account if account_key else 0,
            rules.rate_per_s,
            rules.dedupe_ttl_s,
        ),
    )
    return _tuple_new(VoteCall, (vote_keys, rule_args, entry.values()))


def vote_batch_args(
    keys: Keys, p: int, calls: Sequence[VoteCall]
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of one ``vote_batch.lua`` call for votes of partition ``p``.

    KEYS: the partition's votes stream, then each vote's :class:`VoteKeys`.
    ARGV: the number of votes and of rule sets, each distinct :class:`RuleArgs` once,
    then per vote the (1-based) number of its rule set and its entry's values.
    """
    ks: list[str] = [keys.votes(p)]
    sets: dict[RuleArgs, int] = {}
    per_vote: list[str | int] = []
    for call in calls:
        ks += call.keys
        i = sets.get(call.rules)
        if i is None:
            i = sets[call.rules] = len(sets) + 1
        per_vote.append(i)
        per_vote += call.values
    args: list[str | int] = [len(calls), len(sets)]
    for rule_set in sets:
        args += rule_set
    args += per_vote
    return ks, args


class VoteOutcome(enum.Enum):
    """What ``vote_batch.lua`` answers for one vote; the values are its reply codes."""

    ACCEPTED = "accepted"
    """Appended by this call; carries ``accepted`` (the count)."""
    REPLAYED = "replayed"
    """The vote id was accepted before with the same vote; carries ``accepted``."""
    NOT_OPEN = "not_open"
    """The poll is not open on this partition; carries ``state`` (draft or closed)."""
    RATE_LIMITED = "rate_limited"
    """The device is over its votes per second; carries ``retry_after_ms``."""
    VOTE_LIMIT = "vote_limit"
    """The vote would take the device over the poll's limit; carries ``max_votes``."""
    ACCOUNT_LIMIT = "account_limit"
    """The vote would take the device's account over the poll's limit; carries
    ``max_votes`` (the account's limit)."""
    ID_REUSED = "id_reused"
    """The vote id was accepted before for a different vote; carries nothing."""


class VoteResult(NamedTuple):
    outcome: VoteOutcome
    accepted: int = 0
    state: str = ""
    retry_after_ms: int = 0
    max_votes: int = 0


_OUTCOMES: dict[str | bytes, VoteOutcome] = {
    **{o.value: o for o in VoteOutcome},
    **{o.value.encode(): o for o in VoteOutcome},
}


_COMMON_RESULTS: dict[str | bytes, tuple[VoteResult, ...]] = {
    code: tuple(VoteResult(o, n) for n in range(101))
    for o in (VoteOutcome.ACCEPTED, VoteOutcome.REPLAYED)
    for code in (o.value, o.value.encode())
}
"""By reply code and count: a vote's result, built once. Keyed by the code as Redis
sends it, not by the outcome: an enum's hash is a Python call, once per vote."""


def decode_vote(reply: Sequence[Any]) -> VoteResult:
    """One vote's reply ``[outcome, value]`` as a :class:`VoteResult`."""
    try:
        code, value = reply
        common = _COMMON_RESULTS.get(code)
        if common is not None:
            # Every vote's path: accepted or replayed, most with a small count.
            n = int(value)
            if 0 < n < len(common):
                return common[n]
        outcome = _OUTCOMES[code]
        if outcome is VoteOutcome.ACCEPTED or outcome is VoteOutcome.REPLAYED:
            return VoteResult(outcome, int(value))
    except (TypeError, ValueError, KeyError) as exc:
        raise ScriptReplyError(f"vote_batch.lua answered {reply!r}") from exc
    if outcome is VoteOutcome.NOT_OPEN:
        return VoteResult(outcome, state=value.decode() if isinstance(value, bytes) else str(value))
    if outcome is VoteOutcome.RATE_LIMITED:
        return VoteResult(outcome, retry_after_ms=max(0, int(value)))
    if outcome is VoteOutcome.VOTE_LIMIT or outcome is VoteOutcome.ACCOUNT_LIMIT:
        return VoteResult(outcome, max_votes=int(value))
    return VoteResult(outcome)


def decode_vote_batch(reply: Sequence[Any]) -> list[VoteResult]:
    return [decode_vote(r) for r in reply]


# ------------------------------------------------------------------------ apply.lua


class PollKeys(NamedTuple):
    """The keys of one poll in an ``apply.lua`` call; its entries point at the first."""

    counts: str
    version: str
    closed: str


class ApplyArgs(NamedTuple):
    """One stream entry's arguments."""

    id: str
    kind: str
    """``v`` a vote, ``c`` a close marker."""
    poll: str
    option: str
    taps: int
    """The vote's count (a NamedTuple field cannot be called ``count``)."""
    sec: int
    """The second the vote was received in, for the per-second counts."""
    poll_keys: int
    """KEYS index of the poll's :class:`PollKeys`."""
    second_key: int
    """KEYS index of the poll's counts of second ``sec``; 0 for a close marker."""


_APPLY_LAYOUT: tuple[str | int, ...] = (
    len(PollKeys._fields),
    len(ApplyArgs._fields),
    *PollKeys._fields,
    *ApplyArgs._fields,
)
"""Sent with every call: the script looks each poll key and argument up by these names."""


def apply_args(
    keys: Keys, p: int, entries: Sequence[tuple[bytes, VoteEntry | CloseEntry]], sec_ttl: int
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of one ``apply.lua`` call for entries of partition ``p``: each poll's
    keys and each (poll, second) key once, however many entries share them."""
    ks: list[str] = [keys.votes(p), keys.applied(p)]
    poll_at: dict[str, int] = {}
    second_at: dict[tuple[str, int], int] = {}
    args: list[str | int] = [TALLY_GROUP, len(entries), sec_ttl, *_APPLY_LAYOUT]
    for entry_id, e in entries:
        at = poll_at.get(e.poll)
        if at is None:
            at = poll_at[e.poll] = len(ks) + 1  # Lua's KEYS count from 1
            ks += PollKeys(
                counts=keys.counts(p, e.poll),
                version=keys.version(p, e.poll),
                closed=keys.closed(p, e.poll),
            )
        if isinstance(e, VoteEntry):
            sec = e.recv_ts // 1000
            sat = second_at.get((e.poll, sec))
            if sat is None:
                ks.append(keys.second(p, e.poll, sec))
                sat = second_at[(e.poll, sec)] = len(ks)
            args += ApplyArgs(
                id=entry_id.decode(),
                kind="v",
                poll=e.poll,
                option=e.option,
                taps=e.count,
                sec=sec,
                poll_keys=at,
                second_key=sat,
            )
        else:
            args += ApplyArgs(
                id=entry_id.decode(),
                kind="c",
                poll=e.poll,
                option="",
                taps=0,
                sec=0,
                poll_keys=at,
                second_key=0,
            )
    return ks, args


class ApplyResult(NamedTuple):
    applied: int
    """Vote entries this call acknowledged and counted."""
    closes: int
    """Close markers this call acknowledged."""
    deferred: list[bytes]
    """Close markers left pending: earlier entries of their stream still are."""


def decode_apply(reply: Any) -> ApplyResult:
    """The reply ``{applied, closes, deferred}`` of ``apply.lua``."""
    try:
        applied, closes, deferred = reply
        return ApplyResult(int(applied), int(closes), [bytes(d) for d in deferred])
    except (TypeError, ValueError) as exc:
        raise ScriptReplyError(f"apply.lua answered {reply!r}") from exc


# ------------------------------------------------------------------------ close.lua


class CloseKeys(NamedTuple):
    state: str
    votes: str


def close_args(keys: Keys, p: int, poll: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of ``close.lua`` (ARGV: the poll id, for the close marker)."""
    return list(CloseKeys(state=keys.state(p, poll), votes=keys.votes(p))), [poll]


def decode_close(reply: Any) -> bool:
    """Whether this call closed the partition (False: it was closed already)."""
    if reply not in (0, 1):
        raise ScriptReplyError(f"close.lua answered {reply!r}")
    return bool(reply)


async def close_partition(redis: Redis, scripts: Scripts, keys: Keys, p: int, poll: str) -> bool:
    """Close ``poll`` on partition ``p`` with its close marker; True if this call did."""
    ks, args = close_args(keys, p, poll)
    return decode_close(await scripts.close(keys=ks, args=args, client=redis))


# ------------------------------------------------------------------------- trim.lua


class TrimKeys(NamedTuple):
    stream: str


class TrimResult(NamedTuple):
    removed: int
    """Entries this call deleted."""
    safe: StreamId
    """Every id below this one was delivered to and acknowledged by every group."""
    first: StreamId | None
    """The stream's first entry after the trim (None: the stream is empty)."""


def trim_args(stream: str, groups: Sequence[str]) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of ``trim.lua`` (ARGV: the groups that must all have acknowledged)."""
    if not groups:
        raise ValueError("trim.lua needs at least one group")
    return list(TrimKeys(stream=stream)), list(groups)


def decode_trim(reply: Any) -> TrimResult | None:
    """The reply of ``trim.lua``; None while the stream or one of its groups is missing."""
    if reply is None:
        return None
    try:
        removed, safe, first = reply
        return TrimResult(int(removed), parse_id(safe), parse_id(first) if first else None)
    except (TypeError, ValueError) as exc:
        raise ScriptReplyError(f"trim.lua answered {reply!r}") from exc


async def trim_stream(
    redis: Redis, scripts: Scripts, stream: str, groups: Sequence[str]
) -> TrimResult | None:
    """Remove from ``stream`` what every one of ``groups`` acknowledged (``trim.lua``)."""
    ks, args = trim_args(stream, groups)
    return decode_trim(await scripts.trim(keys=ks, args=args, client=redis))
