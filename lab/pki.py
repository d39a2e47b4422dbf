"""The lab's own PKI: an internal CA, server certificates for loopback, the CDN signing key.

The fleet gets these from pulumi-tls (components/internal_tls.py, components/cdn.py); the lab
makes the same kinds of keys locally with `cryptography`, since no Pulumi engine runs here:
ECDSA P-256 for TLS, RSA 2048 PKCS#1 for CloudFront URL signing (the registry's `cloudfront`
middleware reads only PKCS#1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth.certificates import Issuer, certificate, certificate_pem, distinguished_name, private_key_pem

LAB_DAYS = 30
ORGANIZATION = "registry-fleet lab"


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


@dataclass(frozen=True)
class LabPki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    cdn_private_key: Path
    cdn_public_key: Path


def create_pki(directory: Path, hostnames: list[str]) -> LabPki:
    """A CA, one server certificate for every lab listener, and the CDN key pair."""
    ca = Issuer(ec.generate_private_key(ec.SECP256R1()), distinguished_name("registry-fleet lab CA", ORGANIZATION))
    ca_cert = certificate(ca.key, ca.name, LAB_DAYS, "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate(
        key, distinguished_name(hostnames[0], ORGANIZATION), LAB_DAYS, "server", issuer=ca, hostnames=hostnames
    )
    cdn_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki = LabPki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        cdn_private_key=directory / "cdn-signing.pem",
        cdn_public_key=directory / "cdn-signing.pub.pem",
    )
    _write(pki.ca_cert, certificate_pem(ca_cert), 0o644)
    _write(pki.server_cert, certificate_pem(cert), 0o644)
    _write(pki.server_key, private_key_pem(key), 0o600)
    _write(pki.cdn_private_key, private_key_pem(cdn_key), 0o600)
    _write(
        pki.cdn_public_key,
        cdn_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        0o644,
    )
    return pki
