"""Who is calling: a device (bearer device token) or the operator (admin token)."""

from __future__ import annotations

from aiohttp import web

from services.common.api import DeviceIssued
from services.common.tokens import InvalidToken, admin_token_matches, bearer_token
from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import json_response
from services.ingest.keys import ADMIN_TOKEN, TOKEN_SERVICE

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


def check_admin(request: web.Request) -> None:
    if not admin_token_matches(bearer(request), request.app[ADMIN_TOKEN]):
        raise ApiError(
            401, "unauthorized", "invalid admin token", field="Authorization", headers=_CHALLENGE
        )


async def post_device(request: web.Request) -> web.Response:
    issued = request.app[TOKEN_SERVICE].issue()
    return json_response(
        DeviceIssued(device_id=issued.device_id, token=issued.token, expires_at=issued.expires_at),
        201,
    )
