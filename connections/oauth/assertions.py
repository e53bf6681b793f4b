"""Signed JWT assertions (RFC 7523): client authentication with private_key_jwt (section 2.2, OpenID Connect Core
9) and the JWT bearer grant (section 2.1). Signed with PyJWT; the key is a connection's PEM private key, RSA
(RS256) or P-256 (ES256), optionally followed by its certificate, whose SHA-1 thumbprint goes in the x5t header
(Microsoft Entra's certificate credentials want it).

The key never leaves this module in any text: every error here names what is wrong with it, not what it is.
"""

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connections.errors import KeyProblem

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Short: an assertion is used once, at once. Entra accepts up to 10 minutes, Google up to an hour.
ASSERTION_LIFETIME = 300
MIN_RSA_BITS = 2048
PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----[^-]+-----END \1-----")


SignableKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey  # RS256 or ES256


@dataclass(frozen=True)
class SigningKey:
    key: SignableKey = field(repr=False)
    algorithm: str  # RS256 or ES256
    thumbprint: str  # the x5t of the certificate given with the key, or ""
    not_after: datetime | None = None  # when that certificate expires (the provider refuses the key after it)


def key_file_read(text: str) -> dict[str, str] | None:
    """A Google service account's JSON key file pasted whole: its private key, client_email and private_key_id.
    None for other text (a PEM key); KeyProblem for JSON that is not such a file."""
    if not text.strip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise KeyProblem(
            "This is not valid JSON: paste the service account's JSON key file whole, or a PEM key."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("private_key"), str):
        raise KeyProblem("The JSON has no private_key: paste a service account's JSON key file, or a PEM key.")
    return {name: str(data.get(name) or "") for name in ("private_key", "client_email", "private_key_id")}


def signing_key_load(pem: str) -> SigningKey:
    """The private key of a PEM text, and the certificate that may follow it. KeyProblem when it is not one
    Control Room can sign with."""
    found = [(match.group(1), match.group(0).encode()) for match in PEM_BLOCK.finditer(pem or "")]
    blocks = {label: block for label, block in found if label.endswith("PRIVATE KEY")}
    certificates = [block for label, block in found if label == "CERTIFICATE"]
    key_label = next(iter(blocks), None)
    if key_label is None:
        raise KeyProblem("No PEM private key found: paste the -----BEGIN PRIVATE KEY----- block.")
    if "ENCRYPTED" in key_label:
        raise KeyProblem("The private key is protected by a passphrase: give it without one (it is stored encrypted).")
    try:
        key = serialization.load_pem_private_key(blocks[key_label], password=None)
    except (ValueError, TypeError):
        raise KeyProblem("The private key could not be read: it is not a valid PEM private key.") from None
    if not isinstance(key, SignableKey):
        raise KeyProblem("Only RSA (RS256) and P-256 EC (ES256) private keys can sign assertions.")
    algorithm = _algorithm(key)
    certificate = _own_certificate(certificates, key) if certificates else None
    thumbprint = _thumbprint(certificate) if certificate else ""
    not_after = certificate.not_valid_after_utc if certificate else None
    return SigningKey(key=key, algorithm=algorithm, thumbprint=thumbprint, not_after=not_after)


def certificate_expiry(pem: str) -> datetime | None:
    """When the certificate stored with a private key expires (its notAfter): None without a certificate, or for
    text that is no key Control Room can sign with (the form says why)."""
    try:
        return signing_key_load(pem).not_after if pem else None
    except KeyProblem:
        return None


def _algorithm(key: SignableKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"The RSA key has {key.key_size} bits: providers want at least {MIN_RSA_BITS}.")
        return "RS256"
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyProblem(f"The EC key is on {key.curve.name}: ES256 needs a P-256 (secp256r1) key.")
    return "ES256"


def _own_certificate(certificates_pem: list[bytes], key: SignableKey) -> x509.Certificate:
    """The key's own certificate among those given (a chain may follow it, intermediates too)."""
    public, encoding = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.Encoding.DER
    own = key.public_key().public_bytes(encoding, public)
    try:
        certificates = [x509.load_pem_x509_certificate(pem) for pem in certificates_pem]
    except ValueError:
        raise KeyProblem("A certificate after the key could not be read: it is not a valid PEM certificate.") from None
    certificate = next((c for c in certificates if c.public_key().public_bytes(encoding, public) == own), None)
    if certificate is None:
        raise KeyProblem("No certificate given is the private key's: their public keys differ.")
    return certificate


def _thumbprint(certificate: x509.Certificate) -> str:
    """The certificate's x5t."""
    digest = certificate.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is defined as the SHA-1 thumbprint (RFC 7515)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def assertion_sign(
    *, key_pem: str, key_id: str, issuer: str, subject: str, audience: str, claims: dict[str, Any] | None = None
) -> str:
    """A signed assertion, good for ASSERTION_LIFETIME seconds and for one use (a fresh jti each time)."""
    key = signing_key_load(key_pem)
    now = int(time.time())
    payload = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
        **(claims or {}),
    }
    headers = {name: value for name, value in (("kid", key_id), ("x5t", key.thumbprint)) if value}
    return jwt.encode(payload, key.key, algorithm=key.algorithm, headers=headers or None)
