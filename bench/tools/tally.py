"""The real tally's Redis writes, driven one step at a time: for ``buzzer bench push`` and
the push and results-page tests, which need a poll's live state to change on demand.

Nothing here writes a tally key itself. Polls are defined and opened by the functions
the admin API calls, votes go in through ``vote_batch.lua`` as ingest appends them,
and come out through the tally's own consumer (``apply.lua``) and publisher; closing
appends the close markers and finalises as the tally does once PostgreSQL froze the
result. Only PostgreSQL is left out, so push sees exactly what it sees in production.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common.live import load_polldef
from services.common.messages import (
    Keys,
    OptionDef,
    PollDef,
    PollState,
    TallyUpdate,
    VoteEntry,
    decode_update,
)
from services.common.polls import close_poll_redis, open_poll_redis, publish_poll
from services.common.scripts import (
    Scripts,
    VoteOutcome,
    VoteResult,
    VoteRules,
    decode_vote_batch,
    vote_batch_args,
    vote_call,
)
from services.common.settings import TallySettings
from services.tally.consumer import VotesConsumer
from services.tally.metrics import Stats, TallyMetrics
from services.tally.publisher import Publisher


async def accept_votes(
    redis: Redis,
    scripts: Scripts,
    keys: Keys,
    p: int,
    votes: Sequence[tuple[VoteEntry, VoteRules]],
) -> list[VoteResult]:
    """Run one batch of vote_batch.lua directly (no coalescing), one result per vote."""
    ks, args = vote_batch_args(keys, p, [vote_call(keys, p, e, r) for e, r in votes])
    return decode_vote_batch(await scripts.vote_batch(keys=ks, args=args, client=redis))


class LiveTally:
    """One tally consumer and publisher, run by hand on ``keys``.

    :param redis: client of the Redis push reads
    :param keys: the key names (prefix, partitions) push is configured with
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts.register(redis)
        settings = TallySettings(
            key_prefix=keys.prefix,
            partitions=keys.partitions,
            consumer=f"live-{uuid.uuid4().hex[:8]}",
        )
        stats = Stats()
        metrics = TallyMetrics(CollectorRegistry())
        # A gate of 1 ms: each publish() goes out at once, as the first one of an
        # interval does in the tally.
        self.publisher = Publisher(redis, keys, 1, metrics, stats)
        self.consumer = VotesConsumer(
            redis, keys, self.scripts, settings, metrics, stats, self.publisher.mark
        )
        self._groups = False

    async def define(
        self,
        poll: str,
        options: Sequence[str] | Sequence[tuple[str, str]],
        *,
        title: str = "Who wins tonight?",
        state: PollState = "open",
        show_id: str = "show-1",
    ) -> PollDef:
        """Define the poll (``key`` or ``(key, label)`` per option) and open it."""
        opts = [
            OptionDef(key=o, label=o.replace("-", " ").title())
            if isinstance(o, str)
            else OptionDef(key=o[0], label=o[1])
            for o in options
        ]
        pdef = PollDef(
            id=poll,
            show_id=show_id,
            title=title,
            options=opts,
            max_votes_per_device=None,
            max_count=1_000_000,
            state=state,
        )
        await publish_poll(self.redis, self.keys, pdef)
        if state == "open":
            await open_poll_redis(self.redis, self.keys, poll)
        return pdef

    async def add_votes(self, poll: str, votes: Mapping[str, int]) -> None:
        """One vote per option carrying ``count`` taps, appended and applied."""
        now_ms = int(time.time() * 1000)
        for option, count in votes.items():
            if count <= 0:
                continue
            entry = VoteEntry(
                poll=poll,
                option=option,
                count=count,
                device=uuid.uuid4().hex,
                vote_id=str(uuid.uuid4()),
                client_ts=0,
                recv_ts=now_ms,
            )
            p = self.keys.partition_of(entry.device)
            [result] = await accept_votes(
                self.redis, self.scripts, self.keys, p, [(entry, VoteRules())]
            )
            if result.outcome is not VoteOutcome.ACCEPTED:
                raise RuntimeError(f"vote for {poll}/{option} refused: {result}")
        await self.apply()

    async def apply(self) -> int:
        """Apply what every partition's stream holds; returns the entries counted."""
        if not self._groups:
            # At the first apply, not before: until then the streams are as a tally
            # that has not started leaves them (a test may set its own group up).
            await self.consumer.ensure_groups()
            self._groups = True
        applied = 0
        for p in range(self.keys.partitions):
            while entries := await self.consumer.readers[p].read_new(1000, None):
                applied += (await self.consumer.apply(p, entries)).applied
        return applied

    async def publish(self, poll: str) -> TallyUpdate:
        """Publish the poll's live state now, as the tally's next tick would."""
        self.publisher.mark({poll: None})
        await self.publisher.flush(time.monotonic() + 5)
        return await self._last_update(poll)

    async def set_state(self, poll: str, state: PollState) -> PollDef:
        """What the admin API does on open or close; a close's markers are applied."""
        pdef = await load_polldef(self.redis, self.keys, poll)
        if pdef is None:
            raise KeyError(poll)
        pdef = msgspec.structs.replace(pdef, state=state)
        await publish_poll(self.redis, self.keys, pdef)
        if state == "open":
            await open_poll_redis(self.redis, self.keys, poll)
        elif state == "closed":
            await close_poll_redis(self.redis, self.keys, self.scripts, poll)
            await self.apply()
        return pdef

    async def close(self, poll: str) -> TallyUpdate:
        """Close, apply the close markers and publish the final result."""
        await self.set_state(poll, "closed")
        await self.publisher.finalize(poll)
        return await self._last_update(poll)

    async def _last_update(self, poll: str) -> TallyUpdate:
        # redis-py types stream replies loosely; decode_responses is off, so bytes.
        entries: Any = await self.redis.xrevrange(self.keys.updates, count=100)
        for _, fields in entries:
            u = decode_update(fields[b"d"])
            if u.poll == poll:
                return u
        raise LookupError(f"no update of {poll} published")

    async def cleanup(self) -> int:
        """Delete every key under the prefix (push's and the test's included)."""
        n = 0
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=f"{self.keys.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                n += int(await self.redis.delete(*batch))
                batch.clear()
        if batch:
            n += int(await self.redis.delete(*batch))
        return n
