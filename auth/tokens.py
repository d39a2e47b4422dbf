"""Registry bearer tokens: RS256 JWTs the way distribution 2.8 verifies them.

Header: `alg: RS256`, `x5c: [leaf, intermediates...]` (base64 DER), no `kid` (2.8 looks a `kid` up
among its configured keys only; the `x5c` chain is verified against `rootcertbundle`).
Claims: `iss`, `sub`, `aud` (one string: 2.8 fails to read a list), `exp`, `nbf`, `iat`, `jti`,
`access: [{type, name, actions}]` (plus `class` for `repository(plugin)` scopes).
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.certificates import certificate, certificate_pem, distinguished_name, private_key_pem
from auth.scopes import Scope

MIN_RSA_BITS = 2048
ALGORITHM = "RS256"


class SigningKeyError(ValueError):
    """The signing key or certificate cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Minted:
    token: str
    jti: str
    issued_at: int
    expires_in: int


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key, PEM, PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SigningKeyError(f"signing key {path}: cannot read it ({err.strerror})") from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SigningKeyError(f"signing key {path}: not an unencrypted PEM private key ({err})") from err
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError(f"signing key {path}: RS256 needs an RSA key, this is {type(key).__name__}")
    if key.key_size < MIN_RSA_BITS:
        raise SigningKeyError(f"signing key {path}: {key.key_size}-bit RSA; use at least {MIN_RSA_BITS} bits")
    return key


def load_chain(path: Path) -> list[x509.Certificate]:
    """The signing certificate first, then any intermediates, from one PEM file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SigningKeyError(f"signing certificate {path}: cannot read it ({err.strerror})") from err
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise SigningKeyError(f"signing certificate {path}: no PEM certificate in it ({err})") from err
    return chain


class TokenSigner:
    def __init__(self, key: rsa.RSAPrivateKey, chain: Sequence[x509.Certificate], issuer: str, lifetime: int) -> None:
        if not chain:
            raise SigningKeyError("signing certificate: the chain is empty")
        if chain[0].public_key() != key.public_key():
            raise SigningKeyError("signing certificate: its public key is not the signing key's")
        self._key = key
        self.chain = tuple(chain)
        self.issuer = issuer
        self.lifetime = lifetime
        self._x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]

    @classmethod
    def load(cls, key_path: Path, cert_path: Path, issuer: str, lifetime: int, now: float) -> TokenSigner:
        key = load_private_key(key_path)
        chain = load_chain(cert_path)
        if chain[0].public_key() != key.public_key():
            raise SigningKeyError(f"signing certificate {cert_path}: its public key does not match {key_path}")
        leaf = chain[0]
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        if not leaf.not_valid_before_utc <= at < leaf.not_valid_after_utc:
            raise SigningKeyError(
                f"signing certificate {cert_path}: valid {leaf.not_valid_before_utc.isoformat()} to "
                f"{leaf.not_valid_after_utc.isoformat()}, not now: the registry would refuse every token"
            )
        return cls(key, chain, issuer, lifetime)

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return self._key

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def mint(self, subject: str, audience: str, access: Sequence[Scope], now: float) -> Minted:
        iat = int(now)
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": iat + self.lifetime,
            "nbf": iat,
            "iat": iat,
            "jti": jti,
            "access": [access_entry(s) for s in access],
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"x5c": self._x5c})
        return Minted(token=token, jti=jti, issued_at=iat, expires_in=self.lifetime)


def access_entry(scope: Scope) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": scope.type, "name": scope.name, "actions": list(scope.actions)}
    if scope.resource_class:
        entry["class"] = scope.resource_class
    return entry


def create_signing_pair(
    directory: Path, common_name: str = "registry-fleet token signer", days: int = 365
) -> tuple[Path, Path]:
    """A self-signed RSA 2048 signing certificate and its PKCS#1 key (the lab's; the fleet gets its pair
    from pulumi-tls). The certificate itself is what goes into the registry's `rootcertbundle`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
    cert = certificate(key, distinguished_name(common_name), days, "signing")
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "token-signing.key", directory / "token-signing.crt"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))
    cert_path.write_bytes(certificate_pem(cert))
    return key_path, cert_path
