"""The gateway's answers at its edges, against real Redis and PostgreSQL: over-long URLs
and headers, empty bodies, the trailing newline, and the OpenAPI operation names."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.gateway.openapi import build
from tests.conftest import ADMIN_TOKEN
from tests.support.push import ADMIN_TOKEN as PUSH_ADMIN
from tests.support.push import push_settings, running_push

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def client(aiohttp_client: Any, settings: Any) -> TestClient:
    return await aiohttp_client(create_app(settings))


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    return [r for r in caplog.records if r.levelno == logging.WARNING]


async def test_an_over_long_poll_id_is_a_json_414_and_one_warning(
    aiohttp_client: Any, ingest_settings: Any, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    c = await client(aiohttp_client, ingest_settings)
    with caplog.at_level(logging.INFO):
        r = await c.get("/v1/polls/" + "p" * 10_000)
        assert r.status == 414
        assert r.content_type == "application/json"
        body = await r.json()
        assert (body["error"], body["field"]) == ("uri_too_long", "path")
    warnings = no_tracebacks(caplog)
    assert [w.getMessage() for w in warnings] == ["request refused: url too long"]


async def test_an_over_long_header_is_a_json_431_naming_it(
    aiohttp_client: Any, ingest_settings: Any, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    c = await client(aiohttp_client, ingest_settings)
    with caplog.at_level(logging.INFO):
        r = await c.get("/v1/openapi.json", headers={"X-Junk": "j" * 20_000})
        assert r.status == 431
        body = await r.json()
        assert (body["error"], body["field"]) == ("header_too_large", "X-Junk")
    assert len(no_tracebacks(caplog)) == 1


@pytest.mark.parametrize(
    ("headers", "status", "field"),
    [
        # Over the limit together, each under it: served.
        ({f"X-Part-{i}": "p" * 3000 for i in range(4)}, 200, None),
        # One of several over it: the one named.
        ({"X-Before": "b" * 3000, "X-Long": "l" * 9000, "X-After": "a"}, 431, "X-Long"),
        # Name and value together over it, each under it.
        ({"X-" + "n" * 4200: "v" * 4200}, 431, "X-" + "n" * 62),
    ],
)
async def test_the_header_limit_is_per_header(
    aiohttp_client: Any,
    ingest_settings: Any,
    redis: Any,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    c = await client(aiohttp_client, ingest_settings)
    r = await c.get("/v1/openapi.json", headers=headers)
    assert r.status == status
    if field is not None:
        assert (await r.json())["field"] == field


async def test_what_the_parser_refuses_is_one_warning_line_not_a_traceback(
    aiohttp_client: Any, ingest_settings: Any, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    c = await client(aiohttp_client, ingest_settings)
    with caplog.at_level(logging.INFO):
        r = await c.get("/v1/polls/" + "p" * 100_000)
        assert r.status == 400
        await r.read()
    warnings = no_tracebacks(caplog)
    assert [w.getMessage() for w in warnings] == ["malformed HTTP request refused"]


async def test_an_empty_body_says_so(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    c = await client(aiohttp_client, ingest_settings)
    r = await c.post(
        "/v1/admin/shows", data=b"", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert r.status == 400
    body = await r.json()
    assert (body["error"], body["field"]) == ("empty_body", "body")
    assert body["message"].startswith("empty body")


async def test_json_answers_end_with_a_newline(
    aiohttp_client: Any, ingest_settings: Any, pg: Any, redis: Any
) -> None:
    c = await client(aiohttp_client, ingest_settings)
    ok = await c.post("/v1/admin/shows", json={"name": "n"}, headers=ADMIN)
    refused = await c.post("/v1/admin/shows", json={"name": 3}, headers=ADMIN)
    missing = await c.get("/v1/polls/nope")
    health = await c.get("/healthz")
    assert [ok.status, refused.status, missing.status, health.status] == [201, 400, 404, 200]
    for r in (ok, refused, missing, health):
        raw = await r.read()
        assert raw.endswith(b"}\n") and not raw.endswith(b"\n\n"), raw


def test_every_operation_has_a_unique_operation_id_and_a_summary() -> None:
    ops = [op for item in build()["paths"].values() for op in item.values()]
    ids = [op.get("operationId") for op in ops]
    assert all(isinstance(i, str) and i[:1].islower() and i.isalnum() for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    assert all(op.get("summary") for op in ops)
    assert {"registerDevice", "castVote", "getPoll", "getTally", "createPoll", "closePoll"} <= set(
        ids
    )


async def test_push_json_answers_end_with_a_newline_and_ops_takes_named_operators(
    key_prefix: str, redis: Any
) -> None:
    token = "ops-" + uuid.uuid4().hex
    settings = push_settings(key_prefix, operator_tokens={"Maya": SecretStr(token)})
    async with running_push(settings) as push, aiohttp.ClientSession() as s:
        for path, headers, status in (
            ("/config.json", {}, 200),
            ("/v1/ops", {}, 401),
            ("/v1/ops", {"Authorization": f"Bearer {token}"}, 200),
            ("/v1/ops", {"Authorization": f"Bearer {PUSH_ADMIN}"}, 200),
            ("/healthz", {}, 200),
        ):
            async with s.get(push.http + path, headers=headers) as r:
                raw = await r.read()
                assert r.status == status, (path, raw)
                assert raw.endswith(b"}\n"), (path, raw)
