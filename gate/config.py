"""The gate's configuration: one YAML (or JSON) file, validated before anything starts.

    upstream: https://127.0.0.1:5000                    # the local registry (host contract REGISTRY_PORT)
    upstream_ca_file: /etc/docker/registry/tls/ca.crt   # the CA of the registry's certificate
    upstream_server_name: registry.internal             # a name in that certificate
    public_keys: ["-----BEGIN PUBLIC KEY-----\\n..."]     # the stack's signing key(s), PEM SubjectPublicKeyInfo
    namespaces: {team-a: {require_signed: true}}        # a repository is protected when it equals a
                                                        # namespace or lies under NAMESPACE/
    cache_seconds: 300                                  # how long a valid signature is remembered per
                                                        # (repository, digest); 0: never
    cache_entries: 10000                                # at most this many remembered (oldest go first)

Several public keys: a signature by any of them counts (key rotation: sign with the new key, then drop
the old one). Errors name the key: `namespaces.Team-A: ...`.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auth.config import ConfigError, describe_errors, read_document
from signing.references import valid_repository
from signing.verify import PublicKey, PublicKeyError, load_public_keys

__all__ = ["ConfigError", "GateConfig", "NamespacePolicy", "load_config", "parse_config"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NamespacePolicy(_Frozen):
    require_signed: bool = False


class GateConfig(_Frozen):
    upstream: str
    upstream_ca_file: Path | None = None
    upstream_server_name: str | None = None
    public_keys: tuple[str, ...] = Field(min_length=1)
    namespaces: dict[str, NamespacePolicy] = Field(default_factory=dict)
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
        return self

    def keys(self) -> list[PublicKey]:
        return load_public_keys(self.public_keys)

    def protected(self, repository: str) -> bool:
        """True when `repository` is a protected namespace or lies under one."""
        for namespace, policy in self.namespaces.items():
            if policy.require_signed and (repository == namespace or repository.startswith(namespace + "/")):
                return True
        return False


def parse_config(data: Any, base_dir: Path, source: str = "config") -> GateConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    ca = data.get("upstream_ca_file")
    if isinstance(ca, str) and ca and not Path(ca).is_absolute():
        data = {**data, "upstream_ca_file": str(base_dir / ca)}
    try:
        return GateConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}:\n{describe_errors(err)}") from None


def load_config(path: Path) -> GateConfig:
    return parse_config(read_document(path), path.resolve().parent, str(path))
