"""Platform attestation at device registration: evidence that the request comes from the
genuine app on a genuine device, one verifier per platform shape.

What is verified here, offline, and what needs the platform's live service:

- **App Attest (iOS)**, :class:`AppAttestVerifier`: everything Apple documents as the
  server's job for an attestation object ("Validating apps that connect to your
  server", steps 1-9): the certificate chain up to the App Attest root CA (passed in,
  so a test passes its own), the nonce in the credential certificate's extension, the
  key id, the App ID hash, the zero counter, the AAGUID (production or development) and
  the credential id. Assertions (later requests signed with the attested key) are
  checked with :func:`verify_assertion`, counter strictly increasing. Only the
  *receipt* needs Apple's live service (fraud metric: how many keys this device made);
  it plugs in as ``receipt_check``, called with the receipt after every offline check
  passed, and is skipped where none is given.
- **Play Integrity (Android)**, :class:`PlayIntegrityVerifier`: the integrity token is
  encrypted and signed by Google; decoding it needs Google's ``decodeIntegrityToken``
  call (or the app's decryption and verification keys from the Play Console), which
  plugs in as ``decode``. What the verdict says is checked here: the request hash (our
  challenge), the package name, Play recognition of the app, device integrity and
  freshness.

A deployment chooses per platform: :class:`Policy` ``required``, ``optional`` or ``off``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier

APP_ATTEST_NONCE_OID = ObjectIdentifier("1.2.840.113635.100.8.2")
AAGUID_PRODUCTION = b"appattest" + b"\x00" * 7
AAGUID_DEVELOPMENT = b"appattestdevelop"


class Policy(enum.StrEnum):
    REQUIRED = "required"
    """No registration from this platform without valid evidence."""
    OPTIONAL = "optional"
    """Evidence, when sent, must be valid; a device without it registers unattested."""
    OFF = "off"
    """Evidence is ignored."""


class AttestationError(Exception):
    """The evidence is refused; ``reason`` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AttestedKey:
    """What a valid attestation proves: this key lives in a genuine app instance."""

    platform: str
    key_id: str
    """Stable per app instance: what the per-attested-key registration limit counts."""
    public_key: bytes
    """DER SubjectPublicKeyInfo, for checking later assertions."""
    counter: int
    development: bool = False


class AttestationVerifier(Protocol):
    """One platform's check of the evidence an app sends with its registration."""

    platform: str

    async def verify(self, key_id: str, evidence: bytes, challenge: bytes) -> AttestedKey:
        """The attested key; raises :class:`AttestationError` if the evidence is not valid
        for ``challenge`` (what the app hashed into its request, bound to this call)."""
        ...


# --------------------------------------------------------------------- App Attest


def _auth_data(raw: bytes) -> tuple[bytes, int, int, bytes, bytes]:
    """rpIdHash, flags, counter, and (attested credential data) AAGUID, credential id."""
    if len(raw) < 37:
        raise AttestationError("authenticator data is too short")
    rp_id_hash, flags, counter = raw[:32], raw[32], int.from_bytes(raw[33:37], "big")
    aaguid = cred_id = b""
    if len(raw) >= 55:
        aaguid = raw[37:53]
        n = int.from_bytes(raw[53:55], "big")
        cred_id = raw[55 : 55 + n]
        if len(cred_id) != n:
            raise AttestationError("authenticator data credential id is truncated")
    return rp_id_hash, flags, counter, aaguid, cred_id


def _point(cert: x509.Certificate) -> bytes:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise AttestationError("credential certificate key is not a P-256 key")
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _verify_chain(chain: Sequence[x509.Certificate], root: x509.Certificate, at: datetime) -> None:
    # Each certificate signed by the next, the last by the root, all within validity.
    for cert, issuer in zip(chain, [*chain[1:], root], strict=True):
        if cert.issuer != issuer.subject:
            raise AttestationError("certificate chain is broken (issuer mismatch)")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise AttestationError("certificate chain does not verify") from exc
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise AttestationError("a certificate of the chain is not valid now")
    for issuer in [*chain[1:], root]:
        try:
            basic = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound as exc:
            raise AttestationError("an issuing certificate is not a CA") from exc
        if not basic.ca:
            raise AttestationError("an issuing certificate is not a CA")


def _nonce_of(cert: x509.Certificate) -> bytes:
    """The nonce in the credential certificate: SEQUENCE { [1] EXPLICIT OCTET STRING }."""
    try:
        ext = cert.extensions.get_extension_for_oid(APP_ATTEST_NONCE_OID).value
    except x509.ExtensionNotFound as exc:
        raise AttestationError("credential certificate has no App Attest nonce") from exc
    der = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    # Fixed shape for a 32-byte nonce: 30 24 a1 22 04 20 <32 bytes>.
    if len(der) != 38 or der[:6] != bytes.fromhex("3024a1220420"):
        raise AttestationError("credential certificate nonce is malformed")
    return der[6:]


ReceiptCheck = Callable[[bytes, AttestedKey], Awaitable[None]]


class AppAttestVerifier:
    platform = "ios"

    def __init__(
        self,
        app_id: str,
        root: x509.Certificate,
        *,
        allow_development: bool = False,
        receipt_check: ReceiptCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``app_id``: team id and bundle id, ``ABCDE12345.tv.example.vote``; ``root``:
        Apple's App Attest root CA in production."""
        self._rp_id_hash = hashlib.sha256(app_id.encode()).digest()
        self._root = root
        self._allow_dev = allow_development
        self._receipt_check = receipt_check
        self._clock = clock

    async def verify(self, key_id: str, evidence: bytes, challenge: bytes) -> AttestedKey:
        try:
            obj = cbor2.loads(evidence)
            fmt, stmt, auth = obj["fmt"], obj["attStmt"], obj["authData"]
            x5c, receipt = stmt["x5c"], stmt.get("receipt", b"")
            chain = [x509.load_der_x509_certificate(c) for c in x5c]
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as exc:
            raise AttestationError("attestation object is malformed") from exc
        if fmt != "apple-appattest" or not isinstance(auth, bytes) or not chain:
            raise AttestationError("attestation object is not an App Attest one")
        # 1. The chain, up to the root we trust.
        _verify_chain(chain, self._root, datetime.fromtimestamp(self._clock(), UTC))
        cred = chain[0]
        # 2-4. The nonce binds this attestation to its authenticator data and challenge.
        client_data_hash = hashlib.sha256(challenge).digest()
        nonce = hashlib.sha256(auth + client_data_hash).digest()
        if not hmac.compare_digest(_nonce_of(cred), nonce):
            raise AttestationError("attestation is not for this challenge")
        # 5. The key id is the hash of the attested public key.
        point = _point(cred)
        try:
            given = bytes.fromhex(key_id) if len(key_id) == 64 else _b64(key_id)
        except ValueError as exc:
            raise AttestationError("key_id is not base64 or hex") from exc
        if not hmac.compare_digest(hashlib.sha256(point).digest(), given):
            raise AttestationError("key_id is not the attested key's")
        # 6-9. The authenticator data: our App ID, a fresh key, the environment, the key.
        rp_id_hash, _flags, counter, aaguid, cred_id = _auth_data(auth)
        if not hmac.compare_digest(rp_id_hash, self._rp_id_hash):
            raise AttestationError("attestation is for another app")
        if counter != 0:
            raise AttestationError("attestation counter is not zero")
        if aaguid == AAGUID_DEVELOPMENT and not self._allow_dev:
            raise AttestationError("attestation is from the development environment")
        if aaguid not in (AAGUID_PRODUCTION, AAGUID_DEVELOPMENT):
            raise AttestationError("attestation is from an unknown environment")
        if not hmac.compare_digest(cred_id, given):
            raise AttestationError("credential id is not the key id")
        spki = cred.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key = AttestedKey(
            platform=self.platform,
            key_id=given.hex(),
            public_key=spki,
            counter=0,
            development=aaguid == AAGUID_DEVELOPMENT,
        )
        if self._receipt_check is not None:
            # Apple's live service: the fraud metric of this device. Offline, skipped.
            await self._receipt_check(receipt, key)
        return key


def verify_assertion(
    key: AttestedKey, assertion: bytes, client_data: bytes, app_id: str, previous_counter: int
) -> int:
    """A request signed by an attested App Attest key; returns its counter, which the
    caller stores: it must grow with every assertion, so a replay is refused."""
    try:
        obj = cbor2.loads(assertion)
        signature, auth = obj["signature"], obj["authenticatorData"]
    except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as exc:
        raise AttestationError("assertion is malformed") from exc
    if not isinstance(signature, bytes) or not isinstance(auth, bytes):
        raise AttestationError("assertion is malformed")
    nonce = hashlib.sha256(auth + hashlib.sha256(client_data).digest()).digest()
    public = serialization.load_der_public_key(key.public_key)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise AttestationError("attested key is not an EC key")
    try:
        public.verify(signature, nonce, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AttestationError("assertion signature is invalid") from exc
    rp_id_hash, _flags, counter, _aaguid, _cred = _auth_data(auth)
    if not hmac.compare_digest(rp_id_hash, hashlib.sha256(app_id.encode()).digest()):
        raise AttestationError("assertion is for another app")
    if counter <= previous_counter:
        raise AttestationError("assertion counter did not increase (a replay)")
    return counter


def _b64(text: str) -> bytes:
    import base64

    pad = "=" * (-len(text) % 4)
    return base64.b64decode(text + pad, altchars=b"-_" if "-" in text or "_" in text else None)


# ----------------------------------------------------------------- Play Integrity


DecodeVerdict = Callable[[str], Awaitable[Mapping[str, Any]]]
"""Google's ``decodeIntegrityToken`` (or a local decryption with the Play Console keys):
the integrity token in, its verdict payload out."""


class PlayIntegrityVerifier:
    platform = "android"

    def __init__(
        self,
        package_name: str,
        decode: DecodeVerdict,
        *,
        max_age_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._package = package_name
        self._decode = decode
        self._max_age_ms = max_age_s * 1000
        self._clock = clock

    async def verify(self, key_id: str, evidence: bytes, challenge: bytes) -> AttestedKey:
        """``key_id``: the app's per-install id (Play has no attested key; the id is bound
        by the request hash, which is over it and the challenge)."""
        try:
            verdict = await self._decode(evidence.decode())
            details = verdict["requestDetails"]
            app = verdict["appIntegrity"]
            device = verdict["deviceIntegrity"]
        except (KeyError, TypeError, UnicodeDecodeError) as exc:
            raise AttestationError("integrity verdict is malformed") from exc
        expected = hashlib.sha256(challenge + key_id.encode()).hexdigest()
        if not hmac.compare_digest(str(details.get("requestHash", "")), expected):
            raise AttestationError("integrity verdict is not for this challenge")
        if details.get("requestPackageName") != self._package:
            raise AttestationError("integrity verdict is for another app")
        ts = int(details.get("timestampMillis", 0))
        if abs(self._clock() * 1000 - ts) > self._max_age_ms:
            raise AttestationError("integrity verdict is stale")
        if app.get("appRecognitionVerdict") != "PLAY_RECOGNIZED":
            raise AttestationError("app is not the one Play distributes")
        if "MEETS_DEVICE_INTEGRITY" not in (device.get("deviceRecognitionVerdict") or []):
            raise AttestationError("device does not meet device integrity")
        return AttestedKey(
            platform=self.platform,
            key_id=hashlib.sha256(key_id.encode()).hexdigest(),
            public_key=b"",
            counter=0,
        )


# ------------------------------------------------------------------------ policy


class Attestation:
    """The deployment's verifiers and, per platform, whether evidence is required."""

    def __init__(
        self, verifiers: Sequence[AttestationVerifier] = (), policy: Mapping[str, Policy] = {}
    ) -> None:
        self._verifiers = {v.platform: v for v in verifiers}
        self._policy = dict(policy)
        missing = [
            p for p, pol in self._policy.items() if pol != Policy.OFF and p not in self._verifiers
        ]
        if missing:
            raise ValueError(f"attestation policy names platforms with no verifier: {missing}")

    @property
    def enabled(self) -> bool:
        return any(p is not Policy.OFF for p in self._policy.values())

    def policy(self, platform: str) -> Policy:
        if platform not in self._policy:
            # Else a script would name a platform nobody configured to skip the check.
            raise AttestationError(f"platform {platform!r} is not one this deployment takes")
        return self._policy[platform]

    async def check(
        self, platform: str, key_id: str | None, evidence: bytes | None, challenge: bytes
    ) -> AttestedKey | None:
        """The attested key, None where the policy lets the device go unattested, or
        :class:`AttestationError`."""
        policy = self.policy(platform)
        if policy is Policy.OFF:
            return None
        if evidence is None or key_id is None:
            if policy is Policy.REQUIRED:
                raise AttestationError(f"attestation is required for {platform}")
            return None
        return await self._verifiers[platform].verify(key_id, evidence, challenge)
