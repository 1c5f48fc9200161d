"""Who is calling: device tokens and the admin token, for ingest and push alike.

Device tokens are HMAC-signed JWTs (HS256) with expiry, audience and a key id.
Rotation: new tokens are signed with the current secret; verification also accepts
the previous secrets (found by ``kid``) until they are removed from the settings.

Nothing here knows aiohttp: each process turns a refusal into its own response.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
from pydantic import SecretStr


class InvalidToken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _kid(secret: str) -> str:
    # A fingerprint, not the secret: lets verification pick the key without trying all.
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    device_id: str
    expires_at: int


class TokenService:
    def __init__(
        self,
        secret: SecretStr,
        previous: Sequence[SecretStr] = (),
        audience: str = "buzzer-vote",
        ttl_s: int = 30 * 24 * 3600,
        cache_size: int = 100_000,
    ) -> None:
        self._secret = secret.get_secret_value()
        self._kid = _kid(self._secret)
        self._keys = {_kid(s.get_secret_value()): s.get_secret_value() for s in previous}
        self._keys[self._kid] = self._secret
        self._audience = audience
        self._ttl = ttl_s
        # Verified tokens are cached (token -> (device, exp)): a device votes many
        # times, and the signature check is the costliest step of a vote.
        self._cache: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, now: float | None = None) -> IssuedToken:
        iat = int(time.time() if now is None else now)
        device = uuid.uuid4().hex
        exp = iat + self._ttl
        claims = {"sub": device, "aud": self._audience, "iat": iat, "exp": exp}
        token = jwt.encode(claims, self._secret, algorithm="HS256", headers={"kid": self._kid})
        return IssuedToken(token=token, device_id=device, expires_at=exp)

    def verify(self, token: str, now: float | None = None) -> str:
        """The device id of a valid token; raises :class:`InvalidToken` otherwise."""
        t = time.time() if now is None else now
        hit = self._cache.get(token)
        if hit is not None:
            device, exp = hit
            if exp > t:
                return device
            del self._cache[token]
            raise InvalidToken("token expired")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidToken("token signed with an unknown key")
            claims = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                audience=self._audience,
                options={"require": ["sub", "exp", "aud"], "verify_exp": False},
            )
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("token is for another audience") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("token signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("token is malformed") from exc
        exp = claims["exp"]
        device = claims["sub"]
        if not isinstance(exp, int) or not isinstance(device, str):
            raise InvalidToken("token is malformed")
        if exp <= t:
            raise InvalidToken("token expired")
        self._cache[token] = (device, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return device


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def admin_token_matches(given: str, admin_token: SecretStr) -> bool:
    """The one admin-token check of every process and route."""
    # Constant time, so the token cannot be guessed byte by byte from timings.
    return hmac.compare_digest(given.encode(), admin_token.get_secret_value().encode())
