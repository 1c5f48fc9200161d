"""Who is calling: device tokens and the named operator tokens, for ingest and push alike.

Device tokens are HMAC-signed JWTs (HS256) with expiry, audience and a key id.
Rotation: new tokens are signed with the current secret; verification also accepts
the previous secrets (found by ``kid``) until they are removed from the settings.

A token may carry the viewer's account (claim ``acc``), bound at registration from a
verified ID token (services/common/oidc.py): every device of that account then shares
the account's vote limit.

Nothing here knows aiohttp: each process turns a refusal into its own response.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from pydantic import SecretStr

log = logging.getLogger("buzzer.tokens")


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
    account: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a valid device token speaks for."""

    device: str
    account: str | None
    """The viewer account bound at registration; None for an anonymous device."""


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
        self._cache: OrderedDict[str, tuple[Caller, int]] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, now: float | None = None, account: str | None = None) -> IssuedToken:
        iat = int(time.time() if now is None else now)
        device = uuid.uuid4().hex
        exp = iat + self._ttl
        claims: dict[str, str | int] = {
            "sub": device,
            "aud": self._audience,
            "iat": iat,
            "exp": exp,
        }
        if account is not None:
            claims["acc"] = account
        token = jwt.encode(claims, self._secret, algorithm="HS256", headers={"kid": self._kid})
        return IssuedToken(token=token, device_id=device, expires_at=exp, account=account)

    def verify(self, token: str, now: float | None = None) -> str:
        """The device id of a valid token; raises :class:`InvalidToken` otherwise."""
        return self.caller(token, now).device

    def caller(self, token: str, now: float | None = None) -> Caller:
        """The device and account of a valid token; raises :class:`InvalidToken` otherwise."""
        t = time.time() if now is None else now
        hit = self._cache.get(token)
        if hit is not None:
            caller, exp = hit
            if exp > t:
                return caller
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
        account = claims.get("acc")
        if (
            not isinstance(exp, int)
            or not isinstance(device, str)
            or not (account is None or isinstance(account, str))
        ):
            raise InvalidToken("token is malformed")
        if exp <= t:
            raise InvalidToken("token expired")
        caller = Caller(device=device, account=account)
        self._cache[token] = (caller, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return caller


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def operator_of(given: str, tokens: Sequence[tuple[str, bytes]]) -> str | None:
    """The one admin check of every process and route: the name of the operator whose
    token ``given`` is, or None."""
    # Constant time, so a token cannot be guessed byte by byte from timings: every
    # configured token is compared, with no early exit, whichever one matches.
    # surrogatepass: a header with undecodable bytes is no token, never an exception.
    raw = given.encode("utf-8", "surrogatepass")
    found = None
    for name, token in tokens:
        if hmac.compare_digest(raw, token):
            found = name
    return found


class OperatorFileError(ValueError):
    pass


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")


def _operator_tokens(named: Mapping[str, str], origin: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    seen: set[str] = set()
    for name, token in named.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise OperatorFileError(f"{origin}: operator name {name!r} is not a short plain name")
        if not isinstance(token, str) or len(token) < 16:
            raise OperatorFileError(f"{origin}: token of {name!r} must be 16 characters or more")
        if token in seen:
            # Two names on one token would make "who" unknowable.
            raise OperatorFileError(f"{origin}: token of {name!r} is also another operator's")
        seen.add(token)
        out[name] = token.encode()
    return out


def read_operator_file(path: Path) -> dict[str, bytes]:
    """Operator name -> token from a JSON object file that only its owner may read."""
    st = path.stat()
    if st.st_mode & 0o077:
        raise OperatorFileError(f"{path}: mode {st.st_mode & 0o777:o}, must be 600")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise OperatorFileError(f"{path}: not a JSON object of name -> token") from exc
    if not isinstance(data, dict):
        raise OperatorFileError(f"{path}: not a JSON object of name -> token")
    return _operator_tokens(data, str(path))


class Operators:
    """The named operator tokens of the admin API: ``admin`` (``BUZZER_ADMIN_TOKEN``),
    those of ``BUZZER_OPERATOR_TOKENS``, and those of ``BUZZER_OPERATOR_TOKENS_FILE``.

    The file is looked at on every check (a ``stat``: admin calls are few), and re-read
    when it changed, so a token is added, rotated or revoked without a restart. A file
    that turns unreadable, malformed or group-readable keeps the previous set in force
    and is reported once per change.
    """

    def __init__(
        self,
        admin_token: SecretStr | None = None,
        tokens: Mapping[str, SecretStr] | None = None,
        file: Path | None = None,
    ) -> None:
        self._fixed = _operator_tokens(
            {name: t.get_secret_value() for name, t in (tokens or {}).items()},
            "BUZZER_OPERATOR_TOKENS",
        )
        admin = admin_token.get_secret_value() if admin_token else ""
        if admin:
            # Predates the rules above (and may be short): checked as it is.
            self._fixed["admin"] = admin.encode()
        self._file = file
        self._stamp: tuple[int, ...] | None = None
        self._from_file: dict[str, bytes] = {}
        self._all: list[tuple[str, bytes]] = list(self._fixed.items())
        if file is not None:
            # At start a bad file is fatal: better no process than one without its operators.
            self._stamp = self._stat()
            self._from_file = read_operator_file(file)
            self._merge()

    def _stat(self) -> tuple[int, ...] | None:
        assert self._file is not None
        try:
            st = self._file.stat()
        except OSError:
            return None
        # ctime and mode too: a chmod to 600 alone makes a refused file good.
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)

    def _merge(self) -> None:
        merged = dict(self._from_file)
        merged.update(self._fixed)  # settings win over the file for one name
        self._all = list(merged.items())

    def refresh(self) -> None:
        """Re-read the file if it changed since it was last read."""
        if self._file is None:
            return
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            if stamp is None:
                raise OperatorFileError(f"{self._file}: cannot be read")
            self._from_file = read_operator_file(self._file)
        except (OSError, OperatorFileError) as exc:
            log.warning("operator tokens file not reloaded", extra={"error": str(exc)})
            return
        self._merge()
        log.info("operator tokens reloaded", extra={"operators": sorted(self._from_file)})

    def operator(self, given: str) -> str | None:
        """Who ``given`` belongs to, or None."""
        self.refresh()
        return operator_of(given, self._all)
