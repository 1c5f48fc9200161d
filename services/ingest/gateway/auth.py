"""Who is calling: a device (bearer device token) or a named operator (operator token);
and device registration, which binds a device to a viewer account when the app sends
the viewer's ID token (docs/guarantees.md, "One vote per viewer")."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from services.common.api import DeviceIn, DeviceIssued
from services.common.attest import AttestationError
from services.common.devices import device_key
from services.common.oidc import IdTokenError, KeysUnavailable, account_key
from services.common.redisconn import REDIS_AWAY
from services.common.tokens import Caller, InvalidToken, TokenService, bearer_token
from services.ingest.gateway.audit import OPERATOR
from services.ingest.gateway.errors import ApiError
from services.ingest.gateway.schemas import decode_body, json_response
from services.ingest.keys import (
    ATTESTATION,
    KEYS,
    OIDC,
    OPERATORS,
    REDIS,
    REGISTRATIONS,
    SETTINGS,
    TOKEN_SERVICE,
)

log = logging.getLogger("buzzer.gateway")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="buzzer"'}


def bearer(request: web.Request) -> str:
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        raise ApiError(
            401, "unauthorized", "missing bearer token", field="Authorization", headers=_CHALLENGE
        )
    return token


def caller_of(request: web.Request) -> Caller:
    """The device and account of the bearer device token, or a 401 (403 when the
    deployment requires an account and the token has none)."""
    app = request.app
    return caller_by(app[TOKEN_SERVICE], app[SETTINGS].require_account, request)


def caller_by(tokens: TokenService, require_account: bool, request: web.Request) -> Caller:
    """:func:`caller_of`, with what it reads of the app given (the vote path has it)."""
    header = request.headers.get("Authorization", "")
    # The header as apps send it, sliced here; any other spelling goes through bearer().
    if (
        header.startswith("Bearer ")
        and len(header) > 7
        and not header[7].isspace()
        and not header[-1].isspace()
    ):
        token = header[7:]
    else:
        token = bearer(request)
    try:
        caller = tokens.caller(token)
    except InvalidToken as exc:
        raise ApiError(
            401, "unauthorized", exc.reason, field="Authorization", headers=_CHALLENGE
        ) from exc
    if caller.account is None and require_account:
        # A token issued before the deployment required accounts: register again.
        raise ApiError(
            403,
            "account_required",
            "device token is not bound to an account",
            field="Authorization",
        )
    return caller


def device_of(request: web.Request) -> str:
    return caller_of(request).device


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


class JwksFetcher:
    """Fetches issuers' key sets for :class:`~services.common.oidc.OidcVerifier`, on the
    event loop; its session is made on first use, so nothing connects at start."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url, headers={"Accept": "application/json"}) as r:
                if r.status != 200:
                    raise KeysUnavailable(f"{url}: HTTP {r.status}")
                return await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KeysUnavailable(f"{url}: {exc!r}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _refused(request: web.Request, reason: str, exc: ApiError) -> ApiError:
    # By reason, never by source or account: those would be unbounded label values.
    request.app[REGISTRATIONS].labels(result=reason).inc()
    return exc


async def _count_registration(
    request: web.Request, what: str, name: str, limit: int, field: str
) -> None:
    """Refuse (429) the registration past ``limit`` per window of one account or one
    attested key (``what``: ``account`` or ``attested_key``)."""
    if limit <= 0:
        return
    settings = request.app[SETTINGS]
    key = f"{request.app[KEYS].prefix}:reg:{what}:{name}"
    try:
        pipe = request.app[REDIS].pipeline(transaction=True)
        pipe.incr(key)
        # NX: the window starts with the first registration and is not pushed back by
        # later ones, so a refused account gets in again when it ends.
        pipe.expire(key, settings.registration_window_s, nx=True)
        pipe.ttl(key)
        used, _, ttl = await pipe.execute()
    except REDIS_AWAY as exc:
        raise ApiError(
            503, "unavailable", "redis unavailable", headers={"Retry-After": "1"}
        ) from exc
    if int(used) > limit:
        raise _refused(
            request,
            f"{what}_limit",
            ApiError(
                429,
                "registration_limit",
                f"this {what.replace('_', ' ')} registered its {limit} devices for now",
                field=field,
                headers={"Retry-After": str(max(1, int(ttl)))},
            ),
        )


async def _account_of(request: web.Request, body: DeviceIn) -> str | None:
    settings = request.app[SETTINGS]
    if body.id_token is None:
        if settings.require_account:
            raise _refused(
                request,
                "account_required",
                ApiError(
                    401, "account_required", "this deployment needs an id_token", field="id_token"
                ),
            )
        return None
    verifier = request.app[OIDC]
    if not verifier.enabled:
        raise _refused(
            request,
            "accounts_off",
            ApiError(
                422,
                "accounts_not_enabled",
                "this deployment trusts no ID token issuer",
                field="id_token",
            ),
        )
    try:
        return (await verifier.verify(body.id_token, body.nonce)).id
    except IdTokenError as exc:
        raise _refused(
            request,
            "invalid_id_token",
            ApiError(401, "invalid_id_token", exc.reason, field="id_token"),
        ) from exc
    except KeysUnavailable as exc:
        log.warning("issuer keys unavailable", extra={"error": str(exc)})
        raise _refused(
            request,
            "issuer_unavailable",
            ApiError(
                503,
                "unavailable",
                "the ID token's issuer cannot be reached, retry",
                headers={"Retry-After": "5"},
            ),
        ) from exc


async def _attested_key_of(request: web.Request, body: DeviceIn) -> str | None:
    attestation = request.app[ATTESTATION]
    if not attestation.enabled:
        return None
    if body.platform is None:
        raise _refused(
            request,
            "invalid_attestation",
            ApiError(400, "invalid_field", "platform is required here", field="platform"),
        )
    try:
        evidence = base64.b64decode(body.attestation, validate=True) if body.attestation else None
    except ValueError as exc:
        raise ApiError(
            400, "invalid_field", "attestation must be base64", field="attestation"
        ) from exc
    # The challenge is the app's nonce, also bound into its ID token: an attestation
    # replayed with another registration names the same key, which the per-key limit
    # then counts.
    challenge = (body.nonce or "").encode()
    try:
        key = await attestation.check(body.platform, body.key_id, evidence, challenge)
    except AttestationError as exc:
        raise _refused(
            request,
            "invalid_attestation",
            ApiError(401, "invalid_attestation", exc.reason, field="attestation"),
        ) from exc
    return None if key is None else f"{key.platform}:{key.key_id}"


def client_address(request: web.Request) -> str:
    peer = request.remote or ""
    if peer in request.app[SETTINGS].trusted_proxies:
        # Only the hop our own proxy appended is trustworthy; earlier ones are the client's.
        last = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
        if last:
            return last
    return peer


async def _record_device(
    request: web.Request, device: str, account: str | None, expires_at: int
) -> None:
    """Who registered the device, from where: what ``buzzer audit devices`` reports. Kept
    as long as the token is valid; a device's votes outlive it only in the archive."""
    key = device_key(request.app[KEYS], device)
    try:
        pipe = request.app[REDIS].pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "account": account or "",
                "source": client_address(request),
                "at": int(time.time()),
            },
        )
        pipe.expireat(key, expires_at)
        await pipe.execute()
    except REDIS_AWAY as exc:
        raise ApiError(
            503, "unavailable", "redis unavailable", headers={"Retry-After": "1"}
        ) from exc


async def post_device(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    raw = await request.read()
    # An empty body is an anonymous device, as before accounts existed.
    body = decode_body(raw, request.content_type, DeviceIn) if raw.strip() else DeviceIn()
    account = await _account_of(request, body)
    attested = await _attested_key_of(request, body)
    if account is not None:
        await _count_registration(
            request, "account", account_key(account), settings.registrations_per_account, "id_token"
        )
    if attested is not None:
        await _count_registration(
            request,
            "attested_key",
            account_key(attested),
            settings.registrations_per_attested_key,
            "attestation",
        )
    issued = app[TOKEN_SERVICE].issue(account=account)
    await _record_device(request, issued.device_id, account, issued.expires_at)
    app[REGISTRATIONS].labels(result="account" if account else "anonymous").inc()
    return json_response(
        DeviceIssued(device_id=issued.device_id, token=issued.token, expires_at=issued.expires_at),
        201,
    )
