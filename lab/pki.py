"""The lab's own PKI: an internal CA, server certificates for loopback, the CDN signing key.

The fleet gets these from pulumi-tls (components/internal_tls.py, components/cdn.py); the lab
makes the same kinds of keys locally with `cryptography`, since no Pulumi engine runs here:
ECDSA P-256 for TLS, RSA 2048 PKCS#1 for CloudFront URL signing (the registry's `cloudfront`
middleware reads only PKCS#1).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LAB_DAYS = 30


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "registry-fleet lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    # TraditionalOpenSSL = "EC PRIVATE KEY" / "RSA PRIVATE KEY" (PKCS#1), as pulumi-tls emits.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


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
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("registry-fleet lab CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LAB_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LAB_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cdn_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki = LabPki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        cdn_private_key=directory / "cdn-signing.pem",
        cdn_public_key=directory / "cdn-signing.pub.pem",
    )
    _write(pki.ca_cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(pki.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(pki.server_key, _key_pem(key), 0o600)
    _write(pki.cdn_private_key, _key_pem(cdn_key), 0o600)
    _write(
        pki.cdn_public_key,
        cdn_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        0o644,
    )
    return pki
