"""Typed settings for one registry-fleet stack.

Everything a stack can set lives in :class:`Settings`. Org-wide defaults live once in the
project file (`Pulumi.yaml`, `config:` section); a stack file (`stacks/Pulumi.<stack>.yaml`)
holds only what differs. :func:`load_stack_settings` merges the two (objects deep-merged,
lists replaced), validates, and either returns a frozen :class:`Settings` or raises
:class:`SettingsError` listing every problem as ``key.path: value: what is allowed``.

The same loader serves `pulumi up` (config from the engine), `python -m fleet validate`
and the tests (config read from the YAML files), so there is one source of truth.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from auth.access import AccessRule, Action, Team, ownership_problems
from auth.config import check_account_name
from auth.ldap import DEFAULT_GROUP_FILTER, DEFAULT_USER_FILTER, LdapSettings
from auth.refresh import RefreshTokenSettings

PROJECT = "registry-fleet"
REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILE = REPO_ROOT / "Pulumi.yaml"
STACKS_DIR = REPO_ROOT / "stacks"

# ALB security policies that allow TLS 1.2 and 1.3 only (no TLS 1.0/1.1, no CBC-only suites).
TLS_POLICIES = (
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-2023-04",
)

Environment = Literal["dev", "staging", "prod"]
# In promotion order: dev -> staging -> prod.
ENVIRONMENTS: tuple[Environment, ...] = ("dev", "staging", "prod")

_STACK = re.compile(r"^[a-z][a-z0-9-]{0,16}[a-z0-9]$")
_AMI = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
_ACCOUNT = re.compile(r"^\d{12}$")
_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_HOSTNAME = re.compile(r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_GRAVITON = re.compile(r"^[a-z]+\d+g[a-z]*\.")
_CRON = re.compile(r"^cron\((\S+ ){5}\S+\)$")
_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")


def _rule(message: str) -> PydanticCustomError:
    return PydanticCustomError("rule", message)


class _Model(BaseModel):
    """Frozen, camelCase in config, snake_case in code, unknown keys rejected."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=True,
    )


class CloudflareSettings(_Model):
    zone: str
    zone_id: str

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise _rule("not a DNS zone name like example.com")
        return v

    @field_validator("zone_id")
    @classmethod
    def _zone_id(cls, v: str) -> str:
        if not _ZONE_ID.match(v):
            raise _rule("a Cloudflare zone id is 32 lowercase hex characters (dashboard: Overview)")
        return v


class NetworkSettings(_Model):
    cidr: str
    az_count: int
    nat_gateways: Literal["per-az", "single"]
    load_balancer_scheme: Literal["internet-facing", "internal"]
    allowed_cidrs: tuple[str, ...]

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.IPv4Network(v)
        except ValueError:
            raise _rule("not an IPv4 network in CIDR form like 10.40.0.0/16") from None
        if not net.is_private:
            raise _rule("the VPC range must be private (RFC 1918)")
        if not 16 <= net.prefixlen <= 22:
            raise _rule("prefix must be /16 to /22 so that every zone gets a public and a private subnet")
        return v

    @field_validator("az_count")
    @classmethod
    def _az_count(cls, v: int) -> int:
        if v < 2:
            raise _rule("is below 2: the fleet and the load balancer span at least two zones")
        if v > 6:
            raise _rule("is above 6: no AWS region offers more zones to a VPC")
        return v

    @field_validator("allowed_cidrs")
    @classmethod
    def _allowed(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise _rule("empty: list the client ranges that may reach the registry (0.0.0.0/0 for anyone)")
        bad = []
        for cidr in v:
            try:
                ipaddress.IPv4Network(cidr)
            except ValueError:
                bad.append(cidr)
        if bad:
            raise _rule(
                f"not IPv4 CIDR ranges: {', '.join(bad)} (host bits must be zero, e.g. 203.0.113.0/24; "
                "the load balancer is IPv4 only)"
            )
        return v


class FleetSettings(_Model):
    instance_type: str
    min_size: int
    max_size: int
    desired_capacity: int
    root_volume_gib: int = Field(alias="rootVolumeGiB")
    # Pin the host image. Unset: the newest Debian 12 image at each `pulumi up`, which rolls the
    # fleet whenever Debian publishes one.
    image_id: str | None = None

    @field_validator("image_id")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and not _AMI.match(v):
            raise _rule("not an AMI id like ami-0123456789abcdef0")
        return v

    @field_validator("instance_type")
    @classmethod
    def _itype(cls, v: str) -> str:
        if not _INSTANCE_TYPE.match(v):
            raise _rule("not an EC2 instance type like m7g.large")
        return v

    @field_validator("min_size")
    @classmethod
    def _min(cls, v: int) -> int:
        if v < 2:
            raise _rule("is below 2: a registry fleet needs two hosts in two zones")
        return v

    @field_validator("root_volume_gib")
    @classmethod
    def _root(cls, v: int) -> int:
        if not 8 <= v <= 512:
            raise _rule("is outside 8..512 GiB (blobs live in S3; the disk holds the OS and logs)")
        return v

    @property
    def architecture(self) -> Literal["arm64", "amd64"]:
        """Debian's name for the CPU architecture of the instance type (Graviton is arm64)."""
        return "arm64" if _GRAVITON.match(self.instance_type) else "amd64"


class TlsSettings(_Model):
    policy: str

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v not in TLS_POLICIES:
            raise _rule(f"not a TLS 1.2+/1.3 ALB policy; allowed: {', '.join(TLS_POLICIES)}")
        return v


class ObjectLockSettings(_Model):
    enabled: bool
    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    days: int

    @field_validator("days")
    @classmethod
    def _days(cls, v: int) -> int:
        if not 1 <= v <= 3650:
            raise _rule("is outside 1..3650 days")
        return v


class StorageSettings(_Model):
    noncurrent_version_days: int
    abort_incomplete_upload_days: int
    replication_time_control: bool
    object_lock: ObjectLockSettings
    chunk_size_mib: int = Field(alias="chunkSizeMiB")

    @field_validator("noncurrent_version_days")
    @classmethod
    def _nc(cls, v: int) -> int:
        if not 1 <= v <= 3650:
            raise _rule("is outside 1..3650 days")
        return v

    @field_validator("abort_incomplete_upload_days")
    @classmethod
    def _abort(cls, v: int) -> int:
        if not 1 <= v <= 30:
            raise _rule("is outside 1..30 days")
        return v

    @field_validator("chunk_size_mib")
    @classmethod
    def _chunk(cls, v: int) -> int:
        if not 5 <= v <= 512:
            raise _rule("is outside 5..512 MiB (S3 multipart parts are at least 5 MiB)")
        return v


class BackupSettings(_Model):
    schedule: str
    retention_days: int
    continuous: bool
    continuous_retention_days: int
    # governance: admins with a special permission may lift the lock; compliance: nobody can, ever.
    vault_lock_mode: Literal["governance", "compliance"]

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if not _CRON.match(v):
            raise _rule("not an AWS Backup schedule like cron(0 5 * * ? *) (six fields, UTC)")
        return v

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if not 7 <= v <= 36500:
            raise _rule("is outside 7..36500 days: keep at least a week of daily backups")
        return v

    @field_validator("continuous_retention_days")
    @classmethod
    def _continuous(cls, v: int) -> int:
        if not 1 <= v <= 35:
            raise _rule("is outside 1..35 days: continuous (point-in-time) backup keeps at most 35")
        return v


class CdnSettings(_Model):
    enabled: bool
    price_class: Literal["PriceClass_100", "PriceClass_200", "PriceClass_All"]
    signed_url_seconds: int
    alias: bool

    @field_validator("signed_url_seconds")
    @classmethod
    def _ttl(cls, v: int) -> int:
        if not 60 <= v <= 3600:
            raise _rule("is outside 60..3600 seconds: a signed blob URL must outlive one download, not a day")
        return v


class Waiver(_Model):
    """A stack's documented exception to one policy rule, until a date."""

    rule: str
    reason: str
    expires: datetime.date

    @field_validator("rule")
    @classmethod
    def _rule_id(cls, v: str) -> str:
        if not re.match(r"^[a-z][a-z0-9-]+$", v):
            raise _rule("a rule id is kebab-case, as `python -m fleet audit` prints it")
        return v

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if len(v) < 10:
            raise _rule("say why the rule is waived and what ends the waiver (at least 10 characters)")
        return v


class DirectorySettings(_Model):
    """The company directory (LDAP/AD) the token service asks. The service account's password is a
    Pulumi secret (`registry-fleet:ldapBindPassword`), never a setting."""

    url: str  # ldaps://host[:port], or ldap://host[:port] with startTls: true
    start_tls: bool = False
    # PEM of the CA that signed the directory's certificate; unset: the hosts' system CA bundle.
    ca_certificate: str | None = None
    bind_dn: str
    user_base_dn: str
    user_filter: str = DEFAULT_USER_FILTER
    username_attribute: str = "uid"
    group_mode: Literal["memberOf", "search"] = "search"
    group_base_dn: str | None = None
    group_filter: str = DEFAULT_GROUP_FILTER
    group_name_attribute: str = "cn"
    timeout_seconds: int = 5
    # Where the directory servers are: the only ranges the hosts may reach on the directory's port.
    cidrs: tuple[str, ...]

    @field_validator("ca_certificate")
    @classmethod
    def _ca(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("-----BEGIN CERTIFICATE-----") or "PRIVATE KEY" in v):
            raise _rule("a PEM certificate (-----BEGIN CERTIFICATE-----), the CA's public certificate only")
        return v

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise _rule("empty: list the ranges of the directory servers (the hosts may reach only these)")
        bad = [c for c in v if not _is_ipv4_network(c)]
        if bad:
            raise _rule(f"not IPv4 CIDR ranges: {', '.join(bad)} (host bits must be zero, e.g. 10.20.0.0/24)")
        return v

    @model_validator(mode="after")
    def _as_ldap(self) -> DirectorySettings:
        # The token service's own rules for URLs, DNs, filters and TLS (auth/ldap.py): one source of truth.
        try:
            self.ldap_settings("/etc/registry-token/ldap-ca.pem", "placeholder")
        except ValidationError as err:
            raise _rule("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
        return self

    def ldap_settings(self, ca_file: str, bind_password: str) -> LdapSettings:
        """The token service's directory settings (auth/ldap.py), with the host's CA path and the password."""
        fields = self.model_dump(exclude={"ca_certificate", "cidrs"})
        return LdapSettings(**fields, ca_file=Path(ca_file), bind_password=SecretStr(bind_password))

    @property
    def port(self) -> int:
        return self.ldap_settings("/ca.pem", "x").port


class RobotSettings(_Model):
    """A CI account: one namespace, fixed actions, valid through `expires` (UTC). Its token is
    generated by the stack and kept in Secrets Manager; bump `rotation` to issue a new one."""

    namespace: str
    actions: tuple[Action, ...] = Field(min_length=1)
    expires: datetime.date
    rotation: int = Field(default=1, ge=1)

    @property
    def expires_at(self) -> datetime.datetime:
        """The robot works through its expiry day: it stops at the next midnight UTC."""
        day = self.expires + datetime.timedelta(days=1)
        return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)


class TokenSigningSettings(_Model):
    """The token signing key generations the stack keeps, and the one the token service signs with.

    Each live generation is a key and its self-signed certificate (components/access.py); every host
    trusts all of them (the registry's rootcertbundle) and signs with `current`. Rotating is three
    `pulumi up`s, each rolling the fleet: add the next generation ([1, 2], current 1), sign with it
    (current 2), drop the old one ([2], current 2). Skipping a step makes hosts refuse each other's tokens.
    """

    # Strict: a generation is a number, never `true` or "2" (YAML would coerce them silently).
    generations: tuple[StrictInt, ...] = (1,)
    current: StrictInt = 1

    @field_validator("generations")
    @classmethod
    def _generations(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not 1 <= len(v) <= 2:
            raise _rule("must list 1 or 2 generations: the one in use and, during a rotation, the next (e.g. [1, 2])")
        if any(g < 1 for g in v):
            raise _rule("must hold positive integers: generations are numbered 1, 2, 3...")
        if len(set(v)) != len(v):
            raise _rule("must list distinct generations: one key each (e.g. [1, 2])")
        if list(v) != sorted(v):
            raise _rule("is not in ascending order: list the older generation first (e.g. [1, 2])")
        return v


class AccessSettings(_Model):
    """Who may pull, push and delete: token auth (the token service) or, for small stacks, htpasswd.

    Token mode: teams own namespaces and give roles to accounts (`members`) and directory groups
    (`groups`); `admins` may do everything; `rules` add exceptions in order; anything else is denied.
    Local users' bcrypt hashes are the Pulumi secret `registry-fleet:accessUserHashes` (a JSON object
    name -> hash). The model is the token service's own (auth/access.py).
    """

    mode: Literal["token", "htpasswd"]
    token_lifetime_seconds: int = 300
    teams: dict[str, Team] = Field(default_factory=dict)
    admins: tuple[str, ...] = ()
    rules: tuple[AccessRule, ...] = ()
    users: tuple[str, ...] = ()
    robots: dict[str, RobotSettings] = Field(default_factory=dict)
    ldap: DirectorySettings | None = None
    token_signing: TokenSigningSettings = TokenSigningSettings()
    # OAuth2 refresh tokens (`access_type=offline`): lifetime and revoked ids; the service's own model.
    refresh_tokens: RefreshTokenSettings = RefreshTokenSettings()
    # Where hosts install the token service's pinned, hash-checked wheels from (a company mirror, or PyPI).
    pip_index_url: str = "https://pypi.org/simple"

    @field_validator("token_lifetime_seconds")
    @classmethod
    def _lifetime(cls, v: int) -> int:
        if not 60 <= v <= 3600:
            raise _rule("is outside 60..3600 seconds: the registry allows 60 s of clock skew; keep tokens short")
        return v

    @field_validator("pip_index_url")
    @classmethod
    def _index(cls, v: str) -> str:
        if not re.match(r"^https://[^\s/@]+(/\S*)?$", v):
            raise _rule("an https:// URL without credentials (e.g. https://pypi.org/simple)")
        return v


class Settings(_Model):
    """All settings of one stack. Built only through :func:`settings_from_config`."""

    stack: str
    environment: Environment
    team: str
    owner: str
    domain: str
    cloudflare: CloudflareSettings
    region: str
    replica_region: str
    # The AWS account this stack must deploy into: the providers refuse any other credentials.
    account_id: str | None = None
    network: NetworkSettings
    fleet: FleetSettings
    tls: TlsSettings
    storage: StorageSettings
    backup: BackupSettings
    cdn: CdnSettings
    access: AccessSettings
    # Unknown rule ids and expired waivers are errors of the audit and the policy pack.
    waivers: tuple[Waiver, ...] = ()

    @field_validator("stack")
    @classmethod
    def _stack(cls, v: str) -> str:
        if not _STACK.match(v):
            raise _rule(
                "a stack name here is lowercase letters, digits and dashes, at most 18 characters: "
                "it prefixes bucket names, which S3 limits"
            )
        return v

    @field_validator("team")
    @classmethod
    def _team(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise _rule("a team is a lowercase slug: letters, digits, dashes, 2..32 characters")
        return v

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str) -> str:
        if not v or len(v) > 128:
            raise _rule("name who answers for this stack (an email or a team alias, at most 128 characters)")
        return v

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise _rule("not a DNS name like registry.example.com's parent, e.g. dev.example.com")
        return v

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        if v is not None and not _ACCOUNT.match(v):
            raise _rule("an AWS account id is 12 digits, quoted in YAML so it stays a string")
        return v

    @field_validator("region", "replica_region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION.match(v):
            raise _rule("not an AWS region name like eu-west-1")
        return v

    # Derived values: one place, used by every component and renderer.
    @property
    def registry_host(self) -> str:
        return f"registry.{self.domain}"

    @property
    def token_issuer(self) -> str:
        """The token service's `iss`, which the registry's auth.token.issuer must equal."""
        return f"registry-fleet-{self.stack}"

    @property
    def cdn_alias_host(self) -> str | None:
        return f"blobs.{self.domain}" if self.cdn.enabled and self.cdn.alias else None

    @property
    def tags(self) -> dict[str, str]:
        return {
            "environment": self.environment,
            "team": self.team,
            "owner": self.owner,
            "stack": self.stack,
            "managed-by": "pulumi/registry-fleet",
        }


@dataclass(frozen=True)
class Problem:
    path: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = json.dumps(self.value) if self.value is not _MISSING else "(missing)"
        # "fleet.minSize: 1 is below 2: ..." reads as a sentence; other messages follow a colon.
        sep = " " if self.message.split(" ", 1)[0] in _VERBS else ": "
        return f"{self.path}: {shown}{sep}{self.message}"


_MISSING: Any = object()
_VERBS = {"is", "equals", "exceeds", "must"}


class SettingsError(Exception):
    """Invalid settings: every problem, each naming key path, value and what is allowed."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the stack settings:\n{lines}")


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        in_mapping = isinstance(data, Mapping) and part in data
        in_list = isinstance(data, list | tuple) and isinstance(part, int) and part < len(data)
        if in_mapping or in_list:
            data = data[part]
        else:
            return _MISSING
    return data


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Settings
    for part in loc:
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model  # type: ignore[no-any-return]


def _problems_from(err: ValidationError, data: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        value = _lookup(data, loc)
        if e["type"] == "missing":
            parent = _model_at(loc[:-1])
            hint = "required; set it in the stack file or as a default in Pulumi.yaml"
            problems.append(Problem(path, _MISSING, hint if parent else "required"))
        elif e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = ", ".join(_allowed_keys(parent)) if parent else "none"
            problems.append(Problem(path, value, f"unknown key; allowed here: {allowed}"))
        else:
            problems.append(Problem(path, value, e["msg"]))
    return problems


def _cross_checks(s: Settings) -> list[Problem]:
    """Rules that relate several keys; run once every key has the right shape."""
    out = []
    f = s.fleet
    if f.max_size < f.min_size:
        out.append(Problem("fleet.maxSize", f.max_size, f"is below fleet.minSize ({f.min_size})"))
    if not f.min_size <= f.desired_capacity <= f.max_size:
        out.append(
            Problem(
                "fleet.desiredCapacity",
                f.desired_capacity,
                f"must lie within fleet.minSize..fleet.maxSize ({f.min_size}..{f.max_size})",
            )
        )
    if s.environment == "prod" and s.network.az_count < 3:
        out.append(Problem("network.azCount", s.network.az_count, "is below 3: prod runs in three zones"))
    if f.min_size < min(s.network.az_count, 3):
        out.append(
            Problem(
                "fleet.minSize",
                f.min_size,
                f"is below the zone count ({min(s.network.az_count, 3)}): every zone in use needs a host",
            )
        )
    if s.replica_region == s.region:
        out.append(Problem("replicaRegion", s.replica_region, "equals region: the replica must live in another region"))
    zone = s.cloudflare.zone
    if s.domain != zone and not s.domain.endswith("." + zone):
        out.append(Problem("domain", s.domain, f"is not inside the Cloudflare zone cloudflare.zone ({zone})"))
    if s.backup.continuous and s.backup.continuous_retention_days > s.backup.retention_days:
        out.append(
            Problem(
                "backup.continuousRetentionDays",
                s.backup.continuous_retention_days,
                f"exceeds backup.retentionDays ({s.backup.retention_days})",
            )
        )
    if s.environment == "prod" and s.network.nat_gateways != "per-az":
        out.append(
            Problem(
                "network.natGateways",
                s.network.nat_gateways,
                "prod needs per-az: a single NAT gateway is a zone-wide single point of failure",
            )
        )
    if s.environment == "prod" and s.cdn.enabled and not s.cdn.alias:
        out.append(
            Problem(
                "cdn.alias",
                s.cdn.alias,
                "prod needs true: the default *.cloudfront.net certificate still accepts TLS 1.0",
            )
        )
    out += _access_problems(s)
    return out


def _is_ipv4_network(cidr: str) -> bool:
    try:
        ipaddress.IPv4Network(cidr)
    except ValueError:
        return False
    return True


def _access_problems(s: Settings) -> list[Problem]:
    a = s.access
    out: list[Problem] = []
    if a.mode == "htpasswd":
        if s.environment == "prod":
            out.append(Problem("access.mode", a.mode, "prod needs token: htpasswd lets every user push everywhere"))
        for key in ("teams", "admins", "rules", "users", "robots", "ldap"):
            if getattr(a, key):
                out.append(Problem(f"access.{key}", "(set)", "applies to mode token only; remove it or use mode token"))
        # Pulumi.yaml gives every stack the default: only a value that differs from it is a mistake.
        if a.refresh_tokens != RefreshTokenSettings():
            out.append(
                Problem("access.refreshTokens", "(set)", "applies to mode token only; remove it or use mode token")
            )
        if a.token_signing != TokenSigningSettings():
            out.append(
                Problem(
                    "access.tokenSigning",
                    a.token_signing.model_dump(by_alias=True, mode="json"),
                    "applies to mode token only; remove it or use mode token",
                )
            )
        return out
    if not a.teams and not a.admins:
        out.append(Problem("access.teams", {}, "is empty: in token mode give at least one team a namespace"))
    signing = a.token_signing
    if signing.current not in signing.generations:
        out.append(
            Problem(
                "access.tokenSigning.current",
                signing.current,
                f"is not in access.tokenSigning.generations ({list(signing.generations)}): the service signs "
                "with a live generation only",
            )
        )
    for key, message in ownership_problems(a.teams, {n: r.namespace for n, r in a.robots.items()}):
        out.append(Problem(f"access.{key}", _lookup_access(a, key), message))
    accounts = [(f"access.users[{i}]", u) for i, u in enumerate(a.users)]
    accounts += [(f"access.admins[{i}]", n) for i, n in enumerate(a.admins)]
    accounts += [(f"access.robots.{n}", n) for n in a.robots]
    for team_name, team in a.teams.items():
        accounts += [(f"access.teams.{team_name}.members.{m}", m) for m in team.members]
    for key, name in accounts:
        problem = check_account_name(name)
        if problem:
            out.append(Problem(key, name, problem))
    for name in sorted(set(a.users) & set(a.robots)):
        out.append(Problem(f"access.robots.{name}", name, "is also in access.users: an account is a user or a robot"))
    if len(set(a.users)) != len(a.users):
        out.append(Problem("access.users", list(a.users), "lists a user twice"))
    robot_names = set(a.robots)
    for team_name, team in a.teams.items():
        if team.groups and a.ldap is None:
            out.append(
                Problem(
                    f"access.teams.{team_name}.groups",
                    dict(team.groups),
                    "maps directory groups, but access.ldap is not set: no account would ever be in them",
                )
            )
        for member in sorted(set(team.members) & robot_names):
            out.append(
                Problem(
                    f"access.teams.{team_name}.members.{member}",
                    member,
                    "is a robot: robots get their own grant (access.robots), never team roles",
                )
            )
    for i, admin in enumerate(a.admins):
        if admin in robot_names:
            out.append(Problem(f"access.admins[{i}]", admin, "is a robot: a CI account is never an admin"))
    return out


def _lookup_access(a: AccessSettings, key: str) -> Any:
    """The value at an ownership problem's key (teams.X.namespaces[i] or robots.X.namespace)."""
    m = re.fullmatch(r"teams\.(.+)\.namespaces\[(\d+)\]", key)
    if m:
        return a.teams[m.group(1)].namespaces[int(m.group(2))]
    m = re.fullmatch(r"robots\.(.+)\.namespace", key)
    return a.robots[m.group(1)].namespace if m else _MISSING


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Objects merge key by key; any other value (lists included) replaces the base."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def settings_from_config(stack: str, config: Mapping[str, Any], source: str = "") -> Settings:
    """Validate a merged config mapping (keys without the project namespace)."""
    source = source or f"stack {stack}"
    if "stack" in config:
        raise SettingsError(source, [Problem("stack", config["stack"], "set by Pulumi from the stack name; remove it")])
    data = {**config, "stack": stack}
    try:
        settings = Settings.model_validate(data)
    except ValidationError as err:
        raise SettingsError(source, _problems_from(err, data)) from None
    problems = _cross_checks(settings)
    if problems:
        raise SettingsError(source, problems)
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SettingsError(str(path), [Problem("(file)", str(path), "no such file")]) from None
    except yaml.YAMLError as err:
        raise SettingsError(str(path), [Problem("(file)", str(path), f"not valid YAML: {err}")]) from None
    if not isinstance(data, dict):
        raise SettingsError(str(path), [Problem("(file)", str(path), "must be a YAML mapping")])
    return data


def project_defaults(project_file: Path = PROJECT_FILE) -> dict[str, Any]:
    """The `config:` defaults of Pulumi.yaml for this project's own keys."""
    out: dict[str, Any] = {}
    for key, decl in (_read_yaml(project_file).get("config") or {}).items():
        if ":" in key:  # provider keys such as aws:region are not settings
            continue
        if isinstance(decl, dict) and ("default" in decl or "value" in decl):
            out[key] = decl.get("value", decl.get("default"))
        elif not isinstance(decl, dict):
            out[key] = decl
    return out


def stack_file(stack: str, stacks_dir: Path = STACKS_DIR) -> Path:
    return stacks_dir / f"Pulumi.{stack}.yaml"


def stack_overrides(path: Path) -> dict[str, Any]:
    """This project's keys from a stack file (`registry-fleet:fleet` -> `fleet`)."""
    out: dict[str, Any] = {}
    for key, value in (_read_yaml(path).get("config") or {}).items():
        namespace, _, name = str(key).partition(":")
        if namespace == PROJECT and name:
            out[name] = value
    return out


def available_stacks(stacks_dir: Path = STACKS_DIR) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))


def merged_stack_config(stack: str, stacks_dir: Path = STACKS_DIR, project_file: Path = PROJECT_FILE) -> dict[str, Any]:
    """A stack file's keys over the Pulumi.yaml defaults, before validation."""
    return deep_merge(project_defaults(project_file), stack_overrides(stack_file(stack, stacks_dir)))


def load_stack_settings(stack: str, stacks_dir: Path = STACKS_DIR, project_file: Path = PROJECT_FILE) -> Settings:
    """Settings for a stack read from the files, without the Pulumi engine."""
    path = stack_file(stack, stacks_dir)
    if not path.exists():
        known = ", ".join(available_stacks(stacks_dir)) or "none"
        raise SettingsError(f"stack {stack}", [Problem("(stack)", stack, f"no file {path}; known stacks: {known}")])
    merged = merged_stack_config(stack, stacks_dir, project_file)
    return settings_from_config(stack, merged, source=str(path.relative_to(path.parent.parent)))


def load_from_pulumi() -> Settings:
    """Settings inside a Pulumi run: the engine's config over the Pulumi.yaml defaults."""
    import pulumi

    cfg = pulumi.Config()
    engine: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        key = field.alias or name
        raw = cfg.get(key)
        if raw is None:
            continue
        try:
            engine[key] = json.loads(raw) if raw[:1] in "{[" else raw
        except json.JSONDecodeError:
            engine[key] = raw
    return settings_from_config(pulumi.get_stack(), deep_merge(project_defaults(), engine))
