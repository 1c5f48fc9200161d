"""The Lua scripts that enforce the stream contract, and how to call them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from services.common.messages import Keys, VoteEntry

_FIELDS = tuple(VoteEntry("", "", 0, "", "", 0, 0).to_fields())
"""Stream entry field names, in the order vote_batch.lua receives their values."""


def _source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", name).read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    vote_batch: AsyncScript
    close: AsyncScript
    apply: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        # register_script only hashes locally; EVALSHA falls back to loading on NOSCRIPT,
        # which also covers a Redis that restarted empty.
        return cls(
            vote_batch=redis.register_script(_source("vote_batch.lua")),
            close=redis.register_script(_source("close.lua")),
            apply=redis.register_script(_source("apply.lua")),
        )


@dataclass(frozen=True, slots=True)
class VoteRules:
    max_votes: int = 0
    """Most votes (taps) a device may cast in the poll; 0: unlimited."""
    rate_per_s: int = 0
    """Votes per second per device; 0: no limit."""
    dedupe_ttl_s: int = 6 * 3600
    """How long the vote id is remembered for retries (and the device's vote count)."""


def vote_batch_call(
    keys: Keys, p: int, votes: Sequence[tuple[VoteEntry, VoteRules]]
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of one vote_batch.lua call for votes of partition ``p``."""
    ks: list[str] = [keys.votes(p)]
    args: list[str | int] = [len(votes), len(_FIELDS), *_FIELDS]
    for e, rules in votes:
        ks += (
            keys.state(p, e.poll),
            keys.dedupe(p, e.poll, e.device, e.vote_id),
            keys.device_votes(p, e.poll, e.device),
            keys.rate(p, e.device),
        )
        args += (
            f"{e.option}:{e.count}", rules.max_votes, rules.rate_per_s, rules.dedupe_ttl_s,
            e.count, rules.dedupe_ttl_s, *e.to_fields().values(),
        )
    return ks, args


async def accept_votes(
    redis: Redis, scripts: Scripts, keys: Keys, p: int, votes: Sequence[tuple[VoteEntry, VoteRules]]
) -> list[Any]:
    """Run one batch directly (no coalescing): replies ``[code, a, b]`` per vote."""
    ks, args = vote_batch_call(keys, p, votes)
    return list(await scripts.vote_batch(keys=ks, args=args, client=redis))
