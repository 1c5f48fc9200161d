"""Show control for the producer: shows, polls, open, close, final results.

PostgreSQL holds the definitions; Redis gets what the vote path needs (the poll
definition and, per partition, the state the vote script checks atomically).
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from services.common.api import PollIn, ShowIn
from services.common.messages import OptionDef, PollDef
from services.common.polls import close_poll_redis, open_poll_redis, publish_poll
from services.ingest.gateway import audit
from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import json_response, read_body
from services.ingest.keys import KEYS, PG, REDIS, SCRIPTS, SETTINGS


class ShowOut(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: datetime


class PollOut(msgspec.Struct, frozen=True):
    id: str
    show_id: str
    title: str
    state: str
    options: list[OptionDef]
    max_votes_per_device: int | None
    max_count: int
    final: bool
    created_at: datetime
    opened_at: datetime | None
    closed_at: datetime | None
    max_votes_per_account: int | None = None
    archive_digest: str | None = None
    """SHA-256 of the poll's archived votes, once frozen with the result."""

    def to_def(self) -> PollDef:
        return PollDef(
            id=self.id,
            show_id=self.show_id,
            title=self.title,
            options=self.options,
            max_votes_per_device=self.max_votes_per_device,
            max_count=self.max_count,
            state=self.state,  # type: ignore[arg-type]
            final=self.final,
            max_votes_per_account=self.max_votes_per_account,
        )


class ResultOut(msgspec.Struct, frozen=True):
    poll: PollOut
    counts: dict[str, int]
    total: int
    final: bool
    finalized_at: datetime | None
    archive_digest: str | None = None
    """SHA-256 of the poll's archived votes (``buzzer audit export``), frozen with the
    result once the archive is complete; ``buzzer audit recount`` checks it."""


_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

_POLL_SQL = """
SELECT p.*, COALESCE(
    (SELECT json_agg(json_build_object('key', o.key, 'label', o.label) ORDER BY o.position)
       FROM options o WHERE o.poll_id = p.id), '[]') AS options_json
  FROM polls p
"""


def _poll(row: asyncpg.Record) -> PollOut:
    return PollOut(
        id=row["id"],
        show_id=row["show_id"],
        title=row["title"],
        state=row["state"],
        options=msgspec.json.decode(row["options_json"], type=list[OptionDef]),
        max_votes_per_device=row["max_votes_per_device"],
        max_count=row["max_count"],
        final=row["final"],
        created_at=row["created_at"],
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        max_votes_per_account=row["max_votes_per_account"],
        archive_digest=row["archive_digest"],
    )


def _is_id(value: str) -> bool:
    # Ids are slugs; anything else (a NUL byte, say, which PostgreSQL cannot even take as
    # text) names nothing, and must be a 404 rather than a database error.
    return _ID.fullmatch(value) is not None


async def fetch_poll_row(pool: asyncpg.Pool, poll_id: str) -> asyncpg.Record:
    if not _is_id(poll_id):
        raise ApiError(404, "poll_not_found", f"no poll {poll_id!r}", field="poll")
    row = await pool.fetchrow(_POLL_SQL + " WHERE p.id = $1", poll_id)
    if row is None:
        raise ApiError(404, "poll_not_found", f"no poll {poll_id!r}", field="poll")
    return row


async def fetch_poll(pool: asyncpg.Pool, poll_id: str) -> PollOut:
    return _poll(await fetch_poll_row(pool, poll_id))


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(5)


async def create_show(request: web.Request) -> web.Response:
    body = await read_body(request, ShowIn)
    pool: asyncpg.Pool = request.app[PG]
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                "INSERT INTO shows(id, name) VALUES ($1, $2) RETURNING *",
                body.id or _new_id("s"),
                body.name,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(409, "already_exists", f"show {body.id!r} exists", field="id") from exc
        assert row is not None
        await audit.record(conn, request, "create_show", row["id"], {"name": row["name"]})
    return json_response(ShowOut(id=row["id"], name=row["name"], created_at=row["created_at"]), 201)


async def list_shows(request: web.Request) -> web.Response:
    rows = await request.app[PG].fetch("SELECT * FROM shows ORDER BY created_at, id")
    shows = [ShowOut(id=r["id"], name=r["name"], created_at=r["created_at"]) for r in rows]
    return json_response({"shows": shows})


async def create_poll(request: web.Request) -> web.Response:
    body = await read_body(request, PollIn)
    keys_seen = [o.key for o in body.options]
    if len(set(keys_seen)) != len(keys_seen):
        raise ApiError(422, "duplicate_option", "option keys must be unique", field="options")
    poll_id = body.id or _new_id("p")
    pool: asyncpg.Pool = request.app[PG]
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM shows WHERE id = $1", body.show_id) is None:
            raise ApiError(404, "show_not_found", f"no show {body.show_id!r}", field="show_id")
        try:
            await conn.execute(
                "INSERT INTO polls(id, show_id, title, max_votes_per_device, max_count,"
                " max_votes_per_account) VALUES ($1, $2, $3, $4, $5, $6)",
                poll_id,
                body.show_id,
                body.title,
                body.max_votes_per_device,
                body.max_count,
                body.max_votes_per_account,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(409, "already_exists", f"poll {poll_id!r} exists", field="id") from exc
        await conn.executemany(
            "INSERT INTO options(poll_id, key, label, position) VALUES ($1, $2, $3, $4)",
            [(poll_id, o.key, o.label, i) for i, o in enumerate(body.options)],
        )
        await conn.executemany(
            "INSERT INTO totals(poll_id, option_key, count) VALUES ($1, $2, 0)",
            [(poll_id, o.key) for o in body.options],
        )
        await audit.record(
            conn,
            request,
            "create_poll",
            poll_id,
            {
                "show_id": body.show_id,
                "title": body.title,
                "options": [o.key for o in body.options],
            },
        )
    poll = await fetch_poll(pool, poll_id)
    await publish_poll(request.app[REDIS], request.app[KEYS], poll.to_def())
    return json_response(poll, 201)


async def list_polls(request: web.Request) -> web.Response:
    show = request.query.get("show_id")
    pool = request.app[PG]
    if show and not _is_id(show):
        rows = []
    elif show:
        rows = await pool.fetch(
            _POLL_SQL + " WHERE p.show_id = $1 ORDER BY p.created_at, p.id", show
        )
    else:
        rows = await pool.fetch(_POLL_SQL + " ORDER BY p.created_at, p.id")
    return json_response({"polls": [_poll(r) for r in rows]})


async def _transition(
    request: web.Request,
    action: str,
    *,
    source: str,
    refused: str,
    refusal: ApiError,
    sets: str,
    args: tuple[Any, ...] = (),
    converge: Callable[[str], Awaitable[object]],
) -> web.Response:
    """One guarded step of a poll's life, the shape of both open and close: a poll in
    state ``refused`` gets ``refusal``; one in ``source`` is changed by one UPDATE
    (``sets``; its own parameters from ``$3``, after the id and ``source``) that holds
    only while the state is still ``source``, so of two racing calls one changes it.
    Every call is audited as ``action``; then the poll's definition and ``converge``
    bring Redis in line."""
    app = request.app
    poll_id = request.match_info["poll"]
    pool = app[PG]
    poll = await fetch_poll(pool, poll_id)
    if poll.state == refused:
        raise refusal
    async with pool.acquire() as conn, conn.transaction():
        # Recorded also when repeated: the operator pressed it, and the log says it changed nothing.
        changed = (
            poll.state == source
            and await conn.execute(
                f"UPDATE polls SET {sets} WHERE id = $1 AND state = $2", poll_id, source, *args
            )
            == "UPDATE 1"
        )
        await audit.record(
            conn, request, action, poll_id, {"title": poll.title, "changed": changed}
        )
    poll = await fetch_poll(pool, poll_id)
    # Also on a repeated call: converges a previous call that failed half-way.
    await publish_poll(app[REDIS], app[KEYS], poll.to_def())
    await converge(poll_id)
    return json_response(poll)


async def open_poll(request: web.Request) -> web.Response:
    app = request.app
    return await _transition(
        request,
        "open_poll",
        source="draft",
        refused="closed",
        refusal=ApiError(409, "poll_closed", "a closed poll cannot be reopened", field="poll"),
        sets="state = 'open', opened_at = now(), partitions = $3",
        args=(app[SETTINGS].partitions,),
        converge=lambda poll_id: open_poll_redis(app[REDIS], app[KEYS], poll_id),
    )


async def close_poll(request: web.Request) -> web.Response:
    app = request.app
    return await _transition(
        request,
        "close_poll",
        source="open",
        refused="draft",
        refusal=ApiError(409, "poll_not_open", "a draft poll cannot be closed", field="poll"),
        sets="state = 'closed', closed_at = now()",
        converge=lambda poll_id: close_poll_redis(app[REDIS], app[KEYS], app[SCRIPTS], poll_id),
    )


async def _result(request: web.Request) -> ResultOut:
    pool = request.app[PG]
    row = await fetch_poll_row(pool, request.match_info["poll"])
    poll = _poll(row)
    rows = await pool.fetch("SELECT option_key, count FROM totals WHERE poll_id = $1", poll.id)
    got = {r["option_key"]: int(r["count"]) for r in rows}
    counts = {o.key: got.get(o.key, 0) for o in poll.options}
    return ResultOut(
        poll=poll,
        counts=counts,
        total=sum(counts.values()),
        final=poll.final,
        finalized_at=row["finalized_at"],
        archive_digest=row["archive_digest"],
    )


async def result_json(request: web.Request) -> web.Response:
    return json_response(await _result(request))


async def result_csv(request: web.Request) -> web.Response:
    res = await _result(request)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["poll_id", "option_key", "label", "count", "share", "final", "archive_digest"])
    labels: dict[str, Any] = {o.key: o.label for o in res.poll.options}
    for key, count in res.counts.items():
        share = f"{count / res.total:.6f}" if res.total else "0"
        w.writerow(
            [
                res.poll.id,
                key,
                labels[key],
                count,
                share,
                str(res.final).lower(),
                res.archive_digest or "",
            ]
        )
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{res.poll.id}.csv"'},
    )
