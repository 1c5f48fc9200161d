"""``GET /v1/polls/{poll}/votes/{vote_id}``: was my vote counted? Only to its device."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.common.db import LazyPool
from services.common.settings import TallySettings
from services.ingest.app import create_app
from services.tally.metrics import TallyMetrics
from services.tally.service import Tally
from tests.conftest import REDIS_URL
from tests.integration.test_ingest_api import device, expect_error, new_poll

pytestmark = pytest.mark.integration


async def _archive_everything(redis: Any, pg_dsn: str, prefix: str) -> None:
    settings = TallySettings(
        redis_url=REDIS_URL,
        database_url=SecretStr(pg_dsn),
        key_prefix=prefix,
        partitions=4,
        consumer="archiver-test",
    )
    pg = LazyPool(pg_dsn, 2)
    tally = Tally(redis, pg, settings, TallyMetrics(CollectorRegistry()))
    try:
        await tally.archiver.ensure_groups()
        for p in range(4):
            while entries := await tally.archiver.readers[p].read_new(1000, None):
                await tally.archiver.handle(p, entries)
    finally:
        await pg.close()


async def test_my_vote_accepted_then_archived_and_nobody_elses(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any, pg_dsn: str
) -> None:
    client = await aiohttp_client(create_app(ingest_settings))
    poll = (await new_poll(client, max_votes_per_device=None, max_count=5))["id"]
    mine, theirs = await device(client), await device(client)
    vote_id = str(uuid.uuid4())
    r = await client.post(
        f"/v1/polls/{poll}/votes",
        json={"option": "o2", "count": 3, "vote_id": vote_id},
        headers=mine,
    )
    assert r.status == 202, await r.text()
    url = f"/v1/polls/{poll}/votes/{vote_id}"

    # Accepted, not archived yet: answered from the vote's own record in Redis.
    r = await client.get(url, headers=mine)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body == {
        "vote_id": vote_id,
        "poll": poll,
        "accepted": True,
        "archived": False,
        "option": "o2",
        "count": 3,
        "received_at": None,
    }
    # Another device asking about it learns nothing.
    await expect_error(await client.get(url, headers=theirs), 404, "vote_not_found", "vote_id")

    await _archive_everything(redis, pg_dsn, ingest_settings.key_prefix)
    r = await client.get(url, headers=mine)
    assert r.status == 200
    body = await r.json()
    assert body["archived"] is True and body["accepted"] is True
    assert (body["option"], body["count"]) == ("o2", 3)
    assert isinstance(body["received_at"], int) and body["received_at"] > 0
    await expect_error(await client.get(url, headers=theirs), 404, "vote_not_found", "vote_id")


async def test_unknown_malformed_and_anonymous_vote_ids(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await aiohttp_client(create_app(ingest_settings))
    poll = (await new_poll(client))["id"]
    mine = await device(client)
    unknown = f"/v1/polls/{poll}/votes/{uuid.uuid4()}"
    await expect_error(await client.get(unknown, headers=mine), 404, "vote_not_found", "vote_id")
    await expect_error(
        await client.get(f"/v1/polls/{poll}/votes/not-a-uuid", headers=mine),
        400,
        "invalid_field",
        "vote_id",
    )
    await expect_error(await client.get(unknown), 401, "unauthorized", "Authorization")


async def test_the_route_is_documented(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    client = await aiohttp_client(create_app(ingest_settings))
    doc = await (await client.get("/v1/openapi.json")).json()
    op = doc["paths"]["/v1/polls/{poll}/votes/{vote_id}"]["get"]
    assert op["security"] == [{"device": []}]
    assert {"200", "404", "401", "400"} <= set(op["responses"])
    assert "VoteStatus" in doc["components"]["schemas"]
