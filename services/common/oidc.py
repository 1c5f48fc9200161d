"""Who the viewer is: OpenID Connect ID tokens from the configured issuers, verified.

Each issuer's keys come from its JWKS URL and are cached. An ID token signed with a key
id the cache does not know makes one refetch (the issuer rotated its keys), but at most
one per ``min_refetch_s`` per issuer: otherwise anyone could make us hammer the
issuer with made-up key ids.

Only asymmetric algorithms are accepted, and only the one that fits the key's type:
``none`` and every HMAC algorithm are refused before any key is looked at, so a token
"signed" with the issuer's public key as an HMAC secret (HS/RS confusion) never reaches
a verification that could accept it.

Nothing here knows aiohttp: the caller passes the coroutine that fetches a JSON
document, so the event loop never blocks on a fetch.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import PyJWKError
from pydantic import BaseModel, Field, field_validator

FetchJson = Callable[[str], Awaitable[Any]]
"""Fetches a URL and returns its decoded JSON; raises :class:`KeysUnavailable` if it can't."""

# The key type each asymmetric algorithm family needs (RFC 7518 section 6.1).
_KTY_OF = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
ASYMMETRIC: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class OidcIssuer(BaseModel, frozen=True):
    """One issuer a deployment trusts (an item of ``BUZZER_OIDC_ISSUERS``)."""

    issuer: str = Field(min_length=1)
    """The ``iss`` its ID tokens carry, exactly."""
    audience: str = Field(min_length=1)
    """The client id of the broadcaster's app at that issuer: the ``aud`` required."""
    jwks_url: str = Field(min_length=1)
    algorithms: tuple[str, ...] = ("RS256", "ES256")

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in value if a not in ASYMMETRIC]
        if bad or not value:
            raise ValueError(f"algorithms must be asymmetric ({sorted(ASYMMETRIC)}), not {bad}")
        return value


class IdTokenError(Exception):
    """The ID token is refused; ``reason`` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(Exception):
    """The issuer's JWKS could not be fetched: not the client's fault, retry later."""


@dataclass(frozen=True, slots=True)
class Account:
    issuer: str
    subject: str

    @property
    def id(self) -> str:
        """What a device token carries: unique over all issuers (``iss`` has no spaces)."""
        return f"{self.issuer} {self.subject}"


def account_key(account: str) -> str:
    """A fixed-length form of an account id for Redis keys and partitioning: a ``sub``
    may be long and hold any character."""
    return hashlib.sha256(account.encode()).hexdigest()[:32]


class JwksCache:
    """The signing keys of one issuer, by key id."""

    def __init__(
        self,
        url: str,
        fetch: FetchJson,
        *,
        ttl_s: float = 3600.0,
        min_refetch_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._ttl = ttl_s
        self._min_refetch = min_refetch_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self.declared: dict[str, str | None] = {}
        """The ``alg`` each key's JWK names, if it names one."""
        self._fetched_at: float | None = None
        self._refetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> jwt.PyJWK:
        found = self._keys.get(kid)
        if found is not None and not self._stale():
            return found
        async with self._lock:
            # Someone may have refetched while we waited: a burst of tokens with a new
            # key id makes one fetch, not one each.
            found = self._keys.get(kid)
            if found is not None and not self._stale():
                return found
            if self._stale():
                await self._refresh()
            elif kid not in self._keys and self._may_refetch():
                self._refetched_at = self._clock()
                await self._refresh()
            found = self._keys.get(kid)
        if found is None:
            raise IdTokenError("id_token is signed with a key its issuer does not publish")
        return found

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl

    def _may_refetch(self) -> bool:
        # Measured from the last refetch for an unknown key id, not from the last fetch:
        # the first token signed with a rotated key must not wait out the interval.
        return self._refetched_at is None or self._clock() - self._refetched_at >= self._min_refetch

    async def _refresh(self) -> None:
        doc = await self._fetch(self._url)
        self.fetches += 1
        keys: dict[str, jwt.PyJWK] = {}
        declared: dict[str, str | None] = {}
        items = doc.get("keys") if isinstance(doc, Mapping) else None
        if not isinstance(items, list):
            raise KeysUnavailable(f"{self._url}: not a JWKS")
        for item in items:
            if not isinstance(item, Mapping) or not isinstance(item.get("kid"), str):
                continue
            # A symmetric key has no place in an issuer's public set; and an encryption
            # key must not verify signatures.
            if item.get("kty") not in ("RSA", "EC", "OKP") or item.get("use", "sig") != "sig":
                continue
            try:
                keys[item["kid"]] = jwt.PyJWK(dict(item))
            except PyJWKError:
                continue  # one key we can't use must not take the others down
            alg = item.get("alg")
            declared[item["kid"]] = alg if isinstance(alg, str) else None
        self._keys = keys
        self.declared = declared
        self._fetched_at = self._clock()


class OidcVerifier:
    """Verifies ID tokens of the configured issuers; one per process."""

    def __init__(
        self,
        issuers: Sequence[OidcIssuer],
        fetch: FetchJson,
        *,
        ttl_s: float = 3600.0,
        min_refetch_s: float = 30.0,
        leeway_s: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._jwks = {
            i.issuer: JwksCache(
                i.jwks_url, fetch, ttl_s=ttl_s, min_refetch_s=min_refetch_s, clock=clock
            )
            for i in issuers
        }
        self._leeway = leeway_s

    @property
    def enabled(self) -> bool:
        return bool(self._issuers)

    def jwks(self, issuer: str) -> JwksCache:
        return self._jwks[issuer]

    async def verify(self, token: str, nonce: str | None = None) -> Account:
        """The account of a valid ID token; raises :class:`IdTokenError` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise IdTokenError("id_token is malformed") from exc
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise IdTokenError("id_token is from an issuer this deployment does not trust")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise IdTokenError(f"id_token algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise IdTokenError("id_token has no key id")
        cache = self._jwks[issuer.issuer]
        jwk = await cache.key(kid)
        declared = cache.declared.get(kid)
        # An EC or OKP key's curve fixes its algorithm; an RSA key fits RS and PS alike
        # unless its JWK names one.
        fits = jwk.key_type == _KTY_OF[alg[:2]] and (
            alg == declared
            if declared is not None
            else jwk.key_type == "RSA" or alg == jwk.algorithm_name
        )
        if not fits:
            raise IdTokenError(f"id_token algorithm {alg} does not fit its key")
        try:
            claims = jwt.decode(
                token,
                jwk.key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=self._leeway,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise IdTokenError("id_token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise IdTokenError("id_token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise IdTokenError("id_token is from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise IdTokenError("id_token signature is invalid") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise IdTokenError(f"id_token has no {exc.claim!r} claim") from exc
        except jwt.ImmatureSignatureError as exc:
            raise IdTokenError("id_token is not valid yet") from exc
        except jwt.PyJWTError as exc:
            raise IdTokenError("id_token is malformed") from exc
        if nonce is not None:
            got = claims.get("nonce")
            # Constant time: the nonce is the app's replay guard, not to be guessed.
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise IdTokenError("id_token nonce does not match")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise IdTokenError("id_token has no subject")
        return Account(issuer=issuer.issuer, subject=sub)
