"""A real local stack for end-to-end tests: processes started as `buzzer up` starts
them, isolated by Redis key prefix and database, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from buzzer.ports import free_ports
from buzzer.stack import Stack
from tests.conftest import REDIS_URL
from tests.support import delete_prefix
from tests.support.tally import migrated_database


@dataclass
class RunningStack:
    stack: Stack
    env: dict[str, str]
    prefix: str
    dsn: str
    admin: str

    @property
    def ingest_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.stack.ingest_ports]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.stack.http_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}


@contextlib.contextmanager
def local_stack(
    tmp_path: Path,
    *,
    database: str,
    ingest: int = 2,
    haproxy: bool = False,
    push: bool = False,
    extra_env: dict[str, str] | None = None,
    database_url: Callable[[str], str] | None = None,
) -> Iterator[RunningStack]:
    """A stack on a database of its own, named ``database`` plus a suffix unique to this
    call and dropped afterwards: a test never finds another's rows, nor depends on a
    database another test happened to make first. ``database_url`` gives the processes'
    ``DATABASE_URL`` for that name, where they reach PostgreSQL some other way."""
    with migrated_database(database) as dsn:
        prefix = f"e{uuid.uuid4().hex[:10]}"
        admin = uuid.uuid4().hex
        env = {
            **os.environ,
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": dsn,
            "BUZZER_KEY_PREFIX": prefix,
            "BUZZER_ADMIN_TOKEN": admin,
            "BUZZER_TOKEN_SECRET": uuid.uuid4().hex * 2,
            "BUZZER_STATE_DIR": str(tmp_path / "state"),
            **(extra_env or {}),
        }
        if database_url is not None:
            env["DATABASE_URL"] = database_url(dsn.rsplit("/", 1)[1])
        base = free_ports(ingest + 6)
        stack = Stack(
            env=env,
            http_port=base,
            https_port=base + ingest + 1,
            ingest=ingest,
            haproxy=haproxy,
            state_dir=tmp_path / "state",
            ingest_base_port=base + ingest + 2 if haproxy else base,
            tally_port=base + 2 * ingest + 2 if haproxy else base + ingest + 2,
            push_port=base + 2 * ingest + 3 if haproxy else base + ingest + 3,
            stats_port=base + 2 * ingest + 4 if haproxy else base + ingest + 4,
            with_push=push,
        )
        stack.plan()
        try:
            stack.start()
            yield RunningStack(stack=stack, env=env, prefix=prefix, dsn=dsn, admin=admin)
        finally:
            stack.stop()
            asyncio.run(_cleanup(prefix))


async def _cleanup(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        await delete_prefix(client, prefix)
    finally:
        await client.aclose()


async def api(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json: Any = None,
    expect: int = 200,
) -> Any:
    async with session.request(method, url, headers=headers, json=json) as r:
        body = await r.json()
        assert r.status == expect, (r.status, body)
        return body


async def create_open_poll(
    session: aiohttp.ClientSession, rs: RunningStack, options: int = 8, **rules: Any
) -> dict[str, Any]:
    base = rs.ingest_urls[0]
    show = await api(
        session,
        "POST",
        f"{base}/v1/admin/shows",
        headers=rs.admin_headers,
        json={"name": "e2e"},
        expect=201,
    )
    poll = await api(
        session,
        "POST",
        f"{base}/v1/admin/polls",
        headers=rs.admin_headers,
        json={
            "show_id": show["id"],
            "title": "e2e",
            "options": [{"key": f"o{i}", "label": f"Option {i}"} for i in range(options)],
            "max_votes_per_device": None,
            "max_count": 100,
            **rules,
        },
        expect=201,
    )
    return dict(
        await api(
            session, "POST", f"{base}/v1/admin/polls/{poll['id']}/open", headers=rs.admin_headers
        )
    )
