"""Every refusal is a JSON body that names the field and the reason."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import asyncpg
import msgspec
from aiohttp import web

from services.common.api import ErrorBody
from services.common.redisconn import REDIS_AWAY

log = logging.getLogger("buzzer.gateway")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, message=message, field=field)
        self.headers = dict(headers or {})


_encoder = msgspec.json.Encoder()

# aiohttp's own refusals (no route, wrong method, body too large) get codes too.
_HTTP_CODES = {
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "method not allowed on this resource"),
    413: ("body_too_large", "request body is too large"),
}


def error_response(err: ApiError) -> web.Response:
    return web.Response(
        status=err.status,
        body=_encoder.encode(err.body) + b"\n",
        content_type="application/json",
        headers=err.headers,
    )


_STORE_AWAY = (
    *REDIS_AWAY,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # PostgreSQL restarting or failing over (57P03, 57P01), out of connections (53300):
    # what RDS says during a failover or a connection storm.
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    # Refused at connect: no such database, wrong role or password. The deployment is
    # wrong, not the request: the operator reads why in the log's warning.
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
)
"""Errors of a backing store that is away, rather than of the request or of our code."""


def as_response(exc: BaseException, request: web.Request) -> web.StreamResponse:
    """The JSON answer for an exception a handler raised; re-raises what is not ours."""
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            raise exc
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        field = "body" if exc.status == 413 else None
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(ApiError(exc.status, code, message, field=field, headers=headers))
    if isinstance(exc, _STORE_AWAY):
        # A store that is away is the client's cue to retry, never a 500.
        log.warning("store unavailable", extra={"path": request.path, "error": str(exc)[:200]})
        return error_response(
            ApiError(
                503,
                "unavailable",
                "a backing store is unavailable, retry",
                headers={"Retry-After": "1"},
            )
        )
    if not isinstance(exc, Exception):
        raise exc  # cancellation and exits are not errors of the request
    log.error(
        "unhandled error", exc_info=exc, extra={"path": request.path, "method": request.method}
    )
    return error_response(ApiError(500, "internal", "internal error"))
