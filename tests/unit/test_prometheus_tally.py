"""The tally's vote-to-publication histogram, which the vote-to-screen alert reads:
each update observes its oldest vote's age since ingest received it, once."""

from __future__ import annotations

import time

import pytest

from services.tally.service import Tally
from tests.support.tally import TallyEnv, cast_vote, create_poll

pytestmark = pytest.mark.integration


def observed(tally: Tally) -> tuple[float, float]:
    """(count, sum) of buzzer_tally_vote_to_publish_seconds."""
    hist = tally.publisher.metrics.vote_to_publish
    samples = {s.name: s.value for m in hist.collect() for s in m.samples}
    return samples["buzzer_tally_vote_to_publish_seconds_count"], samples[
        "buzzer_tally_vote_to_publish_seconds_sum"
    ]


async def test_an_update_observes_its_oldest_vote_once(env: TallyEnv) -> None:
    pdef = await create_poll(env, options=2)
    now_ms = int(time.time() * 1000)
    # Two votes in one partition, received 3 s and 1 s ago: one batch, one update.
    for age_ms in (3000, 1000):
        await cast_vote(env, pdef.id, "opt0", partition=0, recv_ts=now_ms - age_ms)
    tally = env.tally()
    await tally.consumer.ensure_groups()
    reader = tally.consumer.readers[0]
    entries = await reader.read_new(100, None)
    assert len(entries) == 2
    await tally.consumer.apply(0, entries)
    assert tally.publisher.dirty == {pdef.id}

    await tally.publisher.publish_due()
    count, total = observed(tally)
    assert count == 1
    # The oldest vote's age at publication: at least its 3 s, not the newer one's 1 s.
    assert total >= 3.0

    # A later update without new votes observes nothing more.
    tally.publisher.mark({pdef.id: None})
    await env.redis.delete(env.keys.publish_gate(pdef.id))
    await tally.publisher.publish_due()
    assert observed(tally)[0] == 1
