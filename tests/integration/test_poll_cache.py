"""Ingest's cache of poll definitions against the real Redis: the in-place lookup the
vote path makes first agrees with the loading one, and expires with it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common.messages import Keys, OptionDef, PollDef, encode_polldef
from services.ingest.monitor import MISSING, PollCache

pytestmark = pytest.mark.integration


def polldef(poll: str) -> PollDef:
    return PollDef(
        id=poll,
        show_id="s1",
        title="t",
        options=[OptionDef("a", "A")],
        max_votes_per_device=1,
        max_count=1,
        state="open",
    )


async def test_cached_answers_what_get_loaded_until_it_is_stale(redis: Any, keys: Keys) -> None:
    cache = PollCache(redis, keys, ttl=0.2)
    await redis.set(keys.poll_def("p1"), encode_polldef(polldef("p1")))
    # Nothing loaded yet: the vote path must go on to get().
    assert cache.cached("p1") is MISSING
    assert cache.cached("nope") is MISSING

    assert await cache.get("p1") == polldef("p1")
    assert await cache.get("nope") is None
    assert cache.cached("p1") == polldef("p1")
    # An unknown poll is cached too (as None), so unknown ids stay cheap.
    assert cache.cached("nope") is None

    await asyncio.sleep(0.3)
    assert cache.cached("p1") is MISSING
    assert cache.cached("nope") is MISSING
