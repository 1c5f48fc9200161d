"""Viewer accounts (issue 15): ID tokens verified against a local issuer whose keys the
test makes and rotates, devices bound to the account, and the per-account vote limit,
all through the real verification code, real Redis and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from services.common.oidc import IdTokenError, OidcIssuer, OidcVerifier
from services.common.settings import IngestSettings
from services.ingest.gateway.auth import JwksFetcher
from tests.integration.test_ingest_api import expect_error, make_client, new_poll, vote
from tests.support.oidc import (
    AUDIENCE,
    ISSUER,
    Issuer,
    claims,
    ec_key,
    local_issuer,
    unsigned_token,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with local_issuer() as i:
        yield i


@pytest.fixture
async def verifier(issuer: Issuer) -> AsyncIterator[OidcVerifier]:
    fetcher = JwksFetcher()
    # A large refetch interval: an unknown key id may refetch once, then not again.
    yield OidcVerifier([OidcIssuer(**issuer.setting())], fetcher, min_refetch_s=3600)
    await fetcher.close()


async def refused(verifier: OidcVerifier, token: str, nonce: str | None = None) -> str:
    with pytest.raises(IdTokenError) as info:
        await verifier.verify(token, nonce)
    return info.value.reason


async def test_a_good_id_token_names_its_account(issuer: Issuer, verifier: OidcVerifier) -> None:
    account = await verifier.verify(issuer.id_token(sub="alice"))
    assert (account.issuer, account.subject) == (ISSUER, "alice")


async def test_an_ec_key_verifies_es256(issuer: Issuer, verifier: OidcVerifier) -> None:
    key = ec_key()
    issuer.keys.append(key)
    assert (await verifier.verify(issuer.id_token(key, sub="bob"))).subject == "bob"


async def test_a_token_for_another_audience_is_refused(
    issuer: Issuer, verifier: OidcVerifier
) -> None:
    assert "audience" in await refused(verifier, issuer.id_token(aud="someone-else"))


async def test_an_expired_token_is_refused(issuer: Issuer, verifier: OidcVerifier) -> None:
    past = int(time.time()) - 3600
    assert "expired" in await refused(verifier, issuer.id_token(iat=past - 600, exp=past))


async def test_a_token_of_another_issuer_is_refused(issuer: Issuer, verifier: OidcVerifier) -> None:
    assert "issuer" in await refused(verifier, issuer.id_token(iss="https://evil.test"))


async def test_a_tampered_signature_is_refused(issuer: Issuer, verifier: OidcVerifier) -> None:
    head, body, sig = issuer.id_token().split(".")
    forged = jwt.utils.base64url_encode(json.dumps(claims(sub="mallory")).encode()).decode()
    assert "signature" in await refused(verifier, f"{head}.{forged}.{sig}")
    assert body != forged


async def test_the_nonce_must_match_when_given(issuer: Issuer, verifier: OidcVerifier) -> None:
    token = issuer.id_token(nonce="n-123")
    assert (await verifier.verify(token, "n-123")).subject == "viewer-1"
    assert "nonce" in await refused(verifier, token, "n-456")
    assert "nonce" in await refused(verifier, issuer.id_token(), "n-123")


async def test_an_unknown_key_id_refetches_once_then_is_rate_limited(
    issuer: Issuer, verifier: OidcVerifier
) -> None:
    await verifier.verify(issuer.id_token())
    assert issuer.hits == 1
    stranger = ec_key()  # never published
    assert "does not publish" in await refused(verifier, issuer.id_token(stranger))
    assert issuer.hits == 2
    # A flood of made-up key ids does not make a flood of fetches.
    for _ in range(5):
        await refused(verifier, issuer.id_token(ec_key()))
    assert issuer.hits == 2


async def test_a_rotated_key_is_fetched_when_first_seen(issuer: Issuer) -> None:
    fetcher = JwksFetcher()
    try:
        verifier = OidcVerifier([OidcIssuer(**issuer.setting())], fetcher, min_refetch_s=0)
        await verifier.verify(issuer.id_token())
        new = issuer.rotate()
        assert (await verifier.verify(issuer.id_token(new, sub="carol"))).subject == "carol"
        assert issuer.hits == 2
        # The cache serves the new key from now on.
        await verifier.verify(issuer.id_token(new))
        assert issuer.hits == 2
    finally:
        await fetcher.close()


async def test_alg_none_is_refused(issuer: Issuer, verifier: OidcVerifier) -> None:
    token = unsigned_token(issuer.keys[0].kid, "none", claims())
    assert "not allowed" in await refused(verifier, token)


async def test_hs_rs_confusion_is_refused(issuer: Issuer, verifier: OidcVerifier) -> None:
    # HS256 "signed" with the issuer's public key, which anyone can download: a verifier
    # that let the token choose its algorithm would accept it.
    key = issuer.keys[0]
    token = unsigned_token(key.kid, "HS256", claims(), secret=key.public_pem())
    assert "not allowed" in await refused(verifier, token)


async def test_an_allowed_alg_on_the_wrong_key_type_is_refused(issuer: Issuer) -> None:
    # ES256 allowed, but the key id is an RSA key's: the algorithm must fit the key.
    fetcher = JwksFetcher()
    try:
        verifier = OidcVerifier([OidcIssuer(**issuer.setting())], fetcher)
        token = unsigned_token(issuer.keys[0].kid, "ES256", claims(), secret=b"x")
        assert "does not fit" in await refused(verifier, token)
    finally:
        await fetcher.close()


def test_settings_refuse_symmetric_algorithms() -> None:
    for alg in ("HS256", "none"):
        with pytest.raises(ValidationError):
            OidcIssuer(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://x", algorithms=(alg,))


# --------------------------------------------------------------------- the HTTP API


@pytest.fixture
def account_settings(ingest_settings: IngestSettings, issuer: Issuer) -> IngestSettings:
    return ingest_settings.model_copy(
        update={
            "oidc_issuers": [OidcIssuer(**issuer.setting())],
            "require_account": True,
            "registrations_per_account": 3,
        }
    )


async def register(client: TestClient, id_token: str, **extra: Any) -> dict[str, str]:
    r = await client.post("/v1/devices", json={"id_token": id_token, **extra})
    assert r.status == 201, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def test_registration_binds_the_account_and_refuses_without_one(
    aiohttp_client: Any, account_settings: IngestSettings, issuer: Issuer
) -> None:
    client = await make_client(aiohttp_client, account_settings)
    headers = await register(client, issuer.id_token(sub="dave", nonce="n1"), nonce="n1")
    token = headers["Authorization"].split()[1]
    assert jwt.decode(token, options={"verify_signature": False})["acc"] == f"{ISSUER} dave"

    await expect_error(await client.post("/v1/devices"), 401, "account_required", "id_token")
    r = await client.post("/v1/devices", json={"id_token": issuer.id_token(aud="x")})
    body = await expect_error(r, 401, "invalid_id_token", "id_token")
    assert "audience" in body["message"]
    r = await client.post("/v1/devices", json={"id_token": "x", "extra": 1})
    await expect_error(r, 400, "invalid_field", "extra")

    metrics = await (await client.get("/metrics")).text()
    assert 'buzzer_device_registrations_total{result="account"} 1.0' in metrics
    assert 'buzzer_device_registrations_total{result="invalid_id_token"} 1.0' in metrics


async def test_an_account_registers_at_most_its_devices_per_window(
    aiohttp_client: Any, account_settings: IngestSettings, issuer: Issuer
) -> None:
    client = await make_client(aiohttp_client, account_settings)
    for _ in range(3):
        await register(client, issuer.id_token(sub="erin"))
    r = await client.post("/v1/devices", json={"id_token": issuer.id_token(sub="erin")})
    await expect_error(r, 429, "registration_limit", "id_token")
    assert int(r.headers["Retry-After"]) > 0
    # Another viewer is not affected.
    await register(client, issuer.id_token(sub="frank"))


async def test_two_devices_of_one_account_vote_once(
    aiohttp_client: Any, account_settings: IngestSettings, issuer: Issuer
) -> None:
    client = await make_client(aiohttp_client, account_settings)
    poll = await new_poll(client, max_votes_per_account=1)
    phone = await register(client, issuer.id_token(sub="gina"))
    tablet = await register(client, issuer.id_token(sub="gina"))
    other = await register(client, issuer.id_token(sub="hugo"))
    url = f"/v1/polls/{poll['id']}/votes"
    first = vote()
    assert (await client.post(url, json=first, headers=phone)).status == 202
    r = await client.post(url, json=vote("o1"), headers=tablet)
    body = await expect_error(r, 422, "account_vote_limit", "Authorization")
    assert "account" in body["message"]
    # The refused vote did not use up the tablet's own vote: it is the account's rule.
    assert (await client.post(url, json=vote(), headers=other)).status == 202
    # A retry of the accepted vote is still its replay, and its receipt is found.
    assert (await client.post(url, json=first, headers=phone)).status == 202
    r = await client.get(f"{url}/{first['vote_id']}", headers=phone)
    assert r.status == 200, await r.text()


async def test_a_poll_with_an_account_limit_refuses_anonymous_devices(
    aiohttp_client: Any, ingest_settings: IngestSettings
) -> None:
    client = await make_client(aiohttp_client, ingest_settings)
    poll = await new_poll(client, max_votes_per_account=1)
    r = await client.post("/v1/devices")
    assert r.status == 201
    headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    r = await client.post(f"/v1/polls/{poll['id']}/votes", json=vote(), headers=headers)
    await expect_error(r, 403, "account_required", "Authorization")
    # A deployment without issuers says so rather than ignoring the token.
    r = await client.post("/v1/devices", json={"id_token": "a.b.c"})
    await expect_error(r, 422, "accounts_not_enabled", "id_token")


async def test_required_accounts_refuse_old_anonymous_tokens(
    aiohttp_client: Any, ingest_settings: IngestSettings, account_settings: IngestSettings
) -> None:
    anonymous = await make_client(aiohttp_client, ingest_settings)
    r = await anonymous.post("/v1/devices")
    headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    poll = await new_poll(anonymous)
    required = await make_client(aiohttp_client, account_settings)
    r = await required.post(f"/v1/polls/{poll['id']}/votes", json=vote(), headers=headers)
    await expect_error(r, 403, "account_required", "Authorization")
