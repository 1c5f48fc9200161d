"""App Attest's offline checks against a test CA made here with ``cryptography`` (the
chain, nonce, key id, App ID, counter, environment), assertions with their counter, the
Play Integrity verdict checks, and the per-platform policy."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.attest import (
    AAGUID_DEVELOPMENT,
    AAGUID_PRODUCTION,
    APP_ATTEST_NONCE_OID,
    AppAttestVerifier,
    Attestation,
    AttestationError,
    AttestedKey,
    PlayIntegrityVerifier,
    Policy,
    verify_assertion,
)

pytestmark = pytest.mark.unit

APP_ID = "ABCDE12345.tv.example.vote"
CHALLENGE = b"server-challenge-1"
NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: Any,
    issuer: str,
    issuer_key: Any,
    *,
    ca: bool,
    extensions: list[x509.ExtensionType] = (),  # type: ignore[assignment]
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    return b.sign(issuer_key, hashes.SHA384() if ca else hashes.SHA256())


@dataclass
class AttestCa:
    root: x509.Certificate
    root_key: Any
    intermediate: x509.Certificate
    intermediate_key: Any


def make_ca(name: str = "Test App Attestation Root CA") -> AttestCa:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert(name, root_key, name, root_key, ca=True)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = _cert("Test App Attestation CA 1", inter_key, name, root_key, ca=True)
    return AttestCa(root, root_key, inter, inter_key)


@pytest.fixture(scope="module")
def ca() -> AttestCa:
    return make_ca()


@dataclass
class Device:
    key: ec.EllipticCurvePrivateKey
    key_id: bytes


def new_device() -> Device:
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return Device(key, hashlib.sha256(point).digest())


def auth_data(
    dev: Device, *, app_id: str = APP_ID, counter: int = 0, aaguid: bytes = AAGUID_PRODUCTION
) -> bytes:
    cred = dev.key_id
    return (
        hashlib.sha256(app_id.encode()).digest()
        + b"\x40"
        + counter.to_bytes(4, "big")
        + aaguid
        + len(cred).to_bytes(2, "big")
        + cred
    )


def attestation(ca: AttestCa, dev: Device, *, challenge: bytes = CHALLENGE, **auth: Any) -> bytes:
    """What DCAppAttestService.attestKey returns, made as Apple's service makes it."""
    ad = auth_data(dev, **auth)
    nonce = hashlib.sha256(ad + hashlib.sha256(challenge).digest()).digest()
    ext = x509.UnrecognizedExtension(APP_ATTEST_NONCE_OID, bytes.fromhex("3024a1220420") + nonce)
    cred = _cert(
        dev.key_id.hex(), dev.key, "Test App Attestation CA 1", ca.intermediate_key,
        ca=False, extensions=[ext],
    )  # fmt: skip
    x5c = [c.public_bytes(serialization.Encoding.DER) for c in (cred, ca.intermediate)]
    return cbor2.dumps(
        {"fmt": "apple-appattest", "attStmt": {"x5c": x5c, "receipt": b"r"}, "authData": ad}
    )


def verifier(ca: AttestCa, **kw: Any) -> AppAttestVerifier:
    return AppAttestVerifier(APP_ID, ca.root, **kw)


async def refused(coro: Any) -> str:
    with pytest.raises(AttestationError) as info:
        await coro
    return info.value.reason


async def test_a_genuine_attestation_gives_its_key(ca: AttestCa) -> None:
    dev = new_device()
    key = await verifier(ca).verify(dev.key_id.hex(), attestation(ca, dev), CHALLENGE)
    assert key.key_id == dev.key_id.hex() and key.counter == 0 and not key.development


async def test_a_chain_to_another_root_is_refused(ca: AttestCa) -> None:
    dev = new_device()
    # Same names as the trusted CA, other keys: only the signatures tell them apart.
    other = make_ca()
    reason = await refused(
        verifier(ca).verify(dev.key_id.hex(), attestation(other, dev), CHALLENGE)
    )
    assert "chain" in reason


async def test_another_challenge_is_refused(ca: AttestCa) -> None:
    dev = new_device()
    reason = await refused(
        verifier(ca).verify(dev.key_id.hex(), attestation(ca, dev), b"another challenge")
    )
    assert "challenge" in reason


async def test_another_key_id_is_refused(ca: AttestCa) -> None:
    dev, other = new_device(), new_device()
    reason = await refused(verifier(ca).verify(other.key_id.hex(), attestation(ca, dev), CHALLENGE))
    assert "key_id" in reason


@pytest.mark.parametrize(
    ("auth", "why"),
    [
        ({"app_id": "ZZZZZ99999.com.other.app"}, "another app"),
        ({"counter": 3}, "counter"),
        ({"aaguid": AAGUID_DEVELOPMENT}, "development"),
        ({"aaguid": b"x" * 16}, "unknown environment"),
    ],
)
async def test_authenticator_data_is_checked(ca: AttestCa, auth: dict[str, Any], why: str) -> None:
    dev = new_device()
    reason = await refused(
        verifier(ca).verify(dev.key_id.hex(), attestation(ca, dev, **auth), CHALLENGE)
    )
    assert why in reason


async def test_development_keys_pass_where_allowed(ca: AttestCa) -> None:
    dev = new_device()
    obj = attestation(ca, dev, aaguid=AAGUID_DEVELOPMENT)
    key = await verifier(ca, allow_development=True).verify(dev.key_id.hex(), obj, CHALLENGE)
    assert key.development


async def test_the_receipt_goes_to_the_live_check_after_the_offline_ones(ca: AttestCa) -> None:
    seen: list[tuple[bytes, str]] = []

    async def apple(receipt: bytes, key: AttestedKey) -> None:
        seen.append((receipt, key.key_id))
        raise AttestationError("risk metric too high")

    dev = new_device()
    v = verifier(ca, receipt_check=apple)
    assert "risk" in await refused(v.verify(dev.key_id.hex(), attestation(ca, dev), CHALLENGE))
    assert seen == [(b"r", dev.key_id.hex())]


async def test_garbage_is_refused_not_raised(ca: AttestCa) -> None:
    assert "malformed" in await refused(verifier(ca).verify("00" * 32, b"\xff\x00", CHALLENGE))


def assertion(dev: Device, client_data: bytes, counter: int, app_id: str = APP_ID) -> bytes:
    ad = hashlib.sha256(app_id.encode()).digest() + b"\x00" + counter.to_bytes(4, "big")
    nonce = hashlib.sha256(ad + hashlib.sha256(client_data).digest()).digest()
    sig = dev.key.sign(nonce, ec.ECDSA(hashes.SHA256()))
    return cbor2.dumps({"signature": sig, "authenticatorData": ad})


async def test_assertions_need_a_growing_counter_and_the_attested_key(ca: AttestCa) -> None:
    dev = new_device()
    key = await verifier(ca).verify(dev.key_id.hex(), attestation(ca, dev), CHALLENGE)
    body = b'{"vote":1}'
    assert verify_assertion(key, assertion(dev, body, 1), body, APP_ID, 0) == 1
    with pytest.raises(AttestationError, match="replay"):
        verify_assertion(key, assertion(dev, body, 1), body, APP_ID, 1)
    with pytest.raises(AttestationError, match="signature"):
        verify_assertion(key, assertion(new_device(), body, 2), body, APP_ID, 1)
    with pytest.raises(AttestationError, match="signature"):
        verify_assertion(key, assertion(dev, body, 2), b'{"vote":2}', APP_ID, 1)


# ----------------------------------------------------------------- Play Integrity


def verdict(**over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "requestDetails": {
            "requestPackageName": "tv.example.vote",
            "requestHash": hashlib.sha256(CHALLENGE + b"install-1").hexdigest(),
            "timestampMillis": 1_000_000,
        },
        "appIntegrity": {"appRecognitionVerdict": "PLAY_RECOGNIZED"},
        "deviceIntegrity": {"deviceRecognitionVerdict": ["MEETS_DEVICE_INTEGRITY"]},
    }
    for path, value in over.items():
        section, field = path.split("__")
        v[section][field] = value
    return v


def play(v: dict[str, Any]) -> PlayIntegrityVerifier:
    # Google's decodeIntegrityToken answers with the verdict; it can't be reached from
    # here, so the decoded verdict is what the test hands over.
    async def decode(token: str) -> dict[str, Any]:
        assert token == "integrity-token"
        return v

    return PlayIntegrityVerifier("tv.example.vote", decode, clock=lambda: 1000.0)


async def test_a_good_play_verdict_gives_a_key() -> None:
    key = await play(verdict()).verify("install-1", b"integrity-token", CHALLENGE)
    assert key.platform == "android" and key.key_id


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"requestDetails__requestHash": "00"}, "challenge"),
        ({"requestDetails__requestPackageName": "com.clone"}, "another app"),
        ({"requestDetails__timestampMillis": 1}, "stale"),
        ({"appIntegrity__appRecognitionVerdict": "UNRECOGNIZED_VERSION"}, "Play"),
        ({"deviceIntegrity__deviceRecognitionVerdict": []}, "device integrity"),
    ],
)
async def test_play_verdicts_are_checked(over: dict[str, Any], why: str) -> None:
    reason = await refused(play(verdict(**over)).verify("install-1", b"integrity-token", CHALLENGE))
    assert why in reason


# ------------------------------------------------------------------------ policy


async def test_the_policy_per_platform(ca: AttestCa) -> None:
    att = Attestation(
        [verifier(ca), play(verdict())],
        {"ios": Policy.REQUIRED, "android": Policy.OPTIONAL, "web": Policy.OFF},
    )
    assert att.enabled and not Attestation().enabled
    with pytest.raises(AttestationError, match="required"):
        await att.check("ios", None, None, CHALLENGE)
    assert await att.check("android", None, None, CHALLENGE) is None
    assert await att.check("web", "k", b"x", CHALLENGE) is None  # off: ignored
    with pytest.raises(AttestationError, match="not one this deployment takes"):
        await att.check("symbian", None, None, CHALLENGE)
    dev = new_device()
    key = await att.check("ios", dev.key_id.hex(), attestation(ca, dev), CHALLENGE)
    assert key is not None and key.key_id == dev.key_id.hex()
    with pytest.raises(ValueError, match="no verifier"):
        Attestation([], {"ios": Policy.REQUIRED})
