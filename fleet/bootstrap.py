"""`python -m fleet bootstrap`: the S3 bucket and KMS key that a self-managed Pulumi backend needs.

The state bucket holds every stack's state (and so every resource id and, encrypted, every
secret). It gets versioning, SSE-KMS with a bucket key, all four Block Public Access flags,
BucketOwnerEnforced, a policy that denies requests without TLS, and a lifecycle rule that
expires noncurrent versions after 90 days and aborts incomplete multipart uploads after 7.
The KMS key (symmetric, rotation on, alias `alias/<name>-secrets`) is the stack secrets
provider: `awskms://alias/<name>-secrets?region=<region>`.

Safe to run again: what exists and is right is left alone and listed in `unchanged`. A bucket
that exists with weaker settings is listed in `weaker`, one line per weakness, and nothing at
all is changed or created in that run: bootstrap never half-fixes somebody's bucket.

Everything is read before anything is written, with clients injected by the caller (the CLI
builds them for `--region`; the tests point them at a moto server).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from fleet.private_bucket import PUBLIC_ACCESS_FLAGS, bucket_arn, harden_bucket, tls_only_policy
from infra.settings import REGION_NAME  # one rule for region names, shared with the stack settings

NONCURRENT_VERSION_DAYS = 90
ABORT_INCOMPLETE_UPLOAD_DAYS = 7
LIFECYCLE_RULE_ID = "pulumi-state-retention"
TAGS = {"managed-by": "registry-fleet/bootstrap", "purpose": "pulumi-state"}

_BUCKET_CHARS = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Names S3 reserves for its own features (access point aliases, directory buckets, ...).
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


class BootstrapInputError(ValueError):
    """A bad --name or --region, or a name that is not available: the user picks another."""


@dataclass(frozen=True)
class BootstrapResult:
    bucket: str
    key_arn: str  # "" when no key exists (a weak bucket stops the run before anything is created)
    alias: str
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    weaker: list[str] = field(default_factory=list)


# --- input ------------------------------------------------------------------------------


def validate_name(name: str) -> None:
    """S3's bucket naming rules, plus no dots (they break the KMS alias and HTTPS to the bucket)."""

    def bad(why: str) -> BootstrapInputError:
        return BootstrapInputError(f"--name {name!r}: {why}")

    if not 3 <= len(name) <= 63:
        raise bad(f"is {len(name)} characters; an S3 bucket name has 3 to 63")
    if not _BUCKET_CHARS.match(name):
        raise bad(
            "an S3 bucket name is lowercase letters, digits, dots and dashes, "
            "and starts and ends with a letter or digit"
        )
    if ".." in name:
        raise bad("an S3 bucket name has no two adjacent dots")
    if _is_ipv4(name):
        raise bad("an S3 bucket name must not look like an IP address")
    for prefix in _RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise bad(f"S3 reserves names starting with {prefix!r}")
    for suffix in _RESERVED_SUFFIXES:
        if name.endswith(suffix):
            raise bad(f"S3 reserves names ending with {suffix!r}")
    if "." in name:
        raise bad(
            f"use dashes, not dots: the KMS alias alias/{name}-secrets allows no dots, and dotted bucket "
            "names break TLS on virtual-hosted S3 URLs"
        )


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def validate_region(region: str) -> None:
    if not REGION_NAME.match(region):
        hint = ""
        if re.match(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$", region):
            hint = f" ({region!r} is an availability zone; its region is {region[:-1]!r})"
        raise BootstrapInputError(f"--region {region!r}: not an AWS region name like eu-west-1{hint}")


def alias_for(name: str) -> str:
    return f"alias/{name}-secrets"


def _check_client_region(client: Any, what: str, region: str) -> None:
    """A client for another region would put the key (or the bucket) in the wrong place: a bug, not input."""
    actual = getattr(getattr(client, "meta", None), "region_name", None)
    if actual is not None and actual != region:
        raise ValueError(f"the {what} client is for region {actual}, but the bootstrap region is {region}")


# --- desired state ----------------------------------------------------------------------


LIFECYCLE_RULES = [
    {
        "ID": LIFECYCLE_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_VERSION_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_UPLOAD_DAYS},
    }
]


_GOOD_VERSIONING = "versioning: Enabled"
_GOOD_PAB = "public access block: all four flags on"
_GOOD_OWNERSHIP = "object ownership: BucketOwnerEnforced (ACLs disabled)"
_GOOD_POLICY = "bucket policy: denies every request without TLS (aws:SecureTransport=false)"
_GOOD_LIFECYCLE = (
    f"lifecycle: noncurrent versions expire after {NONCURRENT_VERSION_DAYS} days, "
    f"incomplete multipart uploads are aborted after {ABORT_INCOMPLETE_UPLOAD_DAYS} days"
)


def _good_encryption(alias: str) -> str:
    return f"encryption: SSE-KMS with {alias}, bucket key enabled"


# --- reading what exists ----------------------------------------------------------------


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _absent_is_none(*codes: str) -> Iterator[None]:
    """Turn "this configuration does not exist" into an empty result; any other error propagates."""
    try:
        yield
    except ClientError as err:
        if _code(err) not in codes:
            raise


@dataclass(frozen=True)
class _Key:
    arn: str
    problems: list[str]


def _read_key(kms: Any, alias: str) -> _Key | None:
    try:
        meta = kms.describe_key(KeyId=alias)["KeyMetadata"]
    except ClientError as err:
        if _code(err) == "NotFoundException":
            return None
        raise
    problems = []
    what = f"kms key {alias}"
    if meta.get("KeyManager", "CUSTOMER") != "CUSTOMER":
        problems.append(f"{what}: an AWS-managed key; the secrets provider needs a customer-managed key")
    spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    if spec != "SYMMETRIC_DEFAULT":
        problems.append(f"{what}: key spec {spec}; the secrets provider needs SYMMETRIC_DEFAULT")
    usage = meta.get("KeyUsage") or "ENCRYPT_DECRYPT"
    if usage != "ENCRYPT_DECRYPT":
        problems.append(f"{what}: key usage {usage}; the secrets provider needs ENCRYPT_DECRYPT")
    state = meta.get("KeyState", "Enabled")
    if state != "Enabled":
        problems.append(f"{what}: key state {state}; stack secrets cannot be encrypted or decrypted with it")
    elif spec == "SYMMETRIC_DEFAULT":
        rotation = kms.get_key_rotation_status(KeyId=meta["KeyId"])
        if not rotation.get("KeyRotationEnabled"):
            problems.append(f"{what}: automatic key rotation is off")
    return _Key(arn=meta["Arn"], problems=problems)


def _owned_bucket(s3: Any, bucket: str) -> bool:
    """True when the caller's account owns the bucket (ListBuckets lists only the caller's own)."""
    kwargs: dict[str, Any] = {"Prefix": bucket}
    while True:
        page = s3.list_buckets(**kwargs)
        if any(b.get("Name") == bucket for b in page.get("Buckets", [])):
            return True
        token = page.get("ContinuationToken")
        if not token:
            return False
        kwargs["ContinuationToken"] = token


def _bucket_region(s3: Any, bucket: str) -> str:
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    if not location:
        return "us-east-1"
    return "eu-west-1" if location == "EU" else str(location)


def _key_arn_of(kms: Any, key_id: str) -> str | None:
    try:
        return str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])
    except ClientError:
        return None


def _whole_bucket(rule: dict[str, Any]) -> bool:
    if "Filter" in rule:
        flt = rule["Filter"] or {}
        return set(flt) <= {"Prefix"} and not flt.get("Prefix")
    return not rule.get("Prefix")


def _denies_plain_http(policy: dict[str, Any], bucket: str, region: str) -> bool:
    arn = bucket_arn(bucket, region)
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for st in statements:
        if st.get("Effect") != "Deny":
            continue
        principal = st.get("Principal")
        if principal not in ("*", {"AWS": "*"}):
            continue
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if "s3:*" not in actions and "*" not in actions:
            continue
        resources = st.get("Resource", [])
        resources = {resources} if isinstance(resources, str) else set(resources)
        if not {arn, f"{arn}/*"} <= resources and f"{arn}*" not in resources:
            continue
        flag = (st.get("Condition") or {}).get("Bool", {}).get("aws:SecureTransport")
        flags = flag if isinstance(flag, list) else [flag]
        if any(str(f).lower() == "false" for f in flags):
            return True
    return False


def _inspect_bucket(
    s3: Any, kms: Any, bucket: str, region: str, key: _Key | None, alias: str
) -> tuple[list[str], list[str]]:
    """(fine, weaker): one line per setting, read through the API; nothing is written."""
    fine: list[str] = []
    weak: list[str] = []

    status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    if status == "Enabled":
        fine.append(_GOOD_VERSIONING)
    else:
        weak.append(
            f"versioning: {status or 'never enabled'}, not Enabled "
            "(an overwritten or deleted state file could not be recovered)"
        )

    rules: list[dict[str, Any]] = []
    with _absent_is_none("ServerSideEncryptionConfigurationNotFoundError"):
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"].get("Rules", [])
    default = rules[0].get("ApplyServerSideEncryptionByDefault", {}) if rules else {}
    algorithm = default.get("SSEAlgorithm")
    if algorithm in ("aws:kms", "aws:kms:dsse"):
        if not rules[0].get("BucketKeyEnabled"):
            weak.append("encryption: BucketKeyEnabled is off (every object write calls KMS: cost and throttling)")
        key_id = default.get("KMSMasterKeyID")
        if not key_id:
            fine.append("encryption: SSE-KMS with the AWS-managed key aws/s3 (kept; bootstrap would use " + alias + ")")
        elif key is not None and _key_arn_of(kms, key_id) == key.arn:
            if rules[0].get("BucketKeyEnabled"):
                fine.append(_good_encryption(alias))
        else:
            fine.append(f"encryption: SSE-KMS with key {key_id} (kept; bootstrap would use {alias})")
    elif algorithm == "AES256":
        weak.append("encryption: SSE-S3 (AES256), not SSE-KMS (no key policy guards or logs access to state)")
    else:
        weak.append("encryption: no default encryption, not SSE-KMS")

    pab: dict[str, Any] = {}
    with _absent_is_none("NoSuchPublicAccessBlockConfiguration"):
        pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    off = [flag for flag in PUBLIC_ACCESS_FLAGS if not pab.get(flag)]
    if not pab:
        weak.append("public access block: not configured on the bucket (all four flags should be on)")
    elif off:
        weak.append(f"public access block: {', '.join(off)} off (all four flags should be on)")
    else:
        fine.append(_GOOD_PAB)

    ownership = None
    with _absent_is_none("OwnershipControlsNotFoundError"):
        controls = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"].get("Rules", [])
        ownership = controls[0].get("ObjectOwnership") if controls else None
    if ownership == "BucketOwnerEnforced":
        fine.append(_GOOD_OWNERSHIP)
    else:
        weak.append(f"object ownership: {ownership or 'not set'}, not BucketOwnerEnforced (ACLs still apply)")

    policy: dict[str, Any] = {}
    with _absent_is_none("NoSuchBucketPolicy"):
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    if _denies_plain_http(policy, bucket, region):
        fine.append(_GOOD_POLICY)
    else:
        what = "no bucket policy" if not policy else "the policy has no statement that"
        weak.append(f"bucket policy: {what} denies requests without TLS (aws:SecureTransport=false)")

    lifecycle: list[dict[str, Any]] = []
    with _absent_is_none("NoSuchLifecycleConfiguration"):
        lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    active = [r for r in lifecycle if r.get("Status") == "Enabled" and _whole_bucket(r)]
    noncurrent = [
        int(r["NoncurrentVersionExpiration"]["NoncurrentDays"])
        for r in active
        if r.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays") is not None
    ]
    aborts = [
        int(r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        for r in active
        if r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") is not None
    ]
    lifecycle_weak = len(weak)
    if not noncurrent:
        weak.append("lifecycle: no rule expires noncurrent versions (old state versions pile up forever)")
    elif min(noncurrent) < NONCURRENT_VERSION_DAYS:
        weak.append(
            f"lifecycle: noncurrent versions expire after {min(noncurrent)} days, "
            f"under {NONCURRENT_VERSION_DAYS} (less state history to roll back to)"
        )
    if not aborts:
        weak.append("lifecycle: no rule aborts incomplete multipart uploads (their parts are billed forever)")
    elif min(aborts) > ABORT_INCOMPLETE_UPLOAD_DAYS:
        weak.append(
            f"lifecycle: incomplete multipart uploads are aborted after {min(aborts)} days, "
            f"over {ABORT_INCOMPLETE_UPLOAD_DAYS}"
        )
    if len(weak) == lifecycle_weak:
        fine.append(_GOOD_LIFECYCLE)
    return fine, weak


# --- writing ----------------------------------------------------------------------------


def _create_key(kms: Any, bucket: str, alias: str) -> str:
    meta = kms.create_key(
        Description=f"Pulumi secrets provider for the state bucket {bucket} (registry-fleet)",
        KeyUsage="ENCRYPT_DECRYPT",
        KeySpec="SYMMETRIC_DEFAULT",
        Tags=[{"TagKey": k, "TagValue": v} for k, v in TAGS.items()],
    )["KeyMetadata"]
    try:
        kms.enable_key_rotation(KeyId=meta["KeyId"])
        kms.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    except BaseException:
        # No orphan key without an alias: schedule it for deletion (the shortest window AWS allows).
        with contextlib.suppress(ClientError):
            kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
        raise
    return str(meta["Arn"])


def _create_bucket(s3: Any, bucket: str, region: str) -> bool:
    """True when this call created the bucket; False when it turned out to be ours already."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "ObjectOwnership": "BucketOwnerEnforced"}
    if region != "us-east-1":  # us-east-1 takes no location constraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as err:
        if _code(err) == "BucketAlreadyExists":
            raise BootstrapInputError(
                f"--name {bucket!r}: that bucket name is taken by another AWS account "
                "(bucket names are global); pick another name"
            ) from None
        if _code(err) == "BucketAlreadyOwnedByYou":
            return False
        raise
    return True


def _configure_bucket(s3: Any, bucket: str, region: str, key_arn: str) -> None:
    harden_bucket(s3, bucket, key_arn, LIFECYCLE_RULES)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(tls_only_policy(bucket, region)))
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in TAGS.items()]})


# --- the command ------------------------------------------------------------------------


def bootstrap(name: str, region: str, s3: Any, kms: Any) -> BootstrapResult:
    """Create (or confirm) the state bucket `name` and the secrets key `alias/<name>-secrets` in `region`.

    Raises BootstrapInputError for a bad name or region (before any API call), a bucket name
    owned by another account, or an existing bucket in another region. A weak existing bucket
    or key comes back in `weaker`, with nothing created or changed.
    """
    validate_name(name)
    validate_region(region)
    _check_client_region(s3, "s3", region)
    _check_client_region(kms, "kms", region)
    alias = alias_for(name)
    key_line = f"kms key {alias}: symmetric, automatic rotation on"

    # 1. Read everything first.
    key = _read_key(kms, alias)
    exists = _owned_bucket(s3, name)
    if exists:
        actual = _bucket_region(s3, name)
        if actual != region:
            raise BootstrapInputError(
                f"--region {region!r}: the bucket {name} already exists in {actual}; run again with --region {actual}"
            )
    fine: list[str] = []
    weaker: list[str] = list(key.problems) if key else []
    if key and not key.problems:
        fine.append(key_line)
    if exists:
        bucket_fine, bucket_weak = _inspect_bucket(s3, kms, name, region, key, alias)
        fine += [f"bucket {name} in {region}", *bucket_fine]
        weaker += bucket_weak
    if weaker:
        return _refused(name, key, alias, fine, weaker)

    # 2. Then write what is missing, and only that.
    created: list[str] = []
    if not exists and not _create_bucket(s3, name, region):
        # Created by us under another run since we looked: judge it like any existing bucket.
        bucket_fine, bucket_weak = _inspect_bucket(s3, kms, name, region, key, alias)
        fine += [f"bucket {name} in {region}", *bucket_fine]
        if bucket_weak:
            return _refused(name, key, alias, fine, bucket_weak)
        exists = True
    if key is None:
        key = _Key(arn=_create_key(kms, name, alias), problems=[])
        created.append(key_line)
    if not exists:
        _configure_bucket(s3, name, region, key.arn)
        created += [
            f"bucket {name} in {region}",
            _GOOD_VERSIONING,
            _good_encryption(alias),
            _GOOD_PAB,
            _GOOD_OWNERSHIP,
            _GOOD_POLICY,
            _GOOD_LIFECYCLE,
        ]
    return BootstrapResult(name, key.arn, alias, created, fine, [])


def _refused(name: str, key: _Key | None, alias: str, fine: list[str], weaker: list[str]) -> BootstrapResult:
    """Weak settings found: report them and what is fine, create and change nothing."""
    return BootstrapResult(name, key.arn if key else "", alias, [], fine, weaker)


def backend_url(bucket: str, region: str) -> str:
    return f"s3://{bucket}?region={region}&awssdk=v2"


def secrets_provider_url(alias: str, region: str) -> str:
    return f"awskms://{alias}?region={region}"


def login_lines(result: BootstrapResult, region: str) -> list[str]:
    """The commands to use the backend: log in, then create stacks with the KMS secrets provider.

    The URLs are quoted: `&` and `?` would otherwise be read by the shell.
    """
    provider = secrets_provider_url(result.alias, region)
    return [
        f'pulumi login "{backend_url(result.bucket, region)}"',
        f'pulumi stack init STACK --secrets-provider "{provider}"',
        f'pulumi stack change-secrets-provider "{provider}"   # for a stack that already exists',
    ]
