"""The gate's configuration: one YAML (or JSON) file, validated before anything starts.

    upstream: https://127.0.0.1:5000                    # the local registry (host contract REGISTRY_PORT)
    upstream_ca_file: /etc/docker/registry/tls/ca.crt   # the CA of the registry's certificate
    upstream_server_name: registry.internal             # a name in that certificate
    public_keys: ["-----BEGIN PUBLIC KEY-----\\n..."]     # the stack's signing key(s), PEM SubjectPublicKeyInfo
    namespaces:                                         # a repository is protected when it equals a
      team-a: {require_signed: true}                    # namespace or lies under NAMESPACE/
      team-b:
        block_severity: HIGH                            # refuse findings at or above it (UNKNOWN..CRITICAL)
        unscanned: deny                                 # allow | deny (no report yet); default allow
        allow_vulnerabilities:                          # ids that do not count, through `expires` (UTC)
          - {id: CVE-2024-0001, expires: 2027-01-31}
    reports:                                            # where the scan reports are (scanner/report.py):
      bucket: registry-bucket                           # required when a namespace reads them
      region: eu-west-1
      endpoint_url: null                                # the lab: its moto server
      ca_bundle: null                                   # a CA file for that endpoint
      cache_seconds: 5                                  # a report (or its absence) is remembered this long
    cache_seconds: 300                                  # how long a valid signature is remembered per
                                                        # (repository, digest); 0: never
    cache_entries: 10000                                # at most this many remembered (oldest go first)

Several public keys: a signature by any of them counts (key rotation: sign with the new key, then drop
the old one). Errors name the key: `namespaces.Team-A: ...`.
"""

from __future__ import annotations

import datetime
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auth.config import ConfigError, describe_errors, read_document
from scanner.report import CVE_ID, SEVERITIES
from signing.references import valid_repository
from signing.verify import PublicKey, PublicKeyError, load_public_keys

__all__ = ["ConfigError", "GateConfig", "NamespacePolicy", "ReportsConfig", "load_config", "parse_config"]
MAX_REPORT_CACHE_SECONDS = 60  # the bound within which the gate sees a new or changed report


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AllowedVulnerability(_Frozen):
    id: str
    expires: datetime.date  # the last day (UTC) the entry counts

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not CVE_ID.match(value):
            raise ValueError(f"{value!r} is not a vulnerability id (e.g. CVE-2024-1234)")
        return value


class NamespacePolicy(_Frozen):
    require_signed: bool = False
    block_severity: str | None = None
    unscanned: Literal["allow", "deny"] = "allow"
    allow_vulnerabilities: tuple[AllowedVulnerability, ...] = ()

    @field_validator("block_severity")
    @classmethod
    def _severity(cls, value: str | None) -> str | None:
        if value is not None and value not in SEVERITIES:
            raise ValueError(f"{value!r}: one of {', '.join(SEVERITIES)}")
        return value

    @property
    def reads_reports(self) -> bool:
        """True when a pull in the namespace depends on the digest's scan report."""
        return self.block_severity is not None or self.unscanned == "deny"

    @property
    def gated(self) -> bool:
        return self.require_signed or self.reads_reports


class ReportsConfig(_Frozen):
    bucket: str = Field(min_length=3, max_length=63)
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    endpoint_url: str | None = None
    ca_bundle: Path | None = None
    cache_seconds: float = Field(default=5.0, ge=0, le=MAX_REPORT_CACHE_SECONDS)
    cache_entries: int = Field(default=10_000, ge=1, le=1_000_000)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urllib.parse.urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{value!r}: must be https://HOST[:PORT]")
        return value


def covering(namespaces: dict[str, NamespacePolicy], repository: str) -> list[tuple[str, NamespacePolicy]]:
    """(namespace, policy) of every namespace that covers `repository` (equal to it, or a parent), sorted."""
    return [
        (namespace, policy)
        for namespace, policy in sorted(namespaces.items())
        if repository == namespace or repository.startswith(namespace + "/")
    ]


def policies_for(namespaces: dict[str, NamespacePolicy], repository: str) -> list[NamespacePolicy]:
    """The policies of every namespace that covers `repository`, by namespace."""
    return [policy for _, policy in covering(namespaces, repository)]


class GateConfig(_Frozen):
    upstream: str
    upstream_ca_file: Path | None = None
    upstream_server_name: str | None = None
    public_keys: tuple[str, ...] = Field(min_length=1)
    namespaces: dict[str, NamespacePolicy] = Field(default_factory=dict)
    reports: ReportsConfig | None = None
    # The scanner's robot: it must read an image to scan it, before any report or signature exists, so its
    # pulls are served without either check (only with a token the registry accepted for that very request).
    scanner_accounts: tuple[str, ...] = ()
    cache_seconds: float = Field(default=300.0, ge=0, le=86_400)
    cache_entries: int = Field(default=10_000, ge=1, le=10_000_000)

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{value!r}: must be https://HOST[:PORT] (the local registry, over TLS)")
        return value.rstrip("/")

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            load_public_keys(value)
        except PublicKeyError as err:
            raise ValueError(str(err)) from None
        return value

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, value: dict[str, NamespacePolicy]) -> dict[str, NamespacePolicy]:
        for name in value:
            if not valid_repository(name):
                raise ValueError(f"{name}: not a repository path (lower-case letters, digits, . _ - and /)")
        return value

    @model_validator(mode="after")
    def _ca(self) -> GateConfig:
        if self.upstream_ca_file is not None and not self.upstream_ca_file.is_file():
            raise ValueError(f"upstream_ca_file: {self.upstream_ca_file}: no such file")
        if self.reports is not None and self.reports.ca_bundle is not None and not self.reports.ca_bundle.is_file():
            raise ValueError(f"reports.ca_bundle: {self.reports.ca_bundle}: no such file")
        reading = sorted(ns for ns, p in self.namespaces.items() if p.reads_reports)
        if reading and self.reports is None:
            raise ValueError(
                f"reports: missing; namespaces {reading} block on scan reports (block_severity or unscanned: deny), "
                "so the gate needs the reports' bucket and region"
            )
        return self

    def keys(self) -> list[PublicKey]:
        return load_public_keys(self.public_keys)

    def policies(self, repository: str) -> list[NamespacePolicy]:
        return policies_for(self.namespaces, repository)

    def protected(self, repository: str) -> bool:
        """True when `repository` is a gated namespace (a signature or a scan report required) or lies under one."""
        return any(policy.gated for policy in self.policies(repository))


def parse_config(data: Any, base_dir: Path, source: str = "config") -> GateConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    ca = data.get("upstream_ca_file")
    if isinstance(ca, str) and ca and not Path(ca).is_absolute():
        data = {**data, "upstream_ca_file": str(base_dir / ca)}
    reports = data.get("reports")
    bundle = reports.get("ca_bundle") if isinstance(reports, dict) else None
    if isinstance(reports, dict) and isinstance(bundle, str) and bundle and not Path(bundle).is_absolute():
        data = {**data, "reports": {**reports, "ca_bundle": str(base_dir / bundle)}}
    try:
        return GateConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}:\n{describe_errors(err)}") from None


def load_config(path: Path) -> GateConfig:
    return parse_config(read_document(path), path.resolve().parent, str(path))
