"""A local OpenID Connect issuer for tests: keys the test makes and rotates, a JWKS URL
served over HTTP from a thread (so processes started by the test can fetch it too), and
ID tokens signed with those keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://id.example.test"
AUDIENCE = "buzzer-app"


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        algo = RSAAlgorithm if self.alg.startswith(("RS", "PS")) else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_key() -> SigningKey:
    return SigningKey(uuid.uuid4().hex[:8], rsa.generate_private_key(65537, 2048), "RS256")


def ec_key() -> SigningKey:
    return SigningKey(uuid.uuid4().hex[:8], ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class Issuer:
    url: str
    keys: list[SigningKey] = field(default_factory=list)
    hits: int = 0

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def setting(self, audience: str = AUDIENCE) -> dict[str, str]:
        return {"issuer": ISSUER, "audience": audience, "jwks_url": self.jwks_url}

    def rotate(self) -> SigningKey:
        """A new signing key replaces the old ones in the published set."""
        key = rsa_key()
        self.keys = [key]
        return key

    def id_token(
        self, key: SigningKey | None = None, *, sub: str = "viewer-1", **claims: Any
    ) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600}
        body.update(claims)
        return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(kid: str, alg: str, claims: dict[str, Any], secret: bytes = b"") -> str:
    """A token PyJWT would refuse to make: ``alg`` none, or HMAC with ``secret`` (such as
    the issuer's public key, for HS/RS confusion)."""
    head = _b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signing = f"{head}.{body}".encode()
    sig = b"" if alg == "none" else hmac.new(secret, signing, hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "viewer-1",
        "iat": now,
        "exp": now + 600,
        **extra,
    }


@contextmanager
def local_issuer() -> Iterator[Issuer]:
    issuer = Issuer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer.hits += 1
            body = json.dumps({"keys": [k.public_jwk() for k in issuer.keys]}).encode()
            self.send_response(200 if self.path == "/jwks" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    issuer.keys = [rsa_key()]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
