"""A stand-in for the tally and the admin API, for tests and ``buzzer bench push``.

It writes what they write, with the same key layout: the PollDef at ``poll_def(poll)``,
the live counters of ``apply.lua`` (counts, per-second buckets, version per partition)
and ``TallyUpdate`` entries on the updates stream, so push cannot tell the difference.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence

import msgspec
from redis.asyncio import Redis

from services.common.live import load_polldef, read_live
from services.common.messages import (
    Keys,
    OptionDef,
    PollDef,
    PollState,
    TallyUpdate,
    encode_polldef,
    encode_update,
)

UPDATES_MAXLEN = 10_000
SECOND_TTL_S = 120


class SimTally:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.written: set[str] = {keys.updates, keys.polls_index, f"{keys.prefix}:viewers"}
        self.written.update(keys.votes(p) for p in range(keys.partitions))

    async def cleanup(self) -> int:
        """Delete what this stand-in (and push, and a test's streams) wrote under its prefix.

        Cheaper than :func:`delete_prefix` on a Redis holding millions of other keys.
        """
        keys = sorted(self.written)
        self.written.clear()
        return int(await self.redis.delete(*keys)) if keys else 0

    async def define(
        self,
        poll: str,
        options: Sequence[str] | Sequence[tuple[str, str]],
        *,
        title: str = "Who wins tonight?",
        state: PollState = "open",
        show_id: str = "show-1",
    ) -> PollDef:
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
            max_count=1,
            state=state,
        )
        await self._save(pdef)
        return pdef

    async def _save(self, pdef: PollDef) -> None:
        self.written.add(self.keys.poll_def(pdef.id))
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.poll_def(pdef.id), encode_polldef(pdef))
        pipe.sadd(self.keys.polls_index, pdef.id)
        await pipe.execute()

    async def set_state(self, poll: str, state: PollState, *, final: bool = False) -> PollDef:
        pdef = await load_polldef(self.redis, self.keys, poll)
        assert pdef is not None, f"no poll {poll}"
        pdef = msgspec.structs.replace(pdef, state=state, final=final)
        await self._save(pdef)
        return pdef

    async def add_votes(
        self, poll: str, votes: Mapping[str, int], now: float | None = None
    ) -> None:
        """Apply votes the way apply.lua does: counts, the second's bucket, version +1."""
        sec = int(time.time() if now is None else now)
        by_partition: dict[int, dict[str, int]] = {}
        for option, n in votes.items():
            p = zlib.crc32(option.encode()) % self.keys.partitions
            by_partition.setdefault(p, {})[option] = n
        pipe = self.redis.pipeline(transaction=True)
        for p, part in by_partition.items():
            self.written.update(
                (
                    self.keys.counts(p, poll),
                    self.keys.second(p, poll, sec),
                    self.keys.version(p, poll),
                )
            )
            for option, n in part.items():
                pipe.hincrby(self.keys.counts(p, poll), option, n)
                pipe.hincrby(self.keys.second(p, poll, sec), option, n)
            pipe.expire(self.keys.second(p, poll, sec), SECOND_TTL_S)
            pipe.incr(self.keys.version(p, poll))
        await pipe.execute()

    async def publish(self, poll: str) -> TallyUpdate:
        """Read the counters and publish the poll's state, as the tally does every 100 ms."""
        pdef = await load_polldef(self.redis, self.keys, poll)
        assert pdef is not None, f"no poll {poll}"
        u = await read_live(self.redis, self.keys, pdef)
        await self.publish_update(u)
        return u

    async def publish_update(self, u: TallyUpdate) -> None:
        await self.redis.xadd(
            self.keys.updates, {"d": encode_update(u)}, maxlen=UPDATES_MAXLEN, approximate=True
        )

    async def close(self, poll: str) -> TallyUpdate:
        """Close and finalise: close markers applied on every partition, then the final result."""
        await self.set_state(poll, "closed")
        pipe = self.redis.pipeline(transaction=True)
        for p in range(self.keys.partitions):
            self.written.update((self.keys.closed(p, poll), self.keys.version(p, poll)))
            pipe.set(self.keys.closed(p, poll), "1")
            pipe.incr(self.keys.version(p, poll))
        await pipe.execute()
        await self.set_state(poll, "closed", final=True)
        return await self.publish(poll)


async def delete_prefix(redis: Redis, prefix: str) -> int:
    """Delete every key under ``prefix:`` (tests and benches use a prefix of their own)."""
    n = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=20_000):
        batch.append(key)
        if len(batch) >= 500:
            n += await redis.delete(*batch)
            batch.clear()
    if batch:
        n += await redis.delete(*batch)
    return n
