"""The token service's configuration: one YAML (or JSON) file, validated before anything starts.

    issuer: registry-fleet-token            # the registry's auth.token.issuer
    service: registry.dev.example.com       # the registry's auth.token.service (= the token's aud)
    token_lifetime_seconds: 300
    signing_key: /etc/registry-token/signing.key    # PEM, PKCS#1 or PKCS#8 (relative: to this file)
    signing_cert: /etc/registry-token/signing.crt   # the registry's auth.token.rootcertbundle
    bcrypt_min_cost: 10
    users: {alice: {password_hash: $2b$12$...}}
    policy: {teams: ..., robots: ..., admins: ..., rules: ...}      # auth/access.py
    lockout: {threshold: 5, window_seconds: 300, max_lock_seconds: 900, max_accounts_per_client: 100,
              table: registry-fleet-dev-lockout, region: eu-west-1}   # table: shared by the fleet
    credential_cache: {ttl_seconds: 300, directory_ttl_seconds: 60, max_entries: 10000}   # auth/cache.py
    refresh_tokens: {enabled: true, lifetime_seconds: 604800, revoked: []}   # auth/refresh.py
    trusted_proxies: [10.0.0.0/16]          # only the load balancer: its X-Forwarded-For names the client

Errors name the key, e.g. `policy.teams.team-b: ...` or `users.alice.password_hash: ...`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auth.access import AccessControl, bcrypt_cost
from auth.identity import account_key
from auth.ldap import LdapSettings
from auth.refresh import RefreshTokenSettings

MAX_ACCOUNT_CHARS = 256


class ConfigError(ValueError):
    """The configuration file is unusable; the message names the file, the key and the problem."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalUser(_Frozen):
    password_hash: str

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        if bcrypt_cost(value) is None:
            raise ValueError("is not a bcrypt hash ($2b$<cost>$..., 60 characters); never put the password here")
        return value


class LockoutSettings(_Frozen):
    threshold: int = Field(default=5, ge=1, le=100)
    window_seconds: float = Field(default=300.0, gt=0, le=86_400)
    max_lock_seconds: float = Field(default=900.0, gt=0, le=86_400)
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    # Distinct accounts one address may fail against within the window before the address waits.
    max_accounts_per_client: int = Field(default=100, ge=1, le=100_000)
    # The DynamoDB table the fleet shares the counters in (auth/shared_lockout.py); None: this process only.
    table: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")  # tests and the lab only

    @model_validator(mode="after")
    def _table(self) -> LockoutSettings:
        if self.table is not None and self.region is None:
            raise ValueError("table: needs region (the table's AWS region)")
        if self.table is None and (self.region is not None or self.endpoint_url is not None):
            raise ValueError("region: given without table")
        return self


class CredentialCacheSettings(_Frozen):
    """auth/cache.py: how long a verified account + secret is served from memory (0: never)."""

    ttl_seconds: float = Field(default=300.0, ge=0, le=900)
    # Directory accounts: their groups are re-read at least this often (the bound a removal takes).
    directory_ttl_seconds: float = Field(default=60.0, ge=0, le=60)
    max_entries: int = Field(default=10_000, ge=0, le=1_000_000)


def check_account_name(name: str) -> str | None:
    if not name or len(name) > MAX_ACCOUNT_CHARS:
        return f"account names are 1 to {MAX_ACCOUNT_CHARS} characters"
    if ":" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "an account name cannot hold ':' (HTTP Basic cannot carry it) or control characters"
    return None


class ServiceConfig(_Frozen):
    issuer: str = Field(min_length=1)
    service: str = Field(min_length=1)
    # The registry allows 60 s of clock skew on exp/nbf: a shorter lifetime buys nothing.
    token_lifetime_seconds: int = Field(default=300, ge=60, le=3600)
    signing_key: Path
    signing_cert: Path
    bcrypt_min_cost: int = Field(default=10, ge=4, le=31)
    users: dict[str, LocalUser] = Field(default_factory=dict)
    policy: AccessControl = Field(default_factory=AccessControl)
    lockout: LockoutSettings = Field(default_factory=LockoutSettings)
    credential_cache: CredentialCacheSettings = Field(default_factory=CredentialCacheSettings)
    refresh_tokens: RefreshTokenSettings = Field(default_factory=RefreshTokenSettings)
    trusted_proxies: tuple[str, ...] = ()
    max_scopes: int = Field(default=20, ge=1, le=100)
    # The company directory (LDAP/AD); local users and robots are tried first.
    ldap: LdapSettings | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as err:
                raise ValueError(f"{cidr!r} is not a network in CIDR form: {err}") from err
        return value

    @model_validator(mode="after")
    def _accounts(self) -> ServiceConfig:
        for kind, names in (("users", self.users), ("policy.robots", self.policy.robots)):
            for name in names:
                problem = check_account_name(name)
                if problem:
                    raise ValueError(f"{kind}.{name}: {problem}")
        both = sorted(set(self.users) & set(self.policy.robots))
        if both:
            raise ValueError(f"users.{both[0]}: also a robot (policy.robots.{both[0]}); an account is one or the other")
        seen: dict[str, str] = {}
        for kind, names in (("users", self.users), ("policy.robots", self.policy.robots)):
            for name in names:
                other = seen.setdefault(account_key(name), f"{kind}.{name}")
                if other != f"{kind}.{name}":
                    raise ValueError(
                        f"{kind}.{name}: the same account name as {other} once case and spacing are folded "
                        "(they would share one lockout counter and one directory spelling)"
                    )
        hashes = [(f"users.{n}.password_hash", u.password_hash) for n, u in self.users.items()]
        hashes += [(f"policy.robots.{n}.token_hash", r.token_hash) for n, r in self.policy.robots.items()]
        # (a robot's sha256: form has no cost: its token is generated, not chosen)
        for key, value in hashes:
            cost = bcrypt_cost(value)
            if cost is not None and cost < self.bcrypt_min_cost:
                raise ValueError(f"{key}: bcrypt cost {cost} is below bcrypt_min_cost ({self.bcrypt_min_cost})")
        return self

    @property
    def password_hashes(self) -> dict[str, str]:
        return {name: user.password_hash for name, user in self.users.items()}


_KEYED_MESSAGE = re.compile(r"[\w.\[\]$-]+: ")


def describe_errors(err: ValidationError) -> str:
    """One line per error, each starting with the full key (`policy.teams.team-b.namespaces[0]: ...`)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if loc and _KEYED_MESSAGE.match(msg):  # a cross-field check that names its own key below `loc`
            lines.append(f"{loc}.{msg}")
        else:
            lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n".join(lines)


def parse_config(data: Any, base_dir: Path, source: str = "config") -> ServiceConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        config = ServiceConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}:\n{describe_errors(err)}") from None
    resolved = {
        k: p if p.is_absolute() else (base_dir / p)
        for k, p in (("signing_key", config.signing_key), ("signing_cert", config.signing_cert))
    }
    return config.model_copy(update=resolved)


def read_document(path: Path) -> Any:
    """A configuration file's YAML (or JSON) document; ConfigError naming the file otherwise."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror})") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from err


def load_config(path: Path) -> ServiceConfig:
    return parse_config(read_document(path), path.resolve().parent, str(path))
