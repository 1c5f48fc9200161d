"""The audit log: every admin action with the operator who did it, in PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import json_response
from services.ingest.keys import PG

OPERATOR = web.RequestKey("operator", str)
"""Set by the admin check: the name of the operator calling."""

MAX_LIMIT = 500


class AuditEntry(msgspec.Struct, frozen=True):
    id: int
    at: datetime
    operator: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditPage(msgspec.Struct, frozen=True):
    entries: list[AuditEntry]


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    request: web.Request,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """One row; pass the connection of the action's own transaction."""
    await conn.execute(
        "INSERT INTO audit_log(operator, action, target, detail) VALUES ($1, $2, $3, $4::jsonb)",
        request[OPERATOR],
        action,
        target,
        msgspec.json.encode(detail or {}).decode(),
    )


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 50
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LIMIT:
        raise ApiError(
            400, "invalid_field", f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit"
        )
    return n


async def list_audit(request: web.Request) -> web.Response:
    limit = _limit(request.query.get("limit"))
    rows = await request.app[PG].fetch(
        "SELECT id, at, operator, action, target, detail::text AS detail"
        " FROM audit_log ORDER BY at DESC, id DESC LIMIT $1",
        limit,
    )
    entries = [
        AuditEntry(
            id=r["id"],
            at=r["at"],
            operator=r["operator"],
            action=r["action"],
            target=r["target"],
            detail=msgspec.json.decode(r["detail"]),
        )
        for r in rows
    ]
    return json_response(AuditPage(entries=entries))
