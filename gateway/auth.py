"""Who is calling: a device (bearer device token) or the operator (admin token)."""

from __future__ import annotations

import hmac

from aiohttp import web
from pydantic import SecretStr

from gateway.errors import ApiError
from gateway.schemas import DeviceIssued, json_response
from gateway.tokens import InvalidToken, TokenService

TOKEN_SERVICE = web.AppKey("token_service", TokenService)
ADMIN_TOKEN = web.AppKey("admin_token", SecretStr)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="buzzer"'}


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401, "unauthorized", "missing bearer token", field="Authorization", headers=_CHALLENGE
        )
    return token.strip()


def device_of(request: web.Request) -> str:
    try:
        return request.app[TOKEN_SERVICE].verify(bearer(request))
    except InvalidToken as exc:
        raise ApiError(
            401, "unauthorized", exc.reason, field="Authorization", headers=_CHALLENGE
        ) from exc


def check_admin(request: web.Request) -> None:
    given = bearer(request).encode()
    expected = request.app[ADMIN_TOKEN].get_secret_value().encode()
    # Constant time, so the token cannot be guessed byte by byte from timings.
    if not hmac.compare_digest(given, expected):
        raise ApiError(401, "unauthorized", "invalid admin token", field="Authorization",
                       headers=_CHALLENGE)


async def post_device(request: web.Request) -> web.Response:
    issued = request.app[TOKEN_SERVICE].issue()
    return json_response(
        DeviceIssued(device_id=issued.device_id, token=issued.token, expires_at=issued.expires_at),
        201,
    )
