"""Reading a poll's live state from the Redis counters the tally maintains."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from services.common.messages import Keys, PollDef, TallyUpdate, decode_polldef

RATE_WINDOW_S = 10


async def load_polldef(redis: Redis, keys: Keys, poll: str) -> PollDef | None:
    raw = await redis.get(keys.poll_def(poll))
    return (
        decode_polldef(raw.encode() if isinstance(raw, str) else raw) if raw is not None else None
    )


async def read_live(
    redis: Redis, keys: Keys, pdef: PollDef, now: float | None = None
) -> TallyUpdate:
    """Counts summed over partitions, rates over the last 10 whole seconds, one round trip."""
    now_ms = int((time.time() if now is None else now) * 1000)
    secs = range(now_ms // 1000 - RATE_WINDOW_S, now_ms // 1000)
    pipe = redis.pipeline(transaction=False)
    for p in range(keys.partitions):
        pipe.hgetall(keys.counts(p, pdef.id))
        pipe.get(keys.version(p, pdef.id))
        for s in secs:
            pipe.hgetall(keys.second(p, pdef.id, s))
    replies = await pipe.execute()
    counts = {o.key: 0 for o in pdef.options}
    window = dict.fromkeys(counts, 0)
    version = 0
    stride = 2 + len(secs)
    for p in range(keys.partitions):
        base = p * stride
        for k, v in replies[base].items():
            key = k.decode()
            counts[key] = counts.get(key, 0) + int(v)
        version += int(replies[base + 1] or 0)
        for bucket in replies[base + 2 : base + stride]:
            for k, v in bucket.items():
                key = k.decode()
                window[key] = window.get(key, 0) + int(v)
    return TallyUpdate(
        poll=pdef.id,
        version=version,
        counts=counts,
        total=sum(counts.values()),
        rates={k: round(v / RATE_WINDOW_S, 3) for k, v in window.items()},
        state=pdef.state,
        final=pdef.final,
        ts=now_ms,
    )
