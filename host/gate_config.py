"""The gate's configuration (gate/config.py reads it), rendered from the protected namespaces' pull
policies, the stack's public signing key and where the scan reports are.

Pure: plain values in, YAML text out, no Pulumi import. The fleet feeds it the signing key's public key
(a stack output, resolved inside the fleet's one `apply`), the policies of `infra.settings.protected_namespaces`
(infra/gate_spec.py) and the registry bucket; the lab feeds it its own key and its moto S3. The text holds
no secret (a public key, namespace names, CVE ids, a bucket name, local addresses): it goes into user-data
as a public file at GATE_CONFIG_FILE.

The format is the shared contract of issue 13 (gate/config.py owns the model that reads it):

    upstream: https://127.0.0.1:5000
    upstream_ca_file: /etc/docker/registry/tls/ca.crt
    upstream_server_name: registry.internal
    public_keys: ["-----BEGIN PUBLIC KEY-----\\n..."]
    namespaces: {NAMESPACE: {require_signed: true, block_severity: HIGH, unscanned: deny,
                             allow_vulnerabilities: [{id: CVE-..., expires: "YYYY-MM-DD"}]}}
    reports: {bucket: BUCKET, region: REGION}      # only when a namespace reads scan reports
    scanner_accounts: [registry-scanner]           # served unchecked: the scanner reads images before any check
    cache_seconds: 300

Optional keys are written only when set: a namespace that only requires signatures is `{require_signed:
true}`, and a stack without scan blocking has no `reports`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from host.boot import BlockStyleDumper
from host.contract import CA_CERT_FILE, GATE_CACHE_SECONDS, HOST_INTERNAL_NAME, REGISTRY_PORT
from host.scan_config import SCANNER_ROBOT

_PUBLIC_KEY = re.compile(r"^-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END PUBLIC KEY-----\s*$")
_NAMESPACE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


def check_public_key(pem: str) -> str:
    """`pem` with LF line ends, when it is one SubjectPublicKeyInfo PEM of an EC P-256 key, the only kind the
    gate verifies with (signing/verify.py, what KMS GetPublicKey gives for the ECC_NIST_P256 signing key);
    ValueError naming the problem otherwise."""
    if "PRIVATE KEY" in pem:
        raise ValueError("the gate's public key holds a private key: the gate needs the public key only")
    if not _PUBLIC_KEY.match(pem):
        raise ValueError(
            "the gate's public key must be one PEM block -----BEGIN PUBLIC KEY----- (SubjectPublicKeyInfo)"
        )
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as err:
        raise ValueError(f"the gate's public key does not load: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"the gate's public key is a {type(key).__name__}; expected an EC P-256 key")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"the gate's public key is on curve {key.curve.name}; expected P-256")
    return pem.replace("\r\n", "\n").strip() + "\n"


_SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # scanner/report.py SEVERITIES


@dataclass(frozen=True)
class GatePolicy:
    """One namespace's pull policy, as the gate applies it (effective values: `unscanned` resolved)."""

    require_signed: bool = False
    block_severity: str | None = None
    unscanned: str = "allow"  # allow | deny
    allow_vulnerabilities: tuple[tuple[str, datetime.date], ...] = ()  # (id, last day it counts)

    @property
    def reads_reports(self) -> bool:
        return self.block_severity is not None or self.unscanned == "deny"

    def entry(self) -> dict[str, Any]:
        """The config's entry: only the keys set. ValueError for a policy that asks the gate for nothing."""
        if self.block_severity is not None and self.block_severity not in _SEVERITIES:
            raise ValueError(f"block_severity {self.block_severity!r}: one of {', '.join(_SEVERITIES)}")
        if self.unscanned not in ("allow", "deny"):
            raise ValueError(f"unscanned {self.unscanned!r}: allow or deny")
        out: dict[str, Any] = {}
        if self.require_signed:
            out["require_signed"] = True
        if self.block_severity is not None:
            out["block_severity"] = self.block_severity
        if self.unscanned == "deny":
            out["unscanned"] = "deny"
        if self.allow_vulnerabilities:
            out["allow_vulnerabilities"] = [{"id": i, "expires": d.isoformat()} for i, d in self.allow_vulnerabilities]
        if not self.require_signed and not self.reads_reports:
            raise ValueError("a gate policy needs require_signed, block_severity or unscanned: deny")
        return out


@dataclass(frozen=True)
class ReportsLocation:
    """Where the gate reads scan reports: the registry bucket (scanner/report.py keys) and its region."""

    bucket: str
    region: str


def gate_config(
    namespaces: Sequence[str] | Mapping[str, GatePolicy],
    public_key_pems: Sequence[str],
    cache_seconds: int = GATE_CACHE_SECONDS,
    reports: ReportsLocation | None = None,
    scanner_accounts: Sequence[str] = (SCANNER_ROBOT,),
) -> dict[str, Any]:
    """The gate's config as a mapping (contract keys). `namespaces`: each namespace's policy, or names only
    (each requires signatures). `reports`: needed when a policy reads scan reports, and written only then.
    Raises ValueError naming the problem."""
    policies = (
        dict(namespaces)
        if isinstance(namespaces, Mapping)
        else {ns: GatePolicy(require_signed=True) for ns in namespaces}
    )
    if isinstance(namespaces, Mapping):
        namespaces = list(namespaces)
    if not namespaces:
        raise ValueError("the gate needs at least one protected namespace (a stack that protects none runs no gate)")
    bad = [ns for ns in namespaces if not _NAMESPACE.match(ns)]
    if bad:
        raise ValueError(f"not repository namespaces: {bad} (lower-case path components such as 'payments/app')")
    if len(set(namespaces)) != len(namespaces):
        raise ValueError(f"namespaces listed twice: {sorted(ns for ns in set(namespaces) if namespaces.count(ns) > 1)}")
    if not public_key_pems:
        raise ValueError("the gate needs the stack's public signing key")
    if isinstance(cache_seconds, bool) or not isinstance(cache_seconds, int) or cache_seconds < 1:
        raise ValueError(f"cache_seconds must be a positive integer; got {cache_seconds!r}")
    entries: dict[str, Any] = {}
    for ns in sorted(namespaces):
        try:
            entries[ns] = policies[ns].entry()
        except ValueError as err:
            raise ValueError(f"namespace {ns}: {err}") from None
    reading = sorted(ns for ns, policy in policies.items() if policy.reads_reports)
    if reading and reports is None:
        raise ValueError(f"namespaces {reading} block on scan reports: the gate needs the reports' bucket and region")
    data: dict[str, Any] = {
        "upstream": f"https://127.0.0.1:{REGISTRY_PORT}",
        "upstream_ca_file": CA_CERT_FILE,
        "upstream_server_name": HOST_INTERNAL_NAME,
        "public_keys": [check_public_key(pem) for pem in public_key_pems],
        "namespaces": entries,
    }
    if reading and reports is not None:
        data["reports"] = {"bucket": reports.bucket, "region": reports.region}
    data["scanner_accounts"] = list(scanner_accounts)
    data["cache_seconds"] = cache_seconds
    return data


def render_gate_config(
    namespaces: Sequence[str] | Mapping[str, GatePolicy],
    public_key_pems: Sequence[str],
    cache_seconds: int = GATE_CACHE_SECONDS,
    reports: ReportsLocation | None = None,
) -> str:
    """The config file's text (YAML; PEMs as `|` blocks)."""
    return dump_gate_config(gate_config(namespaces, public_key_pems, cache_seconds, reports))


def dump_gate_config(data: dict[str, Any]) -> str:
    """A `gate_config` mapping as the file's text (the lab changes its endpoints first: lab/overrides.py)."""
    return yaml.dump(data, Dumper=BlockStyleDumper, sort_keys=False, width=1000)
