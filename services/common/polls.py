"""A poll's life in Redis: definition, per-partition state, close markers, finality.

PostgreSQL is the record; these functions bring Redis in line with it. The admin API
calls them after committing a state change, and the tally's reconciler calls them
again whenever Redis lost what they wrote, so each one is idempotent.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from services.common.messages import Keys, PollDef, decode_polldef, encode_polldef
from services.common.scripts import Scripts, close_partition

# A closed poll never reopens, even if a stale "open" races the close.
_OPEN = """
if redis.call('GET', KEYS[1]) == 'closed' then return 0 end
redis.call('SET', KEYS[1], 'open')
return 1
"""


async def publish_poll(redis: Redis, keys: Keys, pdef: PollDef) -> None:
    """Write the definition ingest and push read, and index the poll."""
    pipe = redis.pipeline(transaction=False)
    pipe.set(keys.poll_def(pdef.id), encode_polldef(pdef))
    pipe.sadd(keys.polls_index, pdef.id)
    await pipe.execute()


async def open_poll_redis(redis: Redis, keys: Keys, poll_id: str) -> int:
    """Let the vote script accept the poll on every partition. Returns partitions opened."""
    script = redis.register_script(_OPEN)
    opened = 0
    for p in range(keys.partitions):
        opened += int(await script(keys=[keys.state(p, poll_id)], args=[], client=redis))
    return opened


async def close_poll_redis(redis: Redis, keys: Keys, scripts: Scripts, poll_id: str) -> int:
    """Close on every partition, each with its close marker. Returns partitions newly closed."""
    closed = 0
    for p in range(keys.partitions):
        closed += await close_partition(redis, scripts, keys, p, poll_id)
    return closed


async def mark_final_redis(redis: Redis, keys: Keys, poll_id: str) -> PollDef | None:
    """Record in the poll's definition that PostgreSQL froze its result."""
    raw = await redis.get(keys.poll_def(poll_id))
    if raw is None:
        return None
    pdef = decode_polldef(raw if isinstance(raw, bytes) else raw.encode())
    if pdef.final and pdef.state == "closed":
        return pdef
    pdef = msgspec.structs.replace(pdef, state="closed", final=True)
    await redis.set(keys.poll_def(poll_id), encode_polldef(pdef))
    return pdef
