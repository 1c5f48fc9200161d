"""Named operators and the audit log, against real Redis and PostgreSQL: each admin
action is attributed to the operator whose token made it, and a token rotated in the
operators file is refused or accepted from the next request, with no restart."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from buzzer.secretfile import write_secret
from services.ingest.app import create_app

pytestmark = pytest.mark.integration

ALICE = "alice-" + uuid.uuid4().hex
BOB = "bob-" + uuid.uuid4().hex


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def client_with(aiohttp_client: Any, settings: Any, **update: Any) -> TestClient:
    return await aiohttp_client(create_app(settings.model_copy(update=update)))


async def post(
    client: TestClient, path: str, token: str, body: Any = None, expect: int = 200
) -> Any:
    r = await client.post(path, json=body, headers=bearer(token))
    assert r.status == expect, await r.text()
    return await r.json()


async def audit(client: TestClient, token: str, query: str = "") -> list[dict[str, Any]]:
    r = await client.get(f"/v1/admin/audit{query}", headers=bearer(token))
    assert r.status == 200, await r.text()
    return (await r.json())["entries"]


async def new_poll(client: TestClient, token: str) -> Any:
    """A draft poll titled ``t`` in a new show."""
    show = await post(client, "/v1/admin/shows", token, {"name": "s"}, 201)
    options = [{"key": "a", "label": "A"}, {"key": "b", "label": "B"}]
    body = {"show_id": show["id"], "title": "t", "options": options}
    return await post(client, "/v1/admin/polls", token, body, 201)


async def test_each_action_is_attributed_to_its_operator(
    aiohttp_client: Any, ingest_settings: Any, pg: asyncpg.Connection, redis: Any
) -> None:
    client = await client_with(
        aiohttp_client,
        ingest_settings,
        operator_tokens={"alice": SecretStr(ALICE), "bob": SecretStr(BOB)},
    )
    show = await post(client, "/v1/admin/shows", ALICE, {"name": "Saturday night"}, 201)
    poll = await post(
        client,
        "/v1/admin/polls",
        BOB,
        {
            "show_id": show["id"],
            "title": "Best act",
            "options": [{"key": "a", "label": "A"}, {"key": "b", "label": "B"}],
        },
        201,
    )
    await post(client, f"/v1/admin/polls/{poll['id']}/open", ALICE)
    await post(client, f"/v1/admin/polls/{poll['id']}/close", BOB)
    # Refused actions change nothing, and so are not in the log.
    await post(client, "/v1/admin/shows", ALICE, {"id": show["id"], "name": "again"}, 409)
    await post(client, f"/v1/admin/polls/{poll['id']}/open", BOB, expect=409)

    entries = await audit(client, BOB)
    assert [(e["operator"], e["action"], e["target"]) for e in entries] == [
        ("bob", "close_poll", poll["id"]),
        ("alice", "open_poll", poll["id"]),
        ("bob", "create_poll", poll["id"]),
        ("alice", "create_show", show["id"]),
    ]
    assert entries[0]["detail"] == {"title": "Best act", "changed": True}
    assert entries[2]["detail"]["options"] == ["a", "b"]
    assert entries[3]["detail"] == {"name": "Saturday night"}
    assert all(e["at"] for e in entries)
    assert [e["action"] for e in await audit(client, ALICE, "?limit=2")] == [
        "close_poll",
        "open_poll",
    ]
    # The rows are PostgreSQL's, not the process's memory.
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE operator = 'alice'") == 2


async def test_a_repeated_open_is_logged_as_changing_nothing(
    aiohttp_client: Any, ingest_settings: Any, pg: asyncpg.Connection, redis: Any
) -> None:
    client = await client_with(aiohttp_client, ingest_settings, admin_token=SecretStr(ALICE))
    poll = await new_poll(client, ALICE)
    await post(client, f"/v1/admin/polls/{poll['id']}/open", ALICE)
    await post(client, f"/v1/admin/polls/{poll['id']}/open", ALICE)
    entries = await audit(client, ALICE)
    # BUZZER_ADMIN_TOKEN is the operator named "admin".
    assert [(e["operator"], e["action"], e["detail"]) for e in entries[:2]] == [
        ("admin", "open_poll", {"title": "t", "changed": False}),
        ("admin", "open_poll", {"title": "t", "changed": True}),
    ]


async def test_a_refused_transition_changes_and_logs_nothing(
    aiohttp_client: Any, ingest_settings: Any, pg: asyncpg.Connection, redis: Any
) -> None:
    client = await client_with(aiohttp_client, ingest_settings, admin_token=SecretStr(ALICE))
    poll = await new_poll(client, ALICE)
    url = f"/v1/admin/polls/{poll['id']}"
    refused = await post(client, f"{url}/close", ALICE, expect=409)
    assert (refused["error"], refused["field"]) == ("poll_not_open", "poll")
    opened = await post(client, f"{url}/open", ALICE)
    assert opened["state"] == "open" and opened["opened_at"] is not None
    closed = await post(client, f"{url}/close", ALICE)
    assert closed["state"] == "closed" and closed["closed_at"] is not None
    assert (await post(client, f"{url}/close", ALICE))["closed_at"] == closed["closed_at"]
    refused = await post(client, f"{url}/open", ALICE, expect=409)
    assert (refused["error"], refused["field"]) == ("poll_closed", "poll")
    row = await pg.fetchrow("SELECT state, partitions FROM polls WHERE id = $1", poll["id"])
    assert (row["state"], row["partitions"]) == ("closed", ingest_settings.partitions)
    entries = await audit(client, ALICE)
    assert [(e["action"], e["detail"]["changed"]) for e in entries[:3]] == [
        ("close_poll", False),
        ("close_poll", True),
        ("open_poll", True),
    ]


@pytest.mark.parametrize("limit", ["0", "501", "ten", "-1"])
async def test_a_bad_limit_is_a_400_naming_it(
    aiohttp_client: Any, ingest_settings: Any, pg: asyncpg.Connection, redis: Any, limit: str
) -> None:
    client = await client_with(aiohttp_client, ingest_settings, admin_token=SecretStr(ALICE))
    r = await client.get(f"/v1/admin/audit?limit={limit}", headers=bearer(ALICE))
    assert r.status == 400
    assert (await r.json())["field"] == "limit"


def reload_errors(caplog: pytest.LogCaptureFixture) -> str:
    return " ".join(getattr(r, "error", "") for r in caplog.records if r.name == "buzzer.tokens")


async def test_operators_file_rotates_without_a_restart(
    aiohttp_client: Any,
    ingest_settings: Any,
    pg: asyncpg.Connection,
    redis: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_secret(tmp_path / "operators.json", json.dumps({"carol": ALICE}))
    client = await client_with(aiohttp_client, ingest_settings, operator_tokens_file=path)
    await post(client, "/v1/admin/shows", ALICE, {"name": "before"}, 201)

    write_secret(path, json.dumps({"carol": BOB, "dave": ALICE[::-1]}))
    r = await client.get("/v1/admin/shows", headers=bearer(ALICE))
    assert r.status == 401
    await post(client, "/v1/admin/shows", BOB, {"name": "after"}, 201)
    await post(client, "/v1/admin/shows", ALICE[::-1], {"name": "new operator"}, 201)
    assert [(e["operator"], e["detail"]["name"]) for e in await audit(client, BOB)] == [
        ("dave", "new operator"),
        ("carol", "after"),
        ("carol", "before"),
    ]

    # A file others may read, or a half-written one, is not taken: the last good set stays.
    with caplog.at_level(logging.WARNING, logger="buzzer.tokens"):
        path.write_text(json.dumps({"eve": "e" * 32}))
        os.chmod(path, 0o644)
        assert (await client.get("/v1/admin/shows", headers=bearer("e" * 32))).status == 401
        assert (await client.get("/v1/admin/shows", headers=bearer(BOB))).status == 200
        assert "must be 600" in reload_errors(caplog)
        write_secret(path, "{not json")
        assert (await client.get("/v1/admin/shows", headers=bearer(BOB))).status == 200
        assert "not a JSON object" in reload_errors(caplog)
    # And a revoked token is refused: the file is the list of who may act.
    write_secret(path, json.dumps({"dave": ALICE[::-1]}))
    assert (await client.get("/v1/admin/shows", headers=bearer(BOB))).status == 401


def test_a_group_readable_operators_file_stops_the_start(
    tmp_path: Path, ingest_settings: Any
) -> None:
    from services.common.tokens import OperatorFileError

    path = tmp_path / "operators.json"
    path.write_text(json.dumps({"carol": ALICE}))
    os.chmod(path, 0o640)
    with pytest.raises(OperatorFileError, match="must be 600"):
        create_app(ingest_settings.model_copy(update={"operator_tokens_file": path}))
