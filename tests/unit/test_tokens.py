"""Device tokens and the admin-token check, with no service running."""

from __future__ import annotations

import jwt
import pytest
from pydantic import SecretStr

from services.common.tokens import (
    InvalidToken,
    Operators,
    TokenService,
    bearer_token,
)

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
OLD, NEW = SecretStr("old-secret-" + "o" * 32), SecretStr("new-secret-" + "n" * 32)


def test_an_issued_token_names_its_device() -> None:
    service = TokenService(NEW, ttl_s=60)
    issued = service.issue(now=NOW)
    assert issued.expires_at == int(NOW) + 60
    assert service.verify(issued.token, now=NOW + 59) == issued.device_id
    assert service.issue(now=NOW).device_id != issued.device_id


def test_rotation_accepts_the_previous_secret_until_it_is_dropped() -> None:
    before = TokenService(OLD).issue(now=NOW)
    overlap = TokenService(NEW, previous=[OLD])
    assert overlap.verify(before.token, now=NOW) == before.device_id
    # New tokens are signed with the new secret only.
    fresh = overlap.issue(now=NOW)
    assert TokenService(NEW).verify(fresh.token, now=NOW) == fresh.device_id
    with pytest.raises(InvalidToken, match="unknown key"):
        TokenService(NEW).verify(before.token, now=NOW)


def test_expired_tokens_are_refused_also_from_the_cache() -> None:
    service = TokenService(NEW, ttl_s=10)
    issued = service.issue(now=NOW)
    assert service.verify(issued.token, now=NOW) == issued.device_id  # now cached
    with pytest.raises(InvalidToken, match="expired"):
        service.verify(issued.token, now=NOW + 10)
    # Dropped from the cache, and the signature check says the same.
    with pytest.raises(InvalidToken, match="expired"):
        service.verify(issued.token, now=NOW + 10)


def _signed(claims: dict[str, object], secret: SecretStr = NEW, kid_of: SecretStr = NEW) -> str:
    header = jwt.get_unverified_header(TokenService(kid_of).issue(now=NOW).token)
    return jwt.encode(claims, secret.get_secret_value(), algorithm="HS256", headers=header)


def test_a_forged_token_is_refused() -> None:
    # The right key id and claims, signed with a secret the service does not have.
    claims = {"sub": "d1", "aud": "buzzer-vote", "exp": int(NOW) + 60}
    forged = _signed(claims, secret=SecretStr("guess-" + "g" * 32), kid_of=NEW)
    with pytest.raises(InvalidToken, match="signature is invalid"):
        TokenService(NEW).verify(forged, now=NOW)
    assert TokenService(NEW).verify(_signed(claims), now=NOW) == "d1"


@pytest.mark.parametrize("token", ["not-a-token", "", "a.b.c"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken, match="malformed"):
        TokenService(NEW).verify(token, now=NOW)


def test_a_token_for_another_audience_is_refused() -> None:
    token = _signed({"sub": "d1", "aud": "elsewhere", "exp": int(NOW) + 60})
    with pytest.raises(InvalidToken, match="another audience"):
        TokenService(NEW).verify(token, now=NOW)


def test_a_token_without_a_device_is_refused() -> None:
    token = _signed({"aud": "buzzer-vote", "exp": int(NOW) + 60})
    with pytest.raises(InvalidToken, match="malformed"):
        TokenService(NEW).verify(token, now=NOW)


def test_the_cache_is_bounded() -> None:
    service = TokenService(NEW, cache_size=2)
    tokens = [service.issue(now=NOW) for _ in range(3)]
    for t in tokens:
        service.verify(t.token, now=NOW)
    assert len(service._cache) == 2
    assert tokens[0].token not in service._cache
    # Evicted is not refused: it is verified again.
    assert service.verify(tokens[0].token, now=NOW) == tokens[0].device_id


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("abc", None),
        ("", None),
    ],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token(header) == token


def test_the_admin_token_matches_only_itself() -> None:
    operators = Operators(SecretStr("s3cret-admin"))
    assert operators.operator("s3cret-admin") == "admin"
    for wrong in ("", "s3cret-admi", "s3cret-admin ", "S3CRET-ADMIN", "s3cret-adminx"):
        assert operators.operator(wrong) is None
