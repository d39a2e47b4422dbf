"""X.509 certificates made locally with `cryptography`, where no Pulumi engine runs.

The fleet gets its certificates from pulumi-tls (components/internal_tls.py, components/access.py);
the lab's PKI (lab/pki.py), the lab's token signing pair (`auth.tokens.create_signing_pair`) and the
tests make the same kinds with `certificate`: a CA, a TLS server certificate, or a signing
certificate. The token service itself only reads certificates; this module is in `auth/` (and so
in the service's artifact) because `auth.tokens` uses it and lab and tests import from `auth`.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
# What the certificate is for: it decides the extensions (None: none at all).
Usage = Literal["ca", "server", "signing"]
# Valid from a little in the past, so a clock slightly behind still accepts a certificate just made.
BACKDATE = datetime.timedelta(minutes=5)


def distinguished_name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class Issuer:
    """The CA that signs a certificate: its key and its subject name."""

    key: PrivateKey
    name: x509.Name


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _alternative_names(hostnames: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def certificate(
    key: PrivateKey,
    subject: x509.Name,
    days: int,
    usage: Usage | None,
    *,
    issuer: Issuer | None = None,
    hostnames: Sequence[str] = (),
) -> x509.Certificate:
    """A certificate for `key` as `subject`, valid for `days`, signed by `issuer` (None: self-signed).

    - "ca": a CA that signs end-entity certificates only (path length 0), with a subject key id;
    - "server": a TLS server certificate for `hostnames` (IP addresses or DNS names);
    - "signing": a leaf whose key only signs (the token signing certificate).
    """
    signer = issuer or Issuer(key, subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if usage == "ca":
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
    elif usage == "server":
        builder = (
            builder.add_extension(_alternative_names(hostnames), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()), critical=False)
        )
    elif usage == "signing":
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
            _key_usage(digital_signature=True, cert_sign=False), critical=True
        )
    return builder.sign(signer.key, hashes.SHA256())


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PEM in the traditional format ("EC PRIVATE KEY" / "RSA PRIVATE KEY", PKCS#1), as
    pulumi-tls emits it: the registry's `cloudfront` middleware reads only PKCS#1."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
