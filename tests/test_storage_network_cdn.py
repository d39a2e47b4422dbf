"""Storage, backup, network, CDN and DNS guardrails (practices 7, 8, 9, 10) over every stack's recorded graph.

Each guard is a function of a recording (and, where the rule depends on them, the stack's settings)
that returns the violations it finds, each naming the resource. Every guard has a test over every
stack that finds none, and a test that breaks the practice, either by recording a settings variant
or by transforming a deep copy of a recording, and checks that the guard names the resource.

What mocks cannot prove, and these tests do not claim: that AWS accepts these inputs, that
replication, backups or CloudFront signed URLs work. Two links are weaker than the rest because the
mock engine fakes no physical name for backup vaults: a vault lock is matched to its vault by
logical name and region (`<vault>-lock`), not by `backupVaultName`; and ids the mock invents
(origin access control, key group) are checked to be set, not to be the right resource's id.
"""

from __future__ import annotations

import binascii
import copy
import fnmatch
import functools
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from components.host_boot import decode_user_data
from fleet.engine import Recording, Resource, record, unwrap
from infra.settings import PROJECT, Settings, load_stack_settings
from tests.helpers import STACKS, recording, settings_with

BUCKET = "aws:s3/bucket:Bucket"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PUBLIC_ACCESS = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
OWNERSHIP = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
OBJECT_LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
REPLICATION = "aws:s3/bucketReplicationConfig:BucketReplicationConfig"
KMS_KEY = "aws:kms/key:Key"
KEY_POLICY = "aws:kms/keyPolicy:KeyPolicy"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
IAM_POLICY = "aws:iam/policy:Policy"
ROLE_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
VAULT = "aws:backup/vault:Vault"
VAULT_LOCK = "aws:backup/vaultLockConfiguration:VaultLockConfiguration"
PLAN = "aws:backup/plan:Plan"
SELECTION = "aws:backup/selection:Selection"
VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
NAT = "aws:ec2/natGateway:NatGateway"
VPC_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
DISTRIBUTION = "aws:cloudfront/distribution:Distribution"
OAC = "aws:cloudfront/originAccessControl:OriginAccessControl"
PUBLIC_KEY = "aws:cloudfront/publicKey:PublicKey"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
DNS_RECORD = "cloudflare:index/dnsRecord:DnsRecord"
CERTIFICATE_COMPONENT = "registry-fleet:index:DnsValidatedCertificate"
AWS_PROVIDER = "pulumi:providers:aws"

PRIMARY_BUCKET = "storage-primary"
REPLICA_BUCKET = "storage-replica"
REGISTRY_BUCKETS = (PRIMARY_BUCKET, REPLICA_BUCKET)
CLOUDFRONT = "cloudfront.amazonaws.com"
US_EAST_1_PROVIDER = "aws-us-east-1"
BLOB_KEYS = "docker/registry/v2/blobs/*"  # the registry's blob prefix when storage.s3.rootdirectory is unset
REGISTRY_CONFIG_PATH = "/etc/docker/registry/config.yml"
BACKUP_POLICIES = {
    "arn:aws:iam::aws:policy/AWSBackupServiceRolePolicyForS3Backup",
    "arn:aws:iam::aws:policy/AWSBackupServiceRolePolicyForS3Restore",
}
# AWS-owned buckets the SSM agent reads (AWS Systems Manager docs, "SSM Agent communications with
# AWS managed S3 buckets"). Written out here, not imported from the component, so the test is a
# second opinion, not a copy.
SSM_BUCKETS = (
    "aws-ssm-{region}",
    "aws-windows-downloads-{region}",
    "amazon-ssm-{region}",
    "amazon-ssm-packages-{region}",
    "{region}-birdwatcher-prod",
    "aws-ssm-distributor-file-{region}",
    "aws-ssm-document-attachments-{region}",
    "patch-baseline-snapshot-{region}",
)
# Stateful resources: a change to any of these URNs (a rename or a new parent) replaces the
# resource and loses its data, unless it carries an alias.
STATEFUL_URNS = {
    "storage-primary": "registry-fleet:index:RegistryStorage$aws:s3/bucket:Bucket",
    "storage-replica": "registry-fleet:index:RegistryStorage$aws:s3/bucket:Bucket",
    "storage-key": "registry-fleet:index:RegistryStorage$aws:kms/key:Key",
    "storage-replica-key": "registry-fleet:index:RegistryStorage$aws:kms/key:Key",
    "storage-vault": "registry-fleet:index:RegistryStorage$aws:backup/vault:Vault",
    "storage-replica-vault": "registry-fleet:index:RegistryStorage$aws:backup/vault:Vault",
}

Check = Callable[[Recording], list[str]]
SettingsCheck = Callable[[Recording, Settings], list[str]]


# --- reading the recorded graph ---------------------------------------------------------------


def find(rec: Recording, name: str) -> Resource | None:
    found = [r for r in rec.resources if r.name == name]
    return found[0] if len(found) == 1 else None


def value(res: Resource, *path: str) -> Any:
    """The unwrapped input at `path` (None when any step is missing)."""
    node: Any = unwrap(res.inputs)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


def region_of(rec: Recording, res: Resource) -> str | None:
    """The region of the AWS provider the resource was registered with (None: default provider)."""
    provider = rec.by_urn(res.provider) if res.provider else None
    return str(unwrap(provider.inputs.get("region"))) if provider is not None else None


def attached(rec: Recording, bucket: Resource, type_: str) -> list[Resource]:
    """Resources of `type_` whose `bucket` input is this bucket's name."""
    name = bucket.outputs.get("bucket")
    return [r for r in rec.of_type(type_) if value(r, "bucket") == name]


def statements(res: Resource) -> list[dict[str, Any]]:
    raw = value(res, "policy")
    doc = json.loads(raw) if isinstance(raw, str) else raw or {}
    return [s for s in as_list(doc.get("Statement")) if isinstance(s, dict)]


def principals(stmt: dict[str, Any]) -> set[str]:
    p = stmt.get("Principal")
    if isinstance(p, str):
        return {p}
    if isinstance(p, dict):
        return {str(x) for v in p.values() for x in as_list(v)}
    return set()


def condition(stmt: dict[str, Any], operator: str, key: str) -> list[Any]:
    block = (stmt.get("Condition") or {}).get(operator) or {}
    return as_list(next((v for k, v in block.items() if k.lower() == key.lower()), None))


def grants(stmt: dict[str, Any], action: str) -> bool:
    """Whether the statement's Action patterns cover `action` (IAM matching is case-insensitive)."""
    return any(fnmatch.fnmatchcase(action.lower(), str(a).lower()) for a in as_list(stmt.get("Action")))


def is_cloudfront_statement(stmt: dict[str, Any]) -> bool:
    return CLOUDFRONT in principals(stmt)


def distributions(rec: Recording) -> list[Resource]:
    return rec.of_type(DISTRIBUTION)


def replication_configs(rec: Recording) -> list[Resource]:
    primary = find(rec, PRIMARY_BUCKET)
    return attached(rec, primary, REPLICATION) if primary else []


def kms_key_regions(rec: Recording) -> dict[str, str | None]:
    return {str(k.outputs.get("arn")): region_of(rec, k) for k in rec.of_type(KMS_KEY)}


def registry_config(rec: Recording) -> tuple[Resource | None, dict[str, Any] | str]:
    """The launch template and the registry `config.yml` in its user-data (or why it is unreadable)."""
    templates = rec.of_type(LAUNCH_TEMPLATE)
    if len(templates) != 1:
        return None, f"{len(templates)} launch templates"
    lt = templates[0]
    try:
        text = decode_user_data(str(value(lt, "userData")))
    except (binascii.Error, UnicodeDecodeError) as err:
        return lt, f"userData is not base64 text ({err})"
    doc = yaml.safe_load(text)
    files = {f.get("path"): f.get("content") for f in (doc or {}).get("write_files") or []}
    if REGISTRY_CONFIG_PATH not in files:
        return lt, f"cloud-init writes no {REGISTRY_CONFIG_PATH}"
    config = yaml.safe_load(files[REGISTRY_CONFIG_PATH])
    return lt, config if isinstance(config, dict) else f"{REGISTRY_CONFIG_PATH} is not a YAML mapping"


def plan_rules(rec: Recording) -> list[tuple[Resource, dict[str, Any]]]:
    return [(plan, rule) for plan in rec.of_type(PLAN) for rule in as_list(value(plan, "rules"))]


def subnets(rec: Recording, tier: str) -> list[Resource]:
    # By name, not registration order: the engine registers resources whose inputs wait on
    # outputs in no fixed order, and a check that reports "the second one" must be repeatable.
    return sorted((s for s in rec.of_type(SUBNET) if value(s, "tags", "tier") == tier), key=lambda s: s.name)


# --- storage (practices 7, 8, 10) -------------------------------------------------------------


def check_versioning(rec: Recording) -> list[str]:
    """The primary and replica buckets are versioned (backups, replication and lifecycle need it)."""
    out = []
    for name in REGISTRY_BUCKETS:
        bucket = find(rec, name)
        if bucket is None:
            out.append(f"{name}: bucket missing")
            continue
        found = attached(rec, bucket, VERSIONING)
        if not found:
            out.append(f"{name}: no BucketVersioning")
        for v in found:
            status = value(v, "versioningConfiguration", "status")
            if status != "Enabled":
                out.append(f"{v.name}: versioning status {status!r}, expected 'Enabled'")
    return out


def check_kms_encryption(rec: Recording) -> list[str]:
    """SSE-KMS with a customer key of the program in the bucket's region, and the S3 bucket key on."""
    out = []
    keys = kms_key_regions(rec)
    for name in REGISTRY_BUCKETS:
        bucket = find(rec, name)
        if bucket is None:
            out.append(f"{name}: bucket missing")
            continue
        configs = attached(rec, bucket, ENCRYPTION)
        if not configs:
            out.append(f"{name}: no server-side encryption configuration")
        for cfg in configs:
            rules = as_list(value(cfg, "rules"))
            if not rules:
                out.append(f"{cfg.name}: no encryption rule")
            for rule in rules:
                default = rule.get("applyServerSideEncryptionByDefault") or {}
                if default.get("sseAlgorithm") != "aws:kms":
                    out.append(f"{cfg.name}: sseAlgorithm {default.get('sseAlgorithm')!r}, expected 'aws:kms'")
                key = default.get("kmsMasterKeyId")
                if not key:
                    out.append(f"{cfg.name}: no kmsMasterKeyId (the AWS-managed key cannot be shared or audited)")
                elif key not in keys:
                    out.append(f"{cfg.name}: kmsMasterKeyId {key!r} is not a customer key of this program")
                elif keys[key] != region_of(rec, bucket):
                    out.append(f"{cfg.name}: key {key} is in {keys[key]}, the bucket in {region_of(rec, bucket)}")
                if rule.get("bucketKeyEnabled") is not True:
                    out.append(f"{cfg.name}: bucketKeyEnabled is {rule.get('bucketKeyEnabled')!r}, expected True")
    return out


def check_block_public_access(rec: Recording) -> list[str]:
    """Every bucket (registry and access logs) has all four Block Public Access flags on."""
    out = []
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    for bucket in rec.of_type(BUCKET):
        blocks = attached(rec, bucket, PUBLIC_ACCESS)
        if not blocks:
            out.append(f"{bucket.name}: no BucketPublicAccessBlock")
        for block in blocks:
            off = [f for f in flags if value(block, f) is not True]
            if off:
                out.append(f"{block.name}: {', '.join(off)} not true")
    return out


def check_owner_enforced(rec: Recording) -> list[str]:
    """Every bucket disables ACLs (BucketOwnerEnforced)."""
    out = []
    for bucket in rec.of_type(BUCKET):
        controls = attached(rec, bucket, OWNERSHIP)
        if not controls:
            out.append(f"{bucket.name}: no BucketOwnershipControls")
        for c in controls:
            ownership = value(c, "rule", "objectOwnership")
            if ownership != "BucketOwnerEnforced":
                out.append(f"{c.name}: objectOwnership {ownership!r}, expected 'BucketOwnerEnforced'")
    return out


def check_lifecycle(rec: Recording) -> list[str]:
    """Registry buckets expire noncurrent versions and abort incomplete multipart uploads, for every object."""
    out = []
    for name in REGISTRY_BUCKETS:
        bucket = find(rec, name)
        if bucket is None:
            out.append(f"{name}: bucket missing")
            continue
        configs = attached(rec, bucket, LIFECYCLE)
        if not configs:
            out.append(f"{name}: no lifecycle configuration")
            continue
        rules = [
            (cfg, rule)
            for cfg in configs
            for rule in as_list(value(cfg, "rules"))
            if rule.get("status") == "Enabled" and not rule.get("filter") and not rule.get("prefix")
        ]
        label = configs[0].name
        if not any((r.get("noncurrentVersionExpiration") or {}).get("noncurrentDays") for _, r in rules):
            out.append(f"{label}: no enabled whole-bucket noncurrent-version expiration")
        if not any((r.get("abortIncompleteMultipartUpload") or {}).get("daysAfterInitiation") for _, r in rules):
            out.append(f"{label}: no enabled whole-bucket abort of incomplete multipart uploads")
    return out


def tls_only(stmt: dict[str, Any], arn: str) -> bool:
    return (
        stmt.get("Effect") == "Deny"
        and "*" in principals(stmt)
        and grants(stmt, "s3:GetObject")
        and grants(stmt, "s3:PutObject")
        and {arn, f"{arn}/*"} <= set(as_list(stmt.get("Resource")))
        and [str(v).lower() for v in condition(stmt, "Bool", "aws:SecureTransport")] == ["false"]
    )


def check_tls_only_bucket_policies(rec: Recording) -> list[str]:
    """Every bucket's policy denies any request over plain HTTP (aws:SecureTransport false)."""
    out = []
    for bucket in rec.of_type(BUCKET):
        policies = attached(rec, bucket, BUCKET_POLICY)
        if not policies:
            out.append(f"{bucket.name}: no bucket policy")
        elif len(policies) > 1:
            out.append(f"{bucket.name}: {len(policies)} bucket policies fight over one bucket")
        for policy in policies:
            if not any(tls_only(s, str(bucket.outputs.get("arn"))) for s in statements(policy)):
                out.append(
                    f"{policy.name}: no Deny of s3:* on the bucket and its objects when aws:SecureTransport false"
                )
    return out


def check_bucket_regions(rec: Recording, s: Settings) -> list[str]:
    """Primary bucket and its satellites in the stack's region; the replica's in the replica region."""
    out = []
    for name, expected in ((PRIMARY_BUCKET, s.region), (REPLICA_BUCKET, s.replica_region)):
        bucket = find(rec, name)
        if bucket is None:
            out.append(f"{name}: bucket missing")
            continue
        members = [bucket]
        members += [r for r in rec.resources if r is not bucket and value(r, "bucket") == bucket.outputs.get("bucket")]
        for cfg in attached(rec, bucket, ENCRYPTION):
            for rule in as_list(value(cfg, "rules")):
                key_arn = (rule.get("applyServerSideEncryptionByDefault") or {}).get("kmsMasterKeyId")
                members += [k for k in rec.of_type(KMS_KEY) if k.outputs.get("arn") == key_arn]
        for res in members:
            region = region_of(rec, res)
            if region != expected:
                out.append(f"{res.name}: provider region {region!r}, expected {expected!r} (with {name})")
    return out


def check_replication_rule(rec: Recording) -> list[str]:
    """Replication of every object and delete marker, KMS-encrypted objects included, under the replica key."""
    out = []
    primary, replica = find(rec, PRIMARY_BUCKET), find(rec, REPLICA_BUCKET)
    if primary is None or replica is None:
        return [f"{PRIMARY_BUCKET}: primary or replica bucket missing"]
    configs = replication_configs(rec)
    if len(configs) != 1:
        return [f"{PRIMARY_BUCKET}: {len(configs)} replication configurations, expected 1"]
    cfg = configs[0]
    keys = kms_key_regions(rec)
    rules = as_list(value(cfg, "rules"))
    if not rules:
        out.append(f"{cfg.name}: no replication rule")
    for rule in rules:
        rid = rule.get("id", "?")
        dest = rule.get("destination") or {}
        if rule.get("status") != "Enabled":
            out.append(f"{cfg.name}: rule {rid} status {rule.get('status')!r}")
        if rule.get("filter") != {} or rule.get("prefix"):
            out.append(f"{cfg.name}: rule {rid} filter {rule.get('filter')!r} does not cover every object (use {{}})")
        if (rule.get("deleteMarkerReplication") or {}).get("status") != "Enabled":
            out.append(f"{cfg.name}: rule {rid} does not replicate delete markers")
        sse = ((rule.get("sourceSelectionCriteria") or {}).get("sseKmsEncryptedObjects") or {}).get("status")
        if sse != "Enabled":
            out.append(f"{cfg.name}: rule {rid} skips SSE-KMS objects (sseKmsEncryptedObjects {sse!r})")
        if dest.get("bucket") != replica.outputs.get("arn"):
            out.append(f"{cfg.name}: rule {rid} replicates to {dest.get('bucket')!r}, not the replica bucket")
        key = (dest.get("encryptionConfiguration") or {}).get("replicaKmsKeyId")
        if not key:
            out.append(f"{cfg.name}: rule {rid} has no replicaKmsKeyId")
        elif keys.get(key) != region_of(rec, replica):
            out.append(f"{cfg.name}: rule {rid} replicaKmsKeyId {key} is not a key of the replica region")
    return out


def check_replication_time_control(rec: Recording, s: Settings) -> list[str]:
    """Replication time control (and its metrics) exactly when storage.replicationTimeControl says."""
    out = []
    want = s.storage.replication_time_control
    for cfg in replication_configs(rec):
        for rule in as_list(value(cfg, "rules")):
            dest = rule.get("destination") or {}
            rtc = (dest.get("replicationTime") or {}).get("status") == "Enabled"
            metrics = (dest.get("metrics") or {}).get("status") == "Enabled"
            if rtc != want:
                out.append(f"{cfg.name}: replication time control {'on' if rtc else 'off'}, settings say {want}")
            if want and not metrics:
                out.append(f"{cfg.name}: replication time control needs replication metrics enabled")
    return out


def check_replica_object_lock(rec: Recording, s: Settings) -> list[str]:
    """Object Lock on the replica bucket exactly when storage.objectLock.enabled, with its mode and days.

    Object Lock counts as on through the configuration resource (whose `objectLockEnabled` defaults
    to Enabled, and which can enable it on an existing bucket); the bucket's own `objectLockEnabled`
    flag is not required, so the guard does not force a replacement-prone input on the bucket.
    """
    replica = find(rec, REPLICA_BUCKET)
    if replica is None:
        return [f"{REPLICA_BUCKET}: bucket missing"]
    out = []
    lock = s.storage.object_lock
    configs = attached(rec, replica, OBJECT_LOCK)
    if lock.enabled:
        if len(configs) != 1:
            out.append(f"{replica.name}: {len(configs)} object lock configurations, expected 1")
        for cfg in configs:
            retention = value(cfg, "rule", "defaultRetention") or {}
            if value(cfg, "objectLockEnabled") not in (None, "Enabled"):
                out.append(f"{cfg.name}: objectLockEnabled {value(cfg, 'objectLockEnabled')!r}")
            if (retention.get("mode"), retention.get("days")) != (lock.mode, lock.days):
                out.append(f"{cfg.name}: default retention {retention}, settings say {lock.mode} {lock.days} days")
    elif configs or value(replica, "objectLockEnabled") is True:
        out.append(f"{replica.name}: object lock configured, settings say storage.objectLock.enabled false")
    return out


REPLICATE_ACTIONS = ("s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags")


def check_replication_role_scope(rec: Recording) -> list[str]:
    """No IAM policy grants s3:Replicate* beyond the replica bucket's objects; one grants it there."""
    replica = find(rec, REPLICA_BUCKET)
    if replica is None:
        return [f"{REPLICA_BUCKET}: bucket missing"]
    objects = f"{replica.outputs.get('arn')}/*"
    out = []
    granted = False
    for policy in rec.of_type(ROLE_POLICY) + rec.of_type(IAM_POLICY):
        for stmt in statements(policy):
            if stmt.get("Effect") != "Allow" or not any(grants(stmt, a) for a in REPLICATE_ACTIONS):
                continue
            resources = as_list(stmt.get("Resource"))
            wider = [r for r in resources if r != objects]
            if wider or stmt.get("NotResource"):
                out.append(f"{policy.name}: s3:Replicate* granted on {wider or stmt.get('NotResource')}")
            elif grants(stmt, "s3:ReplicateObject"):
                granted = True
    if not granted:
        out.append(f"{REPLICA_BUCKET}: no policy grants s3:ReplicateObject on {objects}")
    return out


# --- backup (practice 10) ---------------------------------------------------------------------


def check_daily_backup(rec: Recording, s: Settings) -> list[str]:
    """A scheduled (snapshot) rule keeps backups for backup.retentionDays."""
    plans = rec.of_type(PLAN)
    if not plans:
        return ["storage: no backup plan"]
    daily = [(p, r) for p, r in plan_rules(rec) if r.get("schedule") and not r.get("enableContinuousBackup")]
    if not daily:
        return [f"{p.name}: no scheduled snapshot rule" for p in plans]
    out = []
    for plan, rule in daily:
        keep = (rule.get("lifecycle") or {}).get("deleteAfter")
        if keep != s.backup.retention_days:
            out.append(
                f"{plan.name}: rule {rule.get('ruleName')} deleteAfter {keep!r}, "
                f"backup.retentionDays is {s.backup.retention_days}"
            )
    return out


def check_backup_copy(rec: Recording, s: Settings) -> list[str]:
    """Every snapshot rule copies to a vault in the replica region."""
    replica_vaults = {str(v.outputs.get("arn")) for v in rec.of_type(VAULT) if region_of(rec, v) == s.replica_region}
    out = []
    for plan, rule in plan_rules(rec):
        if rule.get("enableContinuousBackup"):
            continue
        targets = [c.get("destinationVaultArn") for c in as_list(rule.get("copyActions"))]
        if not any(t in replica_vaults for t in targets):
            out.append(f"{plan.name}: rule {rule.get('ruleName')} copies to {targets}, no vault in {s.replica_region}")
    if not rec.of_type(PLAN):
        out.append("storage: no backup plan")
    return out


def check_continuous_backup(rec: Recording, s: Settings) -> list[str]:
    """A continuous (point-in-time) rule exactly when backup.continuous, kept at most 35 days."""
    out = []
    continuous = [(p, r) for p, r in plan_rules(rec) if r.get("enableContinuousBackup") is True]
    want = 1 if s.backup.continuous else 0
    if len(continuous) != want:
        names = sorted({p.name for p in rec.of_type(PLAN)}) or ["storage"]
        out.append(f"{names[0]}: {len(continuous)} continuous rules, backup.continuous is {s.backup.continuous}")
    for plan, rule in continuous:
        keep = (rule.get("lifecycle") or {}).get("deleteAfter")
        if not isinstance(keep, int | float) or keep > 35:
            out.append(f"{plan.name}: continuous rule deleteAfter {keep!r}, AWS keeps at most 35 days")
        elif keep != s.backup.continuous_retention_days:
            out.append(
                f"{plan.name}: continuous rule deleteAfter {keep!r}, "
                f"backup.continuousRetentionDays is {s.backup.continuous_retention_days}"
            )
    return out


def check_backup_selection(rec: Recording) -> list[str]:
    """The backup selection covers exactly the primary bucket."""
    primary = find(rec, PRIMARY_BUCKET)
    selections = rec.of_type(SELECTION)
    if primary is None or len(selections) != 1:
        return [f"storage: {len(selections)} backup selections (expected 1) or no primary bucket"]
    chosen = as_list(value(selections[0], "resources"))
    if chosen != [primary.outputs.get("arn")]:
        return [f"{selections[0].name}: resources {chosen}, expected only {primary.outputs.get('arn')}"]
    return []


def check_backup_role(rec: Recording) -> list[str]:
    """The role of the backup selection has AWS's S3 backup and S3 restore managed policies."""
    out = []
    for selection in rec.of_type(SELECTION):
        arn = value(selection, "iamRoleArn")
        roles = [r for r in rec.of_type(ROLE) if r.outputs.get("arn") == arn]
        if len(roles) != 1:
            out.append(f"{selection.name}: iamRoleArn {arn!r} is not a role of this program")
            continue
        role = roles[0]
        have = {value(a, "policyArn") for a in rec.of_type(ROLE_ATTACHMENT) if value(a, "role") == role.outputs["name"]}
        missing = sorted(BACKUP_POLICIES - have)
        if missing:
            out.append(f"{role.name}: missing managed policies {missing}")
    if not rec.of_type(SELECTION):
        out.append("storage: no backup selection")
    return out


def check_vault_keys(rec: Recording) -> list[str]:
    """Each backup vault is encrypted with a customer KMS key of the program, in its own region."""
    out = []
    keys = kms_key_regions(rec)
    for vault in rec.of_type(VAULT):
        key = value(vault, "kmsKeyArn")
        if not key:
            out.append(f"{vault.name}: no kmsKeyArn")
        elif keys.get(key) != region_of(rec, vault):
            out.append(f"{vault.name}: kmsKeyArn {key} is not a key of this program in the vault's region")
    if len(rec.of_type(VAULT)) < 2:
        out.append(f"storage: {len(rec.of_type(VAULT))} backup vaults, expected primary and replica")
    return out


def check_vault_locks(rec: Recording) -> list[str]:
    """Each backup vault has a vault lock (matched by `<vault>-lock` in the same region: see module doc)."""
    out = []
    locks = rec.of_type(VAULT_LOCK)
    for vault in rec.of_type(VAULT):
        name = vault.outputs.get("name")
        mine = [
            lock
            for lock in locks
            if (name and value(lock, "backupVaultName") == name)
            or (lock.name == f"{vault.name}-lock" and region_of(rec, lock) == region_of(rec, vault))
        ]
        if not mine:
            out.append(f"{vault.name}: no VaultLockConfiguration")
        for lock in mine:
            if not value(lock, "maxRetentionDays") or not value(lock, "minRetentionDays"):
                out.append(f"{lock.name}: min/max retention days not set")
    return out


# --- network (practice 7) ---------------------------------------------------------------------


def vpc_label(rec: Recording) -> str:
    vpcs = rec.of_type(VPC)
    return vpcs[0].name if len(vpcs) == 1 else "network"


def check_subnets_per_zone(rec: Recording, s: Settings) -> list[str]:
    """One public and one private subnet in each of network.azCount distinct zones."""
    out = []
    zones_by_tier = {}
    for tier in ("public", "private"):
        found = subnets(rec, tier)
        zones = [value(sn, "availabilityZone") for sn in found]
        zones_by_tier[tier] = set(zones)
        if len(found) != s.network.az_count:
            out.append(f"{vpc_label(rec)}: {len(found)} {tier} subnets, network.azCount is {s.network.az_count}")
        seen: set[Any] = set()
        for sn, zone in zip(found, zones, strict=True):
            if zone in seen:
                out.append(f"{sn.name}: zone {zone} already has a {tier} subnet")
            seen.add(zone)
    if zones_by_tier["public"] != zones_by_tier["private"]:
        public, private = sorted(zones_by_tier["public"]), sorted(zones_by_tier["private"])
        out.append(f"{vpc_label(rec)}: public subnets in zones {public}, private in {private}")
    return out


def check_private_subnets_no_public_ip(rec: Recording) -> list[str]:
    """Private subnets never hand out public IPs."""
    out = [
        f"{sn.name}: mapPublicIpOnLaunch is true" for sn in subnets(rec, "private") if value(sn, "mapPublicIpOnLaunch")
    ]
    if not subnets(rec, "private"):
        out.append(f"{vpc_label(rec)}: no private subnet")
    return out


def check_nat_gateways(rec: Recording, s: Settings) -> list[str]:
    """One NAT gateway per zone (per-az) or one for the VPC (single), in public subnets."""
    want = s.network.az_count if s.network.nat_gateways == "per-az" else 1
    nats = rec.of_type(NAT)
    if len(nats) != want:
        return [f"{vpc_label(rec)}: {len(nats)} NAT gateways, expected {want} ({s.network.nat_gateways})"]
    return []


def check_s3_endpoint_policy(rec: Recording, s: Settings) -> list[str]:
    """The S3 gateway endpoint admits the registry's primary bucket and the SSM agent's buckets, nothing else."""
    primary = find(rec, PRIMARY_BUCKET)
    if primary is None:
        return [f"{PRIMARY_BUCKET}: bucket missing"]
    arn = str(primary.outputs.get("arn"))
    registry = {arn, f"{arn}/*"}
    ssm = {f"arn:aws:s3:::{p.format(region=s.region)}/*" for p in SSM_BUCKETS}
    endpoints = [e for e in rec.of_type(VPC_ENDPOINT) if value(e, "serviceName") == f"com.amazonaws.{s.region}.s3"]
    if len(endpoints) != 1:
        return [f"{vpc_label(rec)}: {len(endpoints)} S3 gateway endpoints, expected 1"]
    ep = endpoints[0]
    out = []
    allowed: set[str] = set()
    for stmt in statements(ep):
        if stmt.get("Effect") != "Allow":
            continue
        if stmt.get("NotResource") or stmt.get("NotAction"):
            out.append(f"{ep.name}: statement {stmt.get('Sid')} uses NotResource/NotAction")
        for res in as_list(stmt.get("Resource")):
            allowed.add(res)
            if "*" in res.removesuffix("/*"):
                out.append(f"{ep.name}: resource {res!r} is a wildcard")
            elif res not in registry | ssm:
                out.append(f"{ep.name}: resource {res!r} is neither the registry bucket nor an SSM agent bucket")
    if not registry <= allowed:
        out.append(f"{ep.name}: the registry bucket {arn} (and its objects) is not admitted")
    if f"arn:aws:s3:::amazon-ssm-{s.region}/*" not in allowed:
        out.append(f"{ep.name}: amazon-ssm-{s.region} (the SSM agent package the hosts install) is not admitted")
    return out


def check_flow_log(rec: Recording) -> list[str]:
    """A flow log captures ALL traffic of the VPC the subnets live in."""
    vpc_ids = {value(sn, "vpcId") for sn in rec.of_type(SUBNET)}
    if len(vpc_ids) != 1:
        return [f"{vpc_label(rec)}: subnets in {len(vpc_ids)} VPCs"]
    logs = [f for f in rec.of_type(FLOW_LOG) if value(f, "vpcId") in vpc_ids]
    if not logs:
        return [f"{vpc_label(rec)}: no flow log"]
    return [
        f"{f.name}: trafficType {value(f, 'trafficType')!r} or no destination"
        for f in logs
        if value(f, "trafficType") != "ALL" or not value(f, "logDestination")
    ]


# --- CDN (practice 9) -------------------------------------------------------------------------


def check_distribution_matches_settings(rec: Recording, s: Settings) -> list[str]:
    """One distribution when cdn.enabled, none otherwise."""
    found = distributions(rec)
    want = 1 if s.cdn.enabled else 0
    if len(found) != want:
        return [f"{d.name}: cdn.enabled is {s.cdn.enabled}" for d in found] or [f"cdn: no distribution ({want} wanted)"]
    return []


def check_cdn_origin(rec: Recording) -> list[str]:
    """The only origin is the primary bucket, through origin access control, with an empty origin path."""
    primary = find(rec, PRIMARY_BUCKET)
    out = []
    for d in distributions(rec):
        origins = as_list(value(d, "origins"))
        if len(origins) != 1:
            out.append(f"{d.name}: {len(origins)} origins, expected only the registry bucket")
        for o in origins:
            if not o.get("originAccessControlId"):
                out.append(f"{d.name}: origin {o.get('originId')} has no originAccessControlId")
            if o.get("originPath") not in (None, ""):
                out.append(f"{d.name}: originPath {o.get('originPath')!r} (the registry redirects to full keys)")
            if primary is None or o.get("domainName") != primary.outputs.get("bucketRegionalDomainName"):
                out.append(f"{d.name}: origin {o.get('domainName')!r} is not the primary bucket's regional name")
            if o.get("s3OriginConfig", {}).get("originAccessIdentity") or o.get("customOriginConfig"):
                out.append(f"{d.name}: origin uses a legacy OAI or a custom (public) origin")
    return out


def cache_behaviors(d: Resource) -> list[dict[str, Any]]:
    return [value(d, "defaultCacheBehavior") or {}, *as_list(value(d, "orderedCacheBehaviors"))]


def check_cdn_https_only(rec: Recording) -> list[str]:
    """Viewers reach blobs over HTTPS only (not even a redirect from HTTP)."""
    return [
        f"{d.name}: viewerProtocolPolicy {b.get('viewerProtocolPolicy')!r}, expected 'https-only'"
        for d in distributions(rec)
        for b in cache_behaviors(d)
        if b.get("viewerProtocolPolicy") != "https-only"
    ]


def check_cdn_methods(rec: Recording) -> list[str]:
    """Viewers may only GET and HEAD."""
    return [
        f"{d.name}: allowedMethods {b.get('allowedMethods')}, expected exactly GET and HEAD"
        for d in distributions(rec)
        for b in cache_behaviors(d)
        if sorted(as_list(b.get("allowedMethods"))) != ["GET", "HEAD"]
    ]


def check_cdn_trusted_key_groups(rec: Recording) -> list[str]:
    """Every cache behavior requires a URL signed by a trusted key group."""
    return [
        f"{d.name}: a cache behavior has no trustedKeyGroups (blobs would be public)"
        for d in distributions(rec)
        for b in cache_behaviors(d)
        if not [g for g in as_list(b.get("trustedKeyGroups")) if g]
    ]


def check_cdn_signing_key(rec: Recording) -> list[str]:
    """The key behind each CloudFront public key is a pulumi-tls RSA 2048 key (PKCS#1 for the registry)."""
    out = []
    keys = {k.outputs.get("publicKeyPem"): k for k in rec.of_type(PRIVATE_KEY)}
    for pub in rec.of_type(PUBLIC_KEY):
        key = keys.get(value(pub, "encodedKey"))
        if key is None:
            out.append(f"{pub.name}: encodedKey is not the public half of a tls PrivateKey of this program")
        elif (value(key, "algorithm"), value(key, "rsaBits")) != ("RSA", 2048):
            out.append(f"{key.name}: {value(key, 'algorithm')} {value(key, 'rsaBits')}, expected RSA 2048")
    if distributions(rec) and not rec.of_type(PUBLIC_KEY):
        out.append(f"{distributions(rec)[0].name}: no CloudFront public key")
    return out


def check_origin_access_control(rec: Recording) -> list[str]:
    """Origin access control signs every request to S3 with SigV4."""
    want = {"signingProtocol": "sigv4", "signingBehavior": "always", "originAccessControlOriginType": "s3"}
    out = [
        f"{oac.name}: {k} {value(oac, k)!r}, expected {v!r}"
        for oac in rec.of_type(OAC)
        for k, v in want.items()
        if value(oac, k) != v
    ]
    if distributions(rec) and not rec.of_type(OAC):
        out.append(f"{distributions(rec)[0].name}: no origin access control")
    return out


def check_bucket_policy_cloudfront(rec: Recording) -> list[str]:
    """CloudFront may only s3:GetObject blobs of the primary bucket, only for this distribution."""
    primary = find(rec, PRIMARY_BUCKET)
    dists = {str(d.outputs.get("arn")) for d in distributions(rec)}
    out = []
    blobs = f"{primary.outputs.get('arn')}/{BLOB_KEYS}" if primary else None
    granted = 0
    for policy in rec.of_type(BUCKET_POLICY):
        for stmt in filter(is_cloudfront_statement, statements(policy)):
            if stmt.get("Effect") != "Allow":
                continue
            problems = []
            if as_list(stmt.get("Action")) != ["s3:GetObject"]:
                problems.append(f"actions {stmt.get('Action')}")
            if as_list(stmt.get("Resource")) != [blobs]:
                problems.append(f"resources {stmt.get('Resource')} (expected {blobs})")
            source = condition(stmt, "StringEquals", "AWS:SourceArn")
            if len(source) != 1 or source[0] not in dists:
                problems.append(f"AWS:SourceArn {source} is not this distribution")
            if problems:
                out.append(f"{policy.name}: CloudFront statement: {'; '.join(problems)}")
            elif value(policy, "bucket") == (primary.outputs.get("bucket") if primary else None):
                granted += 1
    if dists and granted != 1:
        out.append(f"{PRIMARY_BUCKET}: {granted} scoped CloudFront read statements in its policy, expected 1")
    return out


def check_key_policy_cloudfront(rec: Recording) -> list[str]:
    """CloudFront may only kms:Decrypt the primary bucket's key, only for this distribution."""
    primary = find(rec, PRIMARY_BUCKET)
    dists = {str(d.outputs.get("arn")) for d in distributions(rec)}
    key_arns = set()
    for cfg in attached(rec, primary, ENCRYPTION) if primary else []:
        for rule in as_list(value(cfg, "rules")):
            key_arns.add((rule.get("applyServerSideEncryptionByDefault") or {}).get("kmsMasterKeyId"))
    key_ids = {k.outputs.get("keyId") for k in rec.of_type(KMS_KEY) if k.outputs.get("arn") in key_arns}
    out = []
    granted = 0
    for policy in rec.of_type(KEY_POLICY):
        for stmt in filter(is_cloudfront_statement, statements(policy)):
            if stmt.get("Effect") != "Allow":
                continue
            problems = []
            if as_list(stmt.get("Action")) != ["kms:Decrypt"]:
                problems.append(f"actions {stmt.get('Action')} (expected only kms:Decrypt)")
            source = condition(stmt, "StringEquals", "AWS:SourceArn")
            if len(source) != 1 or source[0] not in dists:
                problems.append(f"AWS:SourceArn {source} is not this distribution")
            if problems:
                out.append(f"{policy.name}: CloudFront statement: {'; '.join(problems)}")
            elif value(policy, "keyId") in key_ids:
                granted += 1
    if dists and granted != 1:
        out.append(f"storage-key: {granted} scoped CloudFront decrypt statements in its key policy, expected 1")
    return out


def check_cloudfront_grants_need_distribution(rec: Recording) -> list[str]:
    """Without a distribution, no bucket or key policy names CloudFront."""
    if distributions(rec):
        return []
    return [
        f"{p.name}: grants {CLOUDFRONT} but there is no distribution"
        for p in rec.of_type(BUCKET_POLICY) + rec.of_type(KEY_POLICY)
        if any(is_cloudfront_statement(stmt) for stmt in statements(p))
    ]


def check_registry_cloudfront_middleware(rec: Recording) -> list[str]:
    """The hosts' registry config has the cloudfront middleware exactly when a distribution exists."""
    lt, config = registry_config(rec)
    label = lt.name if lt else "fleet"
    if isinstance(config, str):
        return [f"{label}: {config}"]
    middleware = [m.get("name") for m in ((config.get("middleware") or {}).get("storage") or [])]
    has = "cloudfront" in middleware
    if has != bool(distributions(rec)):
        return [
            f"{label}: cloudfront middleware {'present' if has else 'absent'}, {len(distributions(rec))} distributions"
        ]
    return []


# --- DNS ----------------------------------------------------------------------------------------


def check_dns_not_proxied(rec: Recording) -> list[str]:
    """No Cloudflare record is proxied (uploads too large; CloudFront signs blob URLs; ACM must see records)."""
    return [
        f"{r.name}: proxied is {value(r, 'proxied')!r}, expected false"
        for r in rec.of_type(DNS_RECORD)
        if value(r, "proxied") is not False
    ]


def check_blobs_record(rec: Recording, s: Settings) -> list[str]:
    """`blobs.<domain>` points at the distribution exactly when the CDN alias is on."""
    host = f"blobs.{s.domain}"
    found = [r for r in rec.of_type(DNS_RECORD) if value(r, "name") == host]
    if s.cdn_alias_host is None:
        return [f"{r.name}: {host} exists but the CDN alias is off" for r in found]
    if len(found) != 1:
        return [f"dns: {len(found)} records for {host}, expected 1"]
    domains = {d.outputs.get("domainName") for d in distributions(rec)}
    if value(found[0], "content") not in domains:
        return [f"{found[0].name}: content {value(found[0], 'content')!r} is not the distribution's domain"]
    return []


def check_alias_certificate_region(rec: Recording, s: Settings) -> list[str]:
    """The CDN alias certificate and its validation live in us-east-1, through the aws-us-east-1 provider."""
    if s.cdn_alias_host is None:
        return []
    out = []
    comps = [
        c
        for c in rec.of_type(CERTIFICATE_COMPONENT)
        if any(value(r, "domainName") == s.cdn_alias_host for r in rec.resources if r.parent == c.urn)
    ]
    if len(comps) != 1:
        return [f"cdn: {len(comps)} certificates for {s.cdn_alias_host}, expected 1"]
    for res in (r for r in rec.resources if r.parent == comps[0].urn and r.type.startswith("aws:")):
        provider = rec.by_urn(res.provider) if res.provider else None
        if provider is None or provider.name != US_EAST_1_PROVIDER or region_of(rec, res) != "us-east-1":
            out.append(f"{res.name}: provider {provider.name if provider else None}, expected {US_EAST_1_PROVIDER}")
    return out


# --- stateful names -----------------------------------------------------------------------------


def check_stateful_names(rec: Recording) -> list[str]:
    """Buckets, keys and vaults keep their URNs (a rename or a new parent replaces them and loses data)."""
    urns = {r.urn for r in rec.resources}
    return [
        f"{name}: no resource with URN {urn}"
        for name, chain in STATEFUL_URNS.items()
        if (urn := f"urn:pulumi:{rec.stack}::{PROJECT}::{chain}::{name}") not in urns
    ]


RECORDING_CHECKS: list[Check] = [
    check_versioning,
    check_kms_encryption,
    check_block_public_access,
    check_owner_enforced,
    check_lifecycle,
    check_tls_only_bucket_policies,
    check_replication_rule,
    check_replication_role_scope,
    check_backup_selection,
    check_backup_role,
    check_vault_keys,
    check_vault_locks,
    check_private_subnets_no_public_ip,
    check_flow_log,
    check_cdn_origin,
    check_cdn_https_only,
    check_cdn_methods,
    check_cdn_trusted_key_groups,
    check_cdn_signing_key,
    check_origin_access_control,
    check_bucket_policy_cloudfront,
    check_key_policy_cloudfront,
    check_cloudfront_grants_need_distribution,
    check_registry_cloudfront_middleware,
    check_dns_not_proxied,
    check_stateful_names,
]
SETTINGS_CHECKS: list[SettingsCheck] = [
    check_bucket_regions,
    check_replication_time_control,
    check_replica_object_lock,
    check_daily_backup,
    check_backup_copy,
    check_continuous_backup,
    check_subnets_per_zone,
    check_nat_gateways,
    check_s3_endpoint_policy,
    check_distribution_matches_settings,
    check_blobs_record,
    check_alias_certificate_region,
]


# --- fixtures and transforms ------------------------------------------------------------------


@functools.cache
def stack_settings(stack: str) -> Settings:
    return load_stack_settings(stack)


@functools.cache
def variant(stack: str, overrides_json: str) -> tuple[Recording, Settings]:
    """A stack recorded with settings changed (cached: each variant is recorded once per session)."""
    settings = settings_with(stack, json.loads(overrides_json))
    return record(settings), settings


def dev_without_cdn() -> tuple[Recording, Settings]:
    return variant("dev", json.dumps({"cdn": {"enabled": False}}))


def changed(rec: Recording, name: str, change: Callable[[dict[str, Any]], Any]) -> Recording:
    """A deep copy of `rec` with `change` applied to the (unwrapped) inputs of resource `name`."""
    out = copy.deepcopy(rec)
    res = out.named(name)
    res.inputs = unwrap(res.inputs)
    change(res.inputs)
    return out


def without(rec: Recording, *names: str) -> Recording:
    out = copy.deepcopy(rec)
    out.resources = [r for r in out.resources if r.name not in names]
    assert len(out.resources) == len(rec.resources) - len(names), f"not all of {names} were recorded"
    return out


def edit_policy(change: Callable[[list[dict[str, Any]]], Any]) -> Callable[[dict[str, Any]], None]:
    """An inputs change that edits the statements of a JSON `policy` input in place."""

    def run(inputs: dict[str, Any]) -> None:
        doc = json.loads(inputs["policy"])
        doc["Statement"] = as_list(doc["Statement"])
        change(doc["Statement"])
        inputs["policy"] = json.dumps(doc)

    return run


def only_rule(rule_name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def pick(inputs: dict[str, Any]) -> dict[str, Any]:
        return next(r for r in inputs["rules"] if r.get("ruleName", r.get("id")) == rule_name)

    return pick


def assert_flags(violations: list[str], name: str) -> None:
    assert any(v.split(":", 1)[0] == name for v in violations), f"expected a violation naming {name}; got {violations}"


# --- every guard holds on every stack -----------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("check", RECORDING_CHECKS, ids=lambda c: c.__name__)
def test_guard_holds(check: Check, stack: str) -> None:
    assert check(recording(stack)) == []


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("check", SETTINGS_CHECKS, ids=lambda c: c.__name__)
def test_settings_guard_holds(check: SettingsCheck, stack: str) -> None:
    assert check(recording(stack), stack_settings(stack)) == []


# --- storage: each guard catches a broken practice ----------------------------------------------


def test_versioning_suspended_is_caught() -> None:
    rec = changed(
        recording("prod"),
        "storage-replica-versioning",
        lambda i: i["versioningConfiguration"].update(status="Suspended"),
    )
    assert_flags(check_versioning(rec), "storage-replica-versioning")


@pytest.mark.parametrize(
    "change",
    [
        lambda d, r: d.update(sseAlgorithm="AES256"),
        lambda d, r: d.pop("kmsMasterKeyId"),
        lambda d, r: d.update(kmsMasterKeyId="alias/aws/s3"),
        lambda d, r: r.update(bucketKeyEnabled=False),
    ],
    ids=["sse-s3", "no-key", "aws-managed-key", "no-bucket-key"],
)
def test_weak_bucket_encryption_is_caught(change: Callable[[dict[str, Any], dict[str, Any]], Any]) -> None:
    def weaken(inputs: dict[str, Any]) -> None:
        rule = inputs["rules"][0]
        change(rule["applyServerSideEncryptionByDefault"], rule)

    rec = changed(recording("prod"), "storage-primary-encryption", weaken)
    assert_flags(check_kms_encryption(rec), "storage-primary-encryption")


def test_replica_key_from_the_wrong_region_is_caught() -> None:
    primary_key = recording("prod").named("storage-key").outputs["arn"]
    rec = changed(
        recording("prod"),
        "storage-replica-encryption",
        lambda i: i["rules"][0]["applyServerSideEncryptionByDefault"].update(kmsMasterKeyId=primary_key),
    )
    assert_flags(check_kms_encryption(rec), "storage-replica-encryption")


@pytest.mark.parametrize("flag", ["blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"])
def test_a_public_access_flag_off_is_caught(flag: str) -> None:
    rec = changed(recording("staging"), "lb-access-logs-public-access", lambda i: i.update({flag: False}))
    assert_flags(check_block_public_access(rec), "lb-access-logs-public-access")


def test_missing_public_access_block_is_caught() -> None:
    rec = without(recording("dev"), "storage-replica-public-access")
    assert_flags(check_block_public_access(rec), "storage-replica")


def test_acls_enabled_is_caught() -> None:
    rec = changed(
        recording("dev"), "storage-primary-ownership", lambda i: i["rule"].update(objectOwnership="ObjectWriter")
    )
    assert_flags(check_owner_enforced(rec), "storage-primary-ownership")


@pytest.mark.parametrize("rule_id", ["expire-noncurrent-versions", "abort-incomplete-multipart-uploads"])
def test_missing_lifecycle_rule_is_caught(rule_id: str) -> None:
    def drop(inputs: dict[str, Any]) -> None:
        inputs["rules"] = [r for r in inputs["rules"] if r["id"] != rule_id]

    rec = changed(recording("prod"), "storage-primary-lifecycle", drop)
    assert_flags(check_lifecycle(rec), "storage-primary-lifecycle")


def test_lifecycle_rule_limited_to_a_prefix_is_caught() -> None:
    def narrow(inputs: dict[str, Any]) -> None:
        for rule in inputs["rules"]:
            rule["filter"] = {"prefix": "docker/registry/v2/repositories/"}

    rec = changed(recording("prod"), "storage-replica-lifecycle", narrow)
    assert_flags(check_lifecycle(rec), "storage-replica-lifecycle")


def test_bucket_policy_without_tls_deny_is_caught() -> None:
    rec = changed(
        recording("prod"),
        "lb-access-logs-policy",
        edit_policy(lambda st: st.remove(next(s for s in st if s.get("Effect") == "Deny"))),
    )
    assert_flags(check_tls_only_bucket_policies(rec), "lb-access-logs-policy")


def test_bucket_without_policy_is_caught() -> None:
    rec = without(recording("prod"), "storage-replica-policy")
    assert_flags(check_tls_only_bucket_policies(rec), "storage-replica")


def test_replica_satellite_in_the_primary_region_is_caught() -> None:
    rec = recording("prod")
    primary_provider = rec.named("aws-primary").urn
    broken = copy.deepcopy(rec)
    broken.named("storage-replica-lifecycle").provider = primary_provider
    assert_flags(check_bucket_regions(broken, stack_settings("prod")), "storage-replica-lifecycle")


def test_primary_bucket_in_the_replica_region_is_caught() -> None:
    rec = copy.deepcopy(recording("payments-prod"))
    rec.named("storage-primary").provider = rec.named("aws-replica").urn
    assert_flags(check_bucket_regions(rec, stack_settings("payments-prod")), "storage-primary")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(filter={"prefix": "docker/registry/v2/blobs/"}),
        lambda r: r["deleteMarkerReplication"].update(status="Disabled"),
        lambda r: r["sourceSelectionCriteria"]["sseKmsEncryptedObjects"].update(status="Disabled"),
        lambda r: r["destination"].pop("encryptionConfiguration"),
        lambda r: r.update(status="Disabled"),
    ],
    ids=["prefix-filter", "no-delete-markers", "skips-kms-objects", "no-replica-key", "disabled"],
)
def test_partial_replication_is_caught(change: Callable[[dict[str, Any]], Any]) -> None:
    rec = changed(recording("staging"), "storage-replication", lambda i: change(i["rules"][0]))
    assert_flags(check_replication_rule(rec), "storage-replication")


def test_replication_time_control_dropped_in_prod_is_caught() -> None:
    rec = changed(
        recording("prod"), "storage-replication", lambda i: i["rules"][0]["destination"].pop("replicationTime")
    )
    assert_flags(check_replication_time_control(rec, stack_settings("prod")), "storage-replication")


def test_replication_time_control_follows_settings() -> None:
    rec, settings = variant("dev", json.dumps({"storage": {"replicationTimeControl": True}}))
    assert check_replication_time_control(rec, settings) == []
    # The same graph against dev's own settings (RTC off: it costs per GB) is a violation.
    assert_flags(check_replication_time_control(rec, stack_settings("dev")), "storage-replication")


# The stack files' intent, pinned. payments-prod (environment prod) has no Object Lock in its stack
# file: the settings-driven guard accepts that; whether it should is for its owners to decide.
@pytest.mark.parametrize(("stack", "locked"), [("prod", True), ("staging", False), ("dev", False)])
def test_object_lock_on_the_replica_in_prod_only(stack: str, locked: bool) -> None:
    locks = [lock.name for lock in recording(stack).of_type(OBJECT_LOCK)]
    assert locks == (["storage-replica-object-lock"] if locked else []), f"{stack}: object lock resources {locks}"


def test_missing_object_lock_is_caught() -> None:
    rec = without(recording("prod"), "storage-replica-object-lock")
    assert_flags(check_replica_object_lock(rec, stack_settings("prod")), "storage-replica")


def test_object_lock_where_settings_say_off_is_caught() -> None:
    rec = changed(recording("staging"), "storage-replica", lambda i: i.update(objectLockEnabled=True))
    assert_flags(check_replica_object_lock(rec, stack_settings("staging")), "storage-replica")


def test_object_lock_retention_drift_is_caught() -> None:
    rec = changed(
        recording("prod"),
        "storage-replica-object-lock",
        lambda i: i["rule"]["defaultRetention"].update(mode="GOVERNANCE"),
    )
    assert_flags(check_replica_object_lock(rec, stack_settings("prod")), "storage-replica-object-lock")


@pytest.mark.parametrize("resource", ["*", "arn:aws:s3:::*/*", "primary-objects"])
def test_replicate_granted_beyond_the_replica_is_caught(resource: str) -> None:
    rec = recording("prod")
    target = f"{rec.named('storage-primary').outputs['arn']}/*" if resource == "primary-objects" else resource

    def widen(st: list[dict[str, Any]]) -> None:
        next(s for s in st if grants(s, "s3:ReplicateObject"))["Resource"] = target

    broken = changed(rec, "storage-replication-policy", edit_policy(widen))
    assert_flags(check_replication_role_scope(broken), "storage-replication-policy")


# --- backup: each guard catches a broken practice -----------------------------------------------


def test_daily_retention_drift_is_caught() -> None:
    rec = changed(
        recording("prod"), "storage-backup-plan", lambda i: only_rule("daily")(i)["lifecycle"].update(deleteAfter=7)
    )
    assert_flags(check_daily_backup(rec, stack_settings("prod")), "storage-backup-plan")


@pytest.mark.parametrize("how", ["no-copy", "copy-to-primary-vault"])
def test_backup_without_cross_region_copy_is_caught(how: str) -> None:
    rec = recording("staging")
    primary_vault = rec.named("storage-vault").outputs["arn"]

    def change(inputs: dict[str, Any]) -> None:
        daily = only_rule("daily")(inputs)
        if how == "no-copy":
            daily.pop("copyActions")
        else:
            daily["copyActions"][0]["destinationVaultArn"] = primary_vault

    broken = changed(rec, "storage-backup-plan", change)
    assert_flags(check_backup_copy(broken, stack_settings("staging")), "storage-backup-plan")


def test_continuous_backup_beyond_35_days_is_caught() -> None:
    rec = changed(
        recording("payments-prod"),
        "storage-backup-plan",
        lambda i: only_rule("continuous")(i)["lifecycle"].update(deleteAfter=60),
    )
    assert_flags(check_continuous_backup(rec, stack_settings("payments-prod")), "storage-backup-plan")


def test_missing_continuous_rule_is_caught() -> None:
    def drop(inputs: dict[str, Any]) -> None:
        inputs["rules"] = [r for r in inputs["rules"] if not r.get("enableContinuousBackup")]

    rec = changed(recording("prod"), "storage-backup-plan", drop)
    assert_flags(check_continuous_backup(rec, stack_settings("prod")), "storage-backup-plan")


def test_continuous_rule_where_settings_say_no_is_caught() -> None:
    rec = changed(
        recording("dev"),
        "storage-backup-plan",
        lambda i: i["rules"].append(
            {"ruleName": "continuous", "enableContinuousBackup": True, "lifecycle": {"deleteAfter": 14}}
        ),
    )
    assert_flags(check_continuous_backup(rec, stack_settings("dev")), "storage-backup-plan")


@pytest.mark.parametrize("extra", ["*", "replica"])
def test_backup_selection_beyond_the_primary_bucket_is_caught(extra: str) -> None:
    rec = recording("prod")
    arn = rec.named("storage-replica").outputs["arn"] if extra == "replica" else extra
    broken = changed(rec, "storage-backup-selection", lambda i: i["resources"].append(arn))
    assert_flags(check_backup_selection(broken), "storage-backup-selection")


@pytest.mark.parametrize("attachment", ["storage-backup-role-s3backup", "storage-backup-role-s3restore"])
def test_backup_role_missing_a_managed_policy_is_caught(attachment: str) -> None:
    rec = without(recording("prod"), attachment)
    assert_flags(check_backup_role(rec), "storage-backup-role")


def test_vault_without_customer_key_is_caught() -> None:
    rec = changed(recording("prod"), "storage-replica-vault", lambda i: i.pop("kmsKeyArn"))
    assert_flags(check_vault_keys(rec), "storage-replica-vault")


@pytest.mark.parametrize("vault", ["storage-vault", "storage-replica-vault"])
def test_vault_without_lock_is_caught(vault: str) -> None:
    rec = without(recording("prod"), f"{vault}-lock")
    assert_flags(check_vault_locks(rec), vault)


# --- network: each guard catches a broken practice ----------------------------------------------


def test_missing_private_subnet_is_caught() -> None:
    rec = without(recording("prod"), "network-private-2")
    assert_flags(check_subnets_per_zone(rec, stack_settings("prod")), "network-vpc")


def test_two_private_subnets_in_one_zone_is_caught() -> None:
    rec = recording("prod")
    zone = value(rec.named("network-private-0"), "availabilityZone")
    broken = changed(rec, "network-private-1", lambda i: i.update(availabilityZone=zone))
    assert_flags(check_subnets_per_zone(broken, stack_settings("prod")), "network-private-1")


def test_private_subnet_with_public_ips_is_caught() -> None:
    rec = changed(recording("dev"), "network-private-0", lambda i: i.update(mapPublicIpOnLaunch=True))
    assert_flags(check_private_subnets_no_public_ip(rec), "network-private-0")


def test_missing_nat_gateway_is_caught() -> None:
    rec = without(recording("prod"), "network-nat-2")
    assert_flags(check_nat_gateways(rec, stack_settings("prod")), "network-vpc")


def test_extra_nat_gateway_in_a_single_nat_stack_is_caught() -> None:
    rec = recording("dev")
    broken = copy.deepcopy(rec)
    extra = copy.deepcopy(rec.named("network-nat-0"))
    extra.name, extra.urn = "network-nat-1", extra.urn.replace("network-nat-0", "network-nat-1")
    broken.resources.append(extra)
    assert_flags(check_nat_gateways(broken, stack_settings("dev")), "network-vpc")


@pytest.mark.parametrize(
    "resource", ["*", "arn:aws:s3:::*", "arn:aws:s3:::someone-elses-bucket/*", "arn:aws:s3:::amazon-ssm-us-east-1/*"]
)
def test_s3_endpoint_admitting_other_buckets_is_caught(resource: str) -> None:
    def add(st: list[dict[str, Any]]) -> None:
        st[0]["Resource"] = [*as_list(st[0]["Resource"]), resource]

    rec = changed(recording("staging"), "network-s3-endpoint", edit_policy(add))
    assert_flags(check_s3_endpoint_policy(rec, stack_settings("staging")), "network-s3-endpoint")


def test_s3_endpoint_missing_the_registry_bucket_is_caught() -> None:
    def drop(st: list[dict[str, Any]]) -> None:
        st[:] = [s for s in st if s.get("Sid") != "RegistryBuckets"]

    rec = changed(recording("dev"), "network-s3-endpoint", edit_policy(drop))
    assert_flags(check_s3_endpoint_policy(rec, stack_settings("dev")), "network-s3-endpoint")


def test_missing_flow_log_is_caught() -> None:
    rec = without(recording("dev"), "network-flow-log")
    assert_flags(check_flow_log(rec), "network-vpc")


def test_flow_log_of_rejected_traffic_only_is_caught() -> None:
    rec = changed(recording("dev"), "network-flow-log", lambda i: i.update(trafficType="REJECT"))
    assert_flags(check_flow_log(rec), "network-flow-log")


# --- CDN: each guard catches a broken practice --------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o.update(originPath="/docker/registry/v2"),
        lambda o: o.pop("originAccessControlId"),
        lambda o: o.update(domainName="registry-bucket.s3-website-eu-west-1.amazonaws.com"),
    ],
    ids=["origin-path", "no-oac", "website-endpoint"],
)
def test_weak_cdn_origin_is_caught(change: Callable[[dict[str, Any]], Any]) -> None:
    rec = changed(recording("prod"), "cdn-distribution", lambda i: change(i["origins"][0]))
    assert_flags(check_cdn_origin(rec), "cdn-distribution")


def test_second_cdn_origin_is_caught() -> None:
    rec = changed(
        recording("prod"), "cdn-distribution", lambda i: i["origins"].append(dict(i["origins"][0], originId="x"))
    )
    assert_flags(check_cdn_origin(rec), "cdn-distribution")


@pytest.mark.parametrize("policy", ["allow-all", "redirect-to-https"])
def test_cdn_accepting_http_is_caught(policy: str) -> None:
    rec = changed(
        recording("dev"), "cdn-distribution", lambda i: i["defaultCacheBehavior"].update(viewerProtocolPolicy=policy)
    )
    assert_flags(check_cdn_https_only(rec), "cdn-distribution")


def test_cdn_accepting_writes_is_caught() -> None:
    methods = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]
    rec = changed(
        recording("dev"), "cdn-distribution", lambda i: i["defaultCacheBehavior"].update(allowedMethods=methods)
    )
    assert_flags(check_cdn_methods(rec), "cdn-distribution")


def test_cdn_without_signed_urls_is_caught() -> None:
    rec = changed(
        recording("prod"), "cdn-distribution", lambda i: i["defaultCacheBehavior"].update(trustedKeyGroups=[])
    )
    assert_flags(check_cdn_trusted_key_groups(rec), "cdn-distribution")


@pytest.mark.parametrize(
    "inputs",
    [{"algorithm": "RSA", "rsaBits": 4096.0}, {"algorithm": "ECDSA", "ecdsaCurve": "P256"}],
    ids=["rsa4096", "ecdsa"],
)
def test_wrong_signing_key_is_caught(inputs: dict[str, Any]) -> None:
    def replace(current: dict[str, Any]) -> None:
        current.clear()
        current.update(inputs)

    rec = changed(recording("prod"), "cdn-signing-key", replace)
    assert_flags(check_cdn_signing_key(rec), "cdn-signing-key")


@pytest.mark.parametrize(
    "change", [{"signingBehavior": "no-override"}, {"signingBehavior": "never"}, {"signingProtocol": "sigv2"}]
)
def test_weak_origin_access_control_is_caught(change: dict[str, str]) -> None:
    rec = changed(recording("prod"), "cdn-oac", lambda i: i.update(change))
    assert_flags(check_origin_access_control(rec), "cdn-oac")


@pytest.mark.parametrize("how", ["whole-bucket", "no-condition", "other-distribution", "more-actions"])
def test_cloudfront_bucket_grant_too_wide_is_caught(how: str) -> None:
    rec = recording("prod")
    arn = rec.named("storage-primary").outputs["arn"]

    def widen(st: list[dict[str, Any]]) -> None:
        stmt = next(s for s in st if is_cloudfront_statement(s))
        if how == "whole-bucket":
            stmt["Resource"] = f"{arn}/*"
        elif how == "no-condition":
            stmt.pop("Condition")
        elif how == "other-distribution":
            stmt["Condition"]["StringEquals"]["AWS:SourceArn"] = "arn:aws:cloudfront::123456789012:distribution/*"
        else:
            stmt["Action"] = ["s3:GetObject", "s3:ListBucket"]

    broken = changed(rec, "storage-policies-bucket-policy", edit_policy(widen))
    assert_flags(check_bucket_policy_cloudfront(broken), "storage-policies-bucket-policy")


def test_missing_cloudfront_bucket_grant_is_caught() -> None:
    rec = changed(
        recording("prod"),
        "storage-policies-bucket-policy",
        edit_policy(lambda st: st.remove(next(s for s in st if is_cloudfront_statement(s)))),
    )
    assert_flags(check_bucket_policy_cloudfront(rec), PRIMARY_BUCKET)


@pytest.mark.parametrize("how", ["no-condition", "all-actions"])
def test_cloudfront_key_grant_too_wide_is_caught(how: str) -> None:
    def widen(st: list[dict[str, Any]]) -> None:
        stmt = next(s for s in st if is_cloudfront_statement(s))
        if how == "no-condition":
            stmt.pop("Condition")
        else:
            stmt["Action"] = "kms:*"

    rec = changed(recording("payments-prod"), "storage-policies-key-policy", edit_policy(widen))
    assert_flags(check_key_policy_cloudfront(rec), "storage-policies-key-policy")


def test_missing_cloudfront_key_grant_is_caught() -> None:
    rec = changed(
        recording("prod"),
        "storage-policies-key-policy",
        edit_policy(lambda st: st.remove(next(s for s in st if is_cloudfront_statement(s)))),
    )
    assert_flags(check_key_policy_cloudfront(rec), "storage-key")


def test_cdn_disabled_leaves_no_distribution_and_no_cloudfront_anywhere() -> None:
    rec, settings = dev_without_cdn()
    assert not [r.name for r in rec.resources if r.type.startswith("aws:cloudfront/")]
    assert check_distribution_matches_settings(rec, settings) == []
    assert check_cloudfront_grants_need_distribution(rec) == []
    assert check_registry_cloudfront_middleware(rec) == []


def test_cdn_disabled_registry_config_has_no_cloudfront_middleware() -> None:
    rec, _ = dev_without_cdn()
    lt, config = registry_config(rec)
    assert isinstance(config, dict), config
    assert "middleware" not in config, f"{lt.name if lt else 'fleet'}: middleware {config.get('middleware')}"


def test_cloudfront_grant_without_distribution_is_caught() -> None:
    rec, _ = dev_without_cdn()
    stmt = {
        "Effect": "Allow",
        "Principal": {"Service": CLOUDFRONT},
        "Action": "s3:GetObject",
        "Resource": f"{rec.named('storage-primary').outputs['arn']}/*",
    }
    broken = changed(rec, "storage-policies-bucket-policy", edit_policy(lambda st: st.append(stmt)))
    assert_flags(check_cloudfront_grants_need_distribution(broken), "storage-policies-bucket-policy")


def test_distribution_while_cdn_disabled_is_caught() -> None:
    _, settings = dev_without_cdn()
    assert_flags(check_distribution_matches_settings(recording("dev"), settings), "cdn-distribution")


def test_cloudfront_middleware_without_distribution_is_caught() -> None:
    rec = without(recording("dev"), "cdn-distribution")
    assert_flags(check_registry_cloudfront_middleware(rec), "fleet-lt")


# --- DNS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dns-registry", "registry-cert-validation-record"])
def test_proxied_record_is_caught(name: str) -> None:
    rec = changed(recording("prod"), name, lambda i: i.update(proxied=True))
    assert_flags(check_dns_not_proxied(rec), name)


@pytest.mark.parametrize(("stack", "expected"), [("prod", True), ("payments-prod", True), ("dev", False)])
def test_blobs_record_only_with_the_cdn_alias(stack: str, expected: bool) -> None:
    names = [value(r, "name") for r in recording(stack).of_type(DNS_RECORD)]
    has_blobs = f"blobs.{stack_settings(stack).domain}" in names
    assert has_blobs == expected, f"{stack}: dns records {names}"


def test_missing_blobs_record_is_caught() -> None:
    rec = without(recording("prod"), "dns-blobs")
    assert_flags(check_blobs_record(rec, stack_settings("prod")), "dns")


def test_blobs_record_pointing_elsewhere_is_caught() -> None:
    rec = changed(recording("prod"), "dns-blobs", lambda i: i.update(content="lb-alb.eu-west-1.elb.amazonaws.com"))
    assert_flags(check_blobs_record(rec, stack_settings("prod")), "dns-blobs")


@pytest.mark.parametrize("name", ["blobs-cert-cert", "blobs-cert-validation"])
def test_alias_certificate_outside_us_east_1_is_caught(name: str) -> None:
    rec = copy.deepcopy(recording("prod"))
    rec.named(name).provider = rec.named("aws-primary").urn
    assert_flags(check_alias_certificate_region(rec, stack_settings("prod")), name)


# --- stateful names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STATEFUL_URNS))
def test_renamed_stateful_resource_is_caught(name: str) -> None:
    rec = copy.deepcopy(recording("prod"))
    res = rec.named(name)
    res.name, res.urn = f"{name}-v2", f"{res.urn}-v2"
    assert_flags(check_stateful_names(rec), name)


def test_reparented_stateful_resource_is_caught() -> None:
    rec = copy.deepcopy(recording("staging"))
    res = rec.named("storage-vault")
    res.urn = res.urn.replace("registry-fleet:index:RegistryStorage$", "")
    assert_flags(check_stateful_names(rec), "storage-vault")
