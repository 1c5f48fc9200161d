"""Viewer accounts (issue 15): ID tokens verified against a local issuer whose keys the
test makes and rotates, devices bound to the account, and the per-account vote limit,
all through the real verification code, real Redis and PostgreSQL."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from buzzer.audit_devices import devices_report, print_report
from services.common.archive import ensure_partition
from services.common.attest import Policy
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
from tests.unit.test_attest import APP_ID, AttestCa, attestation, make_ca, new_device

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


# ------------------------------------------------------------------- attestation


@pytest.fixture
def attest_settings(
    ingest_settings: IngestSettings, tmp_path: Path
) -> tuple[IngestSettings, AttestCa]:
    ca = make_ca()
    root = tmp_path / "root.pem"
    root.write_bytes(ca.root.public_bytes(serialization.Encoding.PEM))
    settings = ingest_settings.model_copy(
        update={
            "attestation_policy": {"ios": Policy.REQUIRED, "web": Policy.OFF},
            "app_attest_app_id": APP_ID,
            "app_attest_root": root,
            "registrations_per_attested_key": 2,
        }
    )
    return settings, ca


def attested(ca: AttestCa, dev: Any, nonce: str = "n-1") -> dict[str, str]:
    obj = attestation(ca, dev, challenge=nonce.encode())
    return {
        "platform": "ios",
        "key_id": dev.key_id.hex(),
        "attestation": base64.b64encode(obj).decode(),
        "nonce": nonce,
    }


async def test_an_attested_key_registers_at_most_its_devices(
    aiohttp_client: Any, attest_settings: tuple[IngestSettings, AttestCa]
) -> None:
    settings, ca = attest_settings
    client = await make_client(aiohttp_client, settings)
    dev = new_device()
    body = attested(ca, dev)
    for _ in range(2):
        assert (await client.post("/v1/devices", json=body)).status == 201
    # The same attestation replayed by a script names the same key: counted, refused.
    r = await client.post("/v1/devices", json=body)
    await expect_error(r, 429, "registration_limit", "attestation")
    # Another genuine app instance is not affected.
    assert (await client.post("/v1/devices", json=attested(ca, new_device()))).status == 201


async def test_attestation_refusals_name_the_field(
    aiohttp_client: Any, attest_settings: tuple[IngestSettings, AttestCa]
) -> None:
    settings, ca = attest_settings
    client = await make_client(aiohttp_client, settings)
    dev = new_device()
    r = await client.post("/v1/devices", json={"platform": "ios"})
    body = await expect_error(r, 401, "invalid_attestation", "attestation")
    assert "required" in body["message"]
    await expect_error(await client.post("/v1/devices"), 400, "invalid_field", "platform")
    # Evidence made by another CA, or for another challenge, is refused.
    forged = attested(make_ca(), dev)
    r = await client.post("/v1/devices", json=forged)
    await expect_error(r, 401, "invalid_attestation", "attestation")
    r = await client.post("/v1/devices", json={**attested(ca, dev), "nonce": "other"})
    body = await expect_error(r, 401, "invalid_attestation", "attestation")
    assert "challenge" in body["message"]
    r = await client.post("/v1/devices", json={**attested(ca, dev), "attestation": "%%"})
    await expect_error(r, 400, "invalid_field", "attestation")
    # A platform the deployment lets go unattested registers without evidence.
    assert (await client.post("/v1/devices", json={"platform": "web"})).status == 201


# ------------------------------------------------------------ buzzer audit devices


async def test_audit_devices_ranks_accounts_and_sources(
    aiohttp_client: Any,
    account_settings: IngestSettings,
    issuer: Issuer,
    pg: Any,
    pg_dsn: str,
) -> None:
    client = await make_client(aiohttp_client, account_settings)
    poll = await new_poll(client)
    devices: dict[str, str] = {}
    for i, (sub, source) in enumerate(
        [("farm", "198.51.100.7")] * 3 + [("alice", "203.0.113.1"), ("bob", "198.51.100.7")]
    ):
        r = await client.post(
            "/v1/devices",
            json={"id_token": issuer.id_token(sub=sub)},
            # The test client is 127.0.0.1, a trusted proxy: its X-Forwarded-For counts.
            headers={"X-Forwarded-For": f"10.9.9.9, {source}"},
        )
        assert r.status == 201, await r.text()
        devices[f"d{i}"] = (await r.json())["device_id"]
    await ensure_partition(pg, poll["id"])
    for i, device in enumerate(devices.values()):
        await pg.execute(
            "INSERT INTO vote_archive(poll_id, device, vote_id, stream_id, option_key, count,"
            " client_ts, recv_ts, partition, row_hash) VALUES ($1,$2,$3,$4,'o0',$5,0,0,0,'')",
            poll["id"],
            device,
            f"v{i}",
            f"{i}-0",
            1 + i,
        )
    # A device whose registration record is gone (token expired) still counts.
    await pg.execute(
        "INSERT INTO vote_archive(poll_id, device, vote_id, stream_id, option_key, count,"
        " client_ts, recv_ts, partition, row_hash) VALUES ($1,'gone','v9','9-0','o0',1,0,0,0,'')",
        poll["id"],
    )
    prefix = account_settings.key_prefix
    report = await devices_report(
        pg_dsn, account_settings.redis_url, prefix, poll["id"], top=10, hash_accounts=False
    )
    assert report is not None
    assert (report.devices, report.votes, report.unrecorded) == (6, 16, 1)
    assert [(r.name, r.devices, r.votes) for r in report.accounts[:2]] == [
        (f"{ISSUER} farm", 3, 6),
        (f"{ISSUER} bob", 1, 5),
    ]
    assert [(r.name, r.devices) for r in report.sources[:2]] == [
        ("198.51.100.7", 4),
        ("203.0.113.1", 1),
    ]
    hashed = await devices_report(
        pg_dsn, account_settings.redis_url, prefix, poll["id"], top=10, hash_accounts=True
    )
    assert hashed is not None
    out = io.StringIO()
    print_report(hashed, out)
    assert "farm" not in out.getvalue() and "alice" not in out.getvalue()
    assert hashed.accounts[0].name.startswith("sha256:") and hashed.accounts[0].devices == 3
    assert (
        await devices_report(
            pg_dsn, account_settings.redis_url, prefix, "nope", top=10, hash_accounts=False
        )
        is None
    )
