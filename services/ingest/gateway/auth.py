"""Who is calling: a device (bearer device token) or a named operator (operator token)."""

from __future__ import annotations

import logging

from aiohttp import web

from services.common.api import DeviceIssued
from services.common.tokens import InvalidToken, bearer_token
from services.ingest.gateway.audit import OPERATOR
from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import json_response
from services.ingest.keys import OPERATORS, TOKEN_SERVICE

log = logging.getLogger("buzzer.gateway")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="buzzer"'}


def bearer(request: web.Request) -> str:
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        raise ApiError(
            401, "unauthorized", "missing bearer token", field="Authorization", headers=_CHALLENGE
        )
    return token


def device_of(request: web.Request) -> str:
    try:
        return request.app[TOKEN_SERVICE].verify(bearer(request))
    except InvalidToken as exc:
        raise ApiError(
            401, "unauthorized", exc.reason, field="Authorization", headers=_CHALLENGE
        ) from exc


def check_admin(request: web.Request) -> str:
    """The name of the operator calling (also kept as ``request[OPERATOR]``), or a 401."""
    name = request.app[OPERATORS].operator(bearer(request))
    if name is None:
        # A line for on-call, not an audit row: unauthenticated callers must not be able
        # to write to the database.
        log.warning(
            "admin token refused",
            extra={"path": request.path, "method": request.method, "remote": request.remote},
        )
        raise ApiError(
            401, "unauthorized", "invalid admin token", field="Authorization", headers=_CHALLENGE
        )
    request[OPERATOR] = name
    return name


async def post_device(request: web.Request) -> web.Response:
    issued = request.app[TOKEN_SERVICE].issue()
    return json_response(
        DeviceIssued(device_id=issued.device_id, token=issued.token, expires_at=issued.expires_at),
        201,
    )
