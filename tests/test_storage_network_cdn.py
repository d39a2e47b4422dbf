"""Storage, backup, network, CDN and DNS guardrails (practices 7, 8, 9, 10) over every stack's recorded graph.

Each guard is a function of a recording (and, where the rule depends on them, the stack's settings)
that returns the violations it finds, each naming the resource. Every guard has a test over every
stack that finds none, and a test that breaks the practice, either by recording a settings variant
or by transforming a deep copy of a recording, and checks that the guard names the resource.

What a compliance rule checks (versioning, Block Public Access, the TLS-only Deny in bucket policies,
replication status and delete markers, vault keys being set, CloudFront https-only, read-only methods,
trusted key groups, origin access control and an empty origin path) is not checked again here: the
rules in policy/rules/ and their broken twins in tests/test_policy_rules.py are the test. The guards
here check what ties a value to the settings and what no rule checks.

What mocks cannot prove, and these tests do not claim: that AWS accepts these inputs, that
replication, backups or CloudFront signed URLs work. Two links are weaker than the rest because the
mock engine fakes no physical name for backup vaults: a vault lock is matched to its vault by
logical name and region (`<vault>-lock`), not by `backupVaultName`; and ids the mock invents
(origin access control, key group) are checked to be set, not to be the right resource's id.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pytest

from components import network
from components.errors import ComponentInputError
from components.private_bucket import harden_bucket
from fleet.engine import Recording, local_zone, record
from infra.settings import PROJECT, Settings, load_stack_settings
from policy.graph import Res, as_list, host_boot, prop, satellites, statements, unwrap
from policy.rules.tls import denies_plain_http
from tests.helpers import STACKS, recording, settings_with

BUCKET = "aws:s3/bucket:Bucket"
ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
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
DNS_RECORD = "cloudflare:index/dnsRecord:DnsRecord"
CERTIFICATE_COMPONENT = "registry-fleet:index:DnsValidatedCertificate"
AWS_PROVIDER = "pulumi:providers:aws"

PRIMARY_BUCKET = "storage-primary"
REPLICA_BUCKET = "storage-replica"
REGISTRY_BUCKETS = (PRIMARY_BUCKET, REPLICA_BUCKET)
CLOUDFRONT = "cloudfront.amazonaws.com"
US_EAST_1_PROVIDER = "aws-us-east-1"
BLOB_KEYS = "docker/registry/v2/blobs/*"  # the registry's blob prefix when storage.s3.rootdirectory is unset
BACKUP_POLICIES = {
    "arn:aws:iam::aws:policy/AWSBackupServiceRolePolicyForS3Backup",
    "arn:aws:iam::aws:policy/AWSBackupServiceRolePolicyForS3Restore",
    "arn:aws:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup",  # copy jobs
}
EVERY_OBJECT = {"prefix": ""}  # a lifecycle rule's filter for the whole bucket
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


# The graph readers are the policy rules' own (policy/graph.py): `prop(res, *path)` is the unwrapped
# input at `path`, `satellites` the resources whose `bucket` names a bucket.


def find(rec: Recording, name: str) -> Res | None:
    found = [r for r in rec.resources if r.name == name]
    return found[0] if len(found) == 1 else None


def region_of(rec: Recording, res: Res) -> str | None:
    """The region of the AWS provider the resource was registered with (None: default provider)."""
    provider = rec.by_urn(res.provider) if res.provider else None
    return str(unwrap(provider.inputs.get("region"))) if provider is not None else None


def attached(rec: Recording, bucket: Res, type_: str) -> list[Res]:
    """Ress of `type_` whose `bucket` input is this bucket's name."""
    return satellites(rec.resources, bucket, type_)


def policy_statements(res: Res) -> list[Mapping[str, Any]]:
    """The statements of the resource's `policy` document."""
    return statements(prop(res, "policy")) or []


def principals(stmt: Mapping[str, Any]) -> set[str]:
    p = stmt.get("Principal")
    if isinstance(p, str):
        return {p}
    if isinstance(p, dict):
        return {str(x) for v in p.values() for x in as_list(v)}
    return set()


def condition(stmt: Mapping[str, Any], operator: str, key: str) -> list[Any]:
    block = (stmt.get("Condition") or {}).get(operator) or {}
    return as_list(next((v for k, v in block.items() if k.lower() == key.lower()), None))


def grants(stmt: Mapping[str, Any], action: str) -> bool:
    """Whether the statement's Action patterns cover `action` (IAM matching is case-insensitive)."""
    return any(fnmatch.fnmatchcase(action.lower(), str(a).lower()) for a in as_list(stmt.get("Action")))


def is_cloudfront_statement(stmt: Mapping[str, Any]) -> bool:
    return CLOUDFRONT in principals(stmt)


def distributions(rec: Recording) -> list[Res]:
    return rec.of_type(DISTRIBUTION)


def replication_configs(rec: Recording) -> list[Res]:
    primary = find(rec, PRIMARY_BUCKET)
    return attached(rec, primary, REPLICATION) if primary else []


def kms_key_regions(rec: Recording) -> dict[str, str | None]:
    return {str(k.outputs.get("arn")): region_of(rec, k) for k in rec.of_type(KMS_KEY)}


def registry_config(rec: Recording) -> tuple[Res | None, dict[str, Any] | str]:
    """The launch template and the registry `config.yml` in its user-data (or why it is unreadable)."""
    hosts = list(host_boot(rec.resources))
    if len(hosts) != 1:
        return None, f"{len(hosts)} launch templates"
    lt, _, config = hosts[0]
    return lt, config if config is not None else "userData is not known"


def plan_rules(rec: Recording) -> list[tuple[Res, dict[str, Any]]]:
    return [(plan, rule) for plan in rec.of_type(PLAN) for rule in as_list(prop(plan, "rules"))]


def subnets(rec: Recording, tier: str) -> list[Res]:
    # By name, not registration order: the engine registers resources whose inputs wait on
    # outputs in no fixed order, and a check that reports "the second one" must be repeatable.
    return sorted((s for s in rec.of_type(SUBNET) if prop(s, "tags", "tier") == tier), key=lambda s: s.name)


# --- storage (practices 7, 8, 10) -------------------------------------------------------------


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
            rules = as_list(prop(cfg, "rules"))
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


def check_owner_enforced(rec: Recording) -> list[str]:
    """Every bucket disables ACLs (BucketOwnerEnforced)."""
    out = []
    for bucket in rec.of_type(BUCKET):
        controls = attached(rec, bucket, OWNERSHIP)
        if not controls:
            out.append(f"{bucket.name}: no BucketOwnershipControls")
        for c in controls:
            ownership = prop(c, "rule", "objectOwnership")
            if ownership != "BucketOwnerEnforced":
                out.append(f"{c.name}: objectOwnership {ownership!r}, expected 'BucketOwnerEnforced'")
    return out


def check_lifecycle(rec: Recording) -> list[str]:
    """Registry buckets expire noncurrent versions and abort incomplete multipart uploads, for every object
    (that some enabled rule expires noncurrent versions: rule noncurrent-versions-expire)."""
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
            for rule in as_list(prop(cfg, "rules"))
            if rule.get("status") == "Enabled" and rule.get("filter") == EVERY_OBJECT and not rule.get("prefix")
        ]
        label = configs[0].name
        if not any((r.get("noncurrentVersionExpiration") or {}).get("noncurrentDays") for _, r in rules):
            out.append(f"{label}: no enabled whole-bucket noncurrent-version expiration")
        if not any((r.get("abortIncompleteMultipartUpload") or {}).get("daysAfterInitiation") for _, r in rules):
            out.append(f"{label}: no enabled whole-bucket abort of incomplete multipart uploads")
    return out


def covers_bucket_and_objects(stmt: Mapping[str, Any], arn: str) -> bool:
    return (
        grants(stmt, "s3:GetObject")
        and grants(stmt, "s3:PutObject")
        and {arn, f"{arn}/*"} <= set(as_list(stmt.get("Resource")))
    )


def check_tls_deny_scope(rec: Recording) -> list[str]:
    """One bucket policy per bucket, whose plain-HTTP Deny covers reads and writes of the bucket and its
    objects (that every bucket has a policy with such a Deny: rule tls-only-buckets)."""
    out = []
    for bucket in rec.of_type(BUCKET):
        policies = attached(rec, bucket, BUCKET_POLICY)
        if len(policies) > 1:
            out.append(f"{bucket.name}: {len(policies)} bucket policies fight over one bucket")
        for policy in policies:
            denies = [s for s in policy_statements(policy) if denies_plain_http(s)]
            if denies and not any(covers_bucket_and_objects(s, str(bucket.outputs.get("arn"))) for s in denies):
                out.append(f"{policy.name}: the Deny of plain HTTP does not cover s3:* on the bucket and its objects")
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
        members += [r for r in rec.resources if r is not bucket and prop(r, "bucket") == bucket.outputs.get("bucket")]
        for cfg in attached(rec, bucket, ENCRYPTION):
            for rule in as_list(prop(cfg, "rules")):
                key_arn = (rule.get("applyServerSideEncryptionByDefault") or {}).get("kmsMasterKeyId")
                members += [k for k in rec.of_type(KMS_KEY) if k.outputs.get("arn") == key_arn]
        for res in members:
            region = region_of(rec, res)
            if region != expected:
                out.append(f"{res.name}: provider region {region!r}, expected {expected!r} (with {name})")
    return out


def check_replication_rule(rec: Recording) -> list[str]:
    """Replication of every object, KMS-encrypted objects included, to the replica bucket under the replica key
    (the rule enabled, delete markers replicated, the replica in another region: rule bucket-replicated)."""
    out = []
    primary, replica = find(rec, PRIMARY_BUCKET), find(rec, REPLICA_BUCKET)
    if primary is None or replica is None:
        return [f"{PRIMARY_BUCKET}: primary or replica bucket missing"]
    configs = replication_configs(rec)
    if len(configs) != 1:
        return [f"{PRIMARY_BUCKET}: {len(configs)} replication configurations, expected 1"]
    cfg = configs[0]
    keys = kms_key_regions(rec)
    rules = as_list(prop(cfg, "rules"))
    if not rules:
        out.append(f"{cfg.name}: no replication rule")
    for rule in rules:
        rid = rule.get("id", "?")
        dest = rule.get("destination") or {}
        if rule.get("filter") != {} or rule.get("prefix"):
            out.append(f"{cfg.name}: rule {rid} filter {rule.get('filter')!r} does not cover every object (use {{}})")
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
        for rule in as_list(prop(cfg, "rules")):
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
            retention = prop(cfg, "rule", "defaultRetention") or {}
            if prop(cfg, "objectLockEnabled") not in (None, "Enabled"):
                out.append(f"{cfg.name}: objectLockEnabled {prop(cfg, 'objectLockEnabled')!r}")
            if (retention.get("mode"), retention.get("days")) != (lock.mode, lock.days):
                out.append(f"{cfg.name}: default retention {retention}, settings say {lock.mode} {lock.days} days")
    elif configs or prop(replica, "objectLockEnabled") is True:
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
        for stmt in policy_statements(policy):
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
    chosen = as_list(prop(selections[0], "resources"))
    if chosen != [primary.outputs.get("arn")]:
        return [f"{selections[0].name}: resources {chosen}, expected only {primary.outputs.get('arn')}"]
    return []


def check_restore_testing(rec: Recording, s: Settings) -> list[str]:
    """A weekly restore test of the primary bucket's latest recovery point from the stack's vault, restored
    into a bucket under the stack's key; continuous recovery points too when the stack keeps them."""
    primary, vault, key = find(rec, PRIMARY_BUCKET), find(rec, "storage-vault"), find(rec, "storage-key")
    plan, selection = find(rec, "storage-restore-testing-plan"), find(rec, "storage-restore-testing-selection")
    if None in (primary, vault, key, plan, selection):
        return ["storage: no restore testing plan and selection (or no primary bucket, vault, key)"]
    assert primary and vault and key and plan and selection
    out = []
    name = str(prop(plan, "name"))
    if not re.fullmatch(r"[A-Za-z0-9_]{1,50}", name):
        out.append(f"{plan.name}: name {name!r} (AWS allows letters, digits and _ only, 50 at most)")
    picked = prop(plan, "recoveryPointSelection")
    types = ["SNAPSHOT", "CONTINUOUS"] if s.backup.continuous else ["SNAPSHOT"]
    expected = {
        "algorithm": "LATEST_WITHIN_WINDOW",
        "includeVaults": [vault.outputs.get("arn")],
        "recoveryPointTypes": types,
        "selectionWindowDays": 7.0,
    }
    if picked != expected:
        out.append(f"{plan.name}: recoveryPointSelection {picked}, expected {expected}")
    want = {
        "restoreTestingPlanName": name,
        "protectedResourceType": "S3",
        "protectedResourceArns": [primary.outputs.get("arn")],
        "restoreMetadataOverrides": {"encryptionType": "SSE-KMS", "kmsKey": key.outputs.get("arn")},
    }
    got = {k: prop(selection, k) for k in want}
    if got != want:
        out.append(f"{selection.name}: {got}, expected {want}")
    return out


def check_lifecycle_filters(rec: Recording) -> list[str]:
    """Every lifecycle rule of every bucket (the access-log bucket's too) has a filter with a key: an empty
    filter (`{}`) or none draws the provider's warning that it will become an error; `{"prefix": ""}` is
    the whole bucket."""
    out = []
    for cfg in rec.of_type(LIFECYCLE):
        for rule in as_list(prop(cfg, "rules")):
            flt = rule.get("filter")
            if not isinstance(flt, Mapping) or not flt:
                out.append(f"{cfg.name}: rule {rule.get('id')} has filter {flt!r}, not one of prefix, tag, size, and")
    if not rec.of_type(LIFECYCLE):
        out.append("storage: no lifecycle configuration")
    return out


def check_backup_role(rec: Recording) -> list[str]:
    """The role of the backup selection has AWS's S3 backup and S3 restore managed policies, and AWS Backup's
    own, which the plan's cross-region copy jobs run under."""
    out = []
    for selection in rec.of_type(SELECTION):
        arn = prop(selection, "iamRoleArn")
        roles = [r for r in rec.of_type(ROLE) if r.outputs.get("arn") == arn]
        if len(roles) != 1:
            out.append(f"{selection.name}: iamRoleArn {arn!r} is not a role of this program")
            continue
        role = roles[0]
        have = {prop(a, "policyArn") for a in rec.of_type(ROLE_ATTACHMENT) if prop(a, "role") == role.outputs["name"]}
        missing = sorted(BACKUP_POLICIES - have)
        if missing:
            out.append(f"{role.name}: missing managed policies {missing}")
    if not rec.of_type(SELECTION):
        out.append("storage: no backup selection")
    return out


def check_vault_keys(rec: Recording) -> list[str]:
    """Each backup vault's KMS key is a key of the program in the vault's region (that it has one: rule
    backup-vaults-encrypted), and both regions have a vault."""
    out = []
    keys = kms_key_regions(rec)
    for vault in rec.of_type(VAULT):
        key = prop(vault, "kmsKeyArn")
        if key and keys.get(key) != region_of(rec, vault):
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
            if (name and prop(lock, "backupVaultName") == name)
            or (lock.name == f"{vault.name}-lock" and region_of(rec, lock) == region_of(rec, vault))
        ]
        if not mine:
            out.append(f"{vault.name}: no VaultLockConfiguration")
        for lock in mine:
            if not prop(lock, "maxRetentionDays") or not prop(lock, "minRetentionDays"):
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
        zones = [prop(sn, "availabilityZone") for sn in found]
        zones_by_tier[tier] = set(zones)
        # The region's own zones: a Local Zone (`<region>-<metro>-1a`) is what an unfiltered lookup lists first.
        out += [
            f"{sn.name}: zone {zone} is not one of {s.region}'s own zones"
            for sn, zone in zip(found, zones, strict=True)
            if not re.fullmatch(rf"{re.escape(s.region)}[a-z]", str(zone))
        ]
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
        f"{sn.name}: mapPublicIpOnLaunch is true" for sn in subnets(rec, "private") if prop(sn, "mapPublicIpOnLaunch")
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
    endpoints = [e for e in rec.of_type(VPC_ENDPOINT) if prop(e, "serviceName") == f"com.amazonaws.{s.region}.s3"]
    if len(endpoints) != 1:
        return [f"{vpc_label(rec)}: {len(endpoints)} S3 gateway endpoints, expected 1"]
    ep = endpoints[0]
    out = []
    allowed: set[str] = set()
    for stmt in policy_statements(ep):
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
    vpc_ids = {prop(sn, "vpcId") for sn in rec.of_type(SUBNET)}
    if len(vpc_ids) != 1:
        return [f"{vpc_label(rec)}: subnets in {len(vpc_ids)} VPCs"]
    logs = [f for f in rec.of_type(FLOW_LOG) if prop(f, "vpcId") in vpc_ids]
    if not logs:
        return [f"{vpc_label(rec)}: no flow log"]
    return [
        f"{f.name}: trafficType {prop(f, 'trafficType')!r} or no destination"
        for f in logs
        if prop(f, "trafficType") != "ALL" or not prop(f, "logDestination")
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
    """The only origin is the primary bucket's regional endpoint (origin access control and an empty origin
    path: rule cdn-origin-access-control)."""
    primary = find(rec, PRIMARY_BUCKET)
    out = []
    for d in distributions(rec):
        origins = as_list(prop(d, "origins"))
        if len(origins) != 1:
            out.append(f"{d.name}: {len(origins)} origins, expected only the registry bucket")
        for o in origins:
            if primary is None or o.get("domainName") != primary.outputs.get("bucketRegionalDomainName"):
                out.append(f"{d.name}: origin {o.get('domainName')!r} is not the primary bucket's regional name")
            if o.get("s3OriginConfig", {}).get("originAccessIdentity") or o.get("customOriginConfig"):
                out.append(f"{d.name}: origin uses a legacy OAI or a custom (public) origin")
    return out


def check_cdn_signing_key(rec: Recording) -> list[str]:
    """The key behind each CloudFront public key is a pulumi-tls RSA 2048 key (PKCS#1 for the registry)."""
    out = []
    keys = {k.outputs.get("publicKeyPem"): k for k in rec.of_type(PRIVATE_KEY)}
    for pub in rec.of_type(PUBLIC_KEY):
        key = keys.get(prop(pub, "encodedKey"))
        if key is None:
            out.append(f"{pub.name}: encodedKey is not the public half of a tls PrivateKey of this program")
        elif (prop(key, "algorithm"), prop(key, "rsaBits")) != ("RSA", 2048):
            out.append(f"{key.name}: {prop(key, 'algorithm')} {prop(key, 'rsaBits')}, expected RSA 2048")
    if distributions(rec) and not rec.of_type(PUBLIC_KEY):
        out.append(f"{distributions(rec)[0].name}: no CloudFront public key")
    return out


def check_origin_access_control(rec: Recording) -> list[str]:
    """Origin access control signs every request to S3 with SigV4."""
    want = {"signingProtocol": "sigv4", "signingBehavior": "always", "originAccessControlOriginType": "s3"}
    out = [
        f"{oac.name}: {k} {prop(oac, k)!r}, expected {v!r}"
        for oac in rec.of_type(OAC)
        for k, v in want.items()
        if prop(oac, k) != v
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
        for stmt in filter(is_cloudfront_statement, policy_statements(policy)):
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
            elif prop(policy, "bucket") == (primary.outputs.get("bucket") if primary else None):
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
        for rule in as_list(prop(cfg, "rules")):
            key_arns.add((rule.get("applyServerSideEncryptionByDefault") or {}).get("kmsMasterKeyId"))
    key_ids = {k.outputs.get("keyId") for k in rec.of_type(KMS_KEY) if k.outputs.get("arn") in key_arns}
    out = []
    granted = 0
    for policy in rec.of_type(KEY_POLICY):
        for stmt in filter(is_cloudfront_statement, policy_statements(policy)):
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
            elif prop(policy, "keyId") in key_ids:
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
        if any(is_cloudfront_statement(stmt) for stmt in policy_statements(p))
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
        f"{r.name}: proxied is {prop(r, 'proxied')!r}, expected false"
        for r in rec.of_type(DNS_RECORD)
        if prop(r, "proxied") is not False
    ]


def check_blobs_record(rec: Recording, s: Settings) -> list[str]:
    """`blobs.<domain>` points at the distribution exactly when the CDN alias is on."""
    host = f"blobs.{s.domain}"
    found = [r for r in rec.of_type(DNS_RECORD) if prop(r, "name") == host]
    if s.cdn_alias_host is None:
        return [f"{r.name}: {host} exists but the CDN alias is off" for r in found]
    if len(found) != 1:
        return [f"dns: {len(found)} records for {host}, expected 1"]
    domains = {d.outputs.get("domainName") for d in distributions(rec)}
    if prop(found[0], "content") not in domains:
        return [f"{found[0].name}: content {prop(found[0], 'content')!r} is not the distribution's domain"]
    return []


def check_alias_certificate_region(rec: Recording, s: Settings) -> list[str]:
    """The CDN alias certificate and its validation live in us-east-1, through the aws-us-east-1 provider."""
    if s.cdn_alias_host is None:
        return []
    out = []
    comps = [
        c
        for c in rec.of_type(CERTIFICATE_COMPONENT)
        if any(prop(r, "domainName") == s.cdn_alias_host for r in rec.resources if r.parent == c.urn)
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
    check_kms_encryption,
    check_owner_enforced,
    check_lifecycle,
    check_lifecycle_filters,
    check_tls_deny_scope,
    check_replication_rule,
    check_replication_role_scope,
    check_backup_selection,
    check_backup_role,
    check_vault_keys,
    check_vault_locks,
    check_private_subnets_no_public_ip,
    check_flow_log,
    check_cdn_origin,
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
    check_restore_testing,
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
    """A copy of `rec` with `change` applied to a copy of the (unwrapped) inputs of resource `name`."""
    inputs = copy.deepcopy(unwrap(rec.named(name).inputs))
    change(inputs)
    return rec.replaced(name, inputs=inputs)


def without(rec: Recording, *names: str) -> Recording:
    out = dataclasses.replace(rec, resources=[r for r in rec.resources if r.name not in names])
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


def test_acls_enabled_is_caught() -> None:
    rec = changed(
        recording("dev"), "storage-primary-ownership", lambda i: i["rule"].update(objectOwnership="ObjectWriter")
    )
    assert_flags(check_owner_enforced(rec), "storage-primary-ownership")


@pytest.mark.parametrize("rule_id", ["abort-incomplete-multipart-uploads"])
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


@pytest.mark.parametrize(
    "change",
    [lambda st: st[0].update(Action="s3:ListBucket"), lambda st: st[0].update(Resource=st[0]["Resource"][:1])],
    ids=["one-action", "bucket-only"],
)
def test_tls_deny_of_part_of_the_bucket_is_caught(change: Callable[[list[dict[str, Any]]], Any]) -> None:
    rec = changed(recording("prod"), "storage-replica-policy", edit_policy(change))
    assert_flags(check_tls_deny_scope(rec), "storage-replica-policy")


def test_replica_satellite_in_the_primary_region_is_caught() -> None:
    rec = recording("prod")
    broken = rec.replaced("storage-replica-lifecycle", provider=rec.named("aws-primary").urn)
    assert_flags(check_bucket_regions(broken, stack_settings("prod")), "storage-replica-lifecycle")


def test_primary_bucket_in_the_replica_region_is_caught() -> None:
    rec = recording("payments-prod")
    rec = rec.replaced("storage-primary", provider=rec.named("aws-replica").urn)
    assert_flags(check_bucket_regions(rec, stack_settings("payments-prod")), "storage-primary")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(filter={"prefix": "docker/registry/v2/blobs/"}),
        lambda r: r["sourceSelectionCriteria"]["sseKmsEncryptedObjects"].update(status="Disabled"),
        lambda r: r["destination"].pop("encryptionConfiguration"),
    ],
    ids=["prefix-filter", "skips-kms-objects", "no-replica-key"],
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


def test_restore_testing_of_another_bucket_or_vault_is_caught() -> None:
    rec = recording("prod")
    arn = rec.named("storage-replica").outputs["arn"]
    broken = changed(rec, "storage-restore-testing-selection", lambda i: i.update(protectedResourceArns=[arn]))
    assert_flags(check_restore_testing(broken, stack_settings("prod")), "storage-restore-testing-selection")
    vault = rec.named("storage-replica-vault").outputs["arn"]
    broken = changed(
        rec, "storage-restore-testing-plan", lambda i: i["recoveryPointSelection"].update(includeVaults=[vault])
    )
    assert_flags(check_restore_testing(broken, stack_settings("prod")), "storage-restore-testing-plan")
    broken = changed(rec, "storage-restore-testing-plan", lambda i: i.update(name="registry-fleet-restore"))
    assert_flags(check_restore_testing(broken, stack_settings("prod")), "storage-restore-testing-plan")


@pytest.mark.parametrize(
    "attachment", ["storage-backup-role-s3backup", "storage-backup-role-s3restore", "storage-backup-role-backup"]
)
def test_backup_role_missing_a_managed_policy_is_caught(attachment: str) -> None:
    rec = without(recording("prod"), attachment)
    assert_flags(check_backup_role(rec), "storage-backup-role")


def test_vault_key_from_the_other_region_is_caught() -> None:
    primary_key = recording("prod").named("storage-key").outputs["arn"]
    rec = changed(recording("prod"), "storage-replica-vault", lambda i: i.update(kmsKeyArn=primary_key))
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
    zone = prop(rec.named("network-private-0"), "availabilityZone")
    broken = changed(rec, "network-private-1", lambda i: i.update(availabilityZone=zone))
    assert_flags(check_subnets_per_zone(broken, stack_settings("prod")), "network-private-1")


def test_subnet_in_a_local_zone_is_caught() -> None:
    rec = recording("payments-prod")
    broken = changed(rec, "network-public-0", lambda i: i.update(availabilityZone=local_zone("us-east-1")))
    assert_flags(check_subnets_per_zone(broken, stack_settings("payments-prod")), "network-public-0")


def test_an_unfiltered_zone_lookup_gets_a_local_zone_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock lists a Local Zone first unless the lookup filters on opt-in-status: without the program's
    filter, the first subnets would land there and the guard would catch it."""
    monkeypatch.setattr(network, "ZONE_OPT_IN_NOT_REQUIRED", "opted-in")
    rec = record(stack_settings("dev"))
    assert prop(rec.named("network-private-0"), "availabilityZone") == local_zone("eu-west-1")
    assert_flags(check_subnets_per_zone(rec, stack_settings("dev")), "network-private-0")


@pytest.mark.parametrize("name", ["storage-primary-lifecycle", "lb-access-logs-lifecycle"])
def test_lifecycle_rule_with_an_empty_filter_is_caught(name: str) -> None:
    rec = changed(recording("dev"), name, lambda i: i["rules"][0].update(filter={}))
    assert_flags(check_lifecycle_filters(rec), name)


def test_harden_bucket_refuses_a_lifecycle_rule_without_a_filter() -> None:
    with pytest.raises(ComponentInputError, match="rule expire-all has no filter; give it one"):
        harden_bucket(
            "logs",
            None,  # type: ignore[arg-type]  # refused before the bucket is used
            encryption=[],
            lifecycle_rules=[{"id": "expire-all", "status": "Enabled", "filter": {}, "expiration": {"days": 1}}],
            opts=pulumi.ResourceOptions(),
        )


def test_private_subnet_with_public_ips_is_caught() -> None:
    rec = changed(recording("dev"), "network-private-0", lambda i: i.update(mapPublicIpOnLaunch=True))
    assert_flags(check_private_subnets_no_public_ip(rec), "network-private-0")


def test_missing_nat_gateway_is_caught() -> None:
    rec = without(recording("prod"), "network-nat-2")
    assert_flags(check_nat_gateways(rec, stack_settings("prod")), "network-vpc")


def test_extra_nat_gateway_in_a_single_nat_stack_is_caught() -> None:
    rec = recording("dev")
    nat = rec.named("network-nat-0")
    extra = dataclasses.replace(nat, name="network-nat-1", urn=nat.urn.replace("network-nat-0", "network-nat-1"))
    broken = dataclasses.replace(rec, resources=[*rec.resources, extra])
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
        lambda o: o.update(domainName="registry-bucket.s3-website-eu-west-1.amazonaws.com"),
        lambda o: o.update(customOriginConfig={"originProtocolPolicy": "https-only"}),
    ],
    ids=["website-endpoint", "custom-origin"],
)
def test_weak_cdn_origin_is_caught(change: Callable[[dict[str, Any]], Any]) -> None:
    rec = changed(recording("prod"), "cdn-distribution", lambda i: change(i["origins"][0]))
    assert_flags(check_cdn_origin(rec), "cdn-distribution")


def test_second_cdn_origin_is_caught() -> None:
    rec = changed(
        recording("prod"), "cdn-distribution", lambda i: i["origins"].append(dict(i["origins"][0], originId="x"))
    )
    assert_flags(check_cdn_origin(rec), "cdn-distribution")


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


@pytest.mark.parametrize("stack", STACKS)
def test_every_cdn_is_served_on_its_alias(stack: str) -> None:
    """The CDN needs its alias (settings: cdn.alias; rule tls-cdn-viewers): every stack has `blobs.<domain>`."""
    names = [prop(r, "name") for r in recording(stack).of_type(DNS_RECORD)]
    assert f"blobs.{stack_settings(stack).domain}" in names, f"{stack}: dns records {names}"


def test_no_blobs_record_without_the_cdn() -> None:
    rec, s = variant("dev", json.dumps({"cdn": {"enabled": False}}))
    names = [prop(r, "name") for r in rec.of_type(DNS_RECORD)]
    assert f"blobs.{s.domain}" not in names and not rec.of_type(DISTRIBUTION), names


def test_missing_blobs_record_is_caught() -> None:
    rec = without(recording("prod"), "dns-blobs")
    assert_flags(check_blobs_record(rec, stack_settings("prod")), "dns")


def test_blobs_record_pointing_elsewhere_is_caught() -> None:
    rec = changed(recording("prod"), "dns-blobs", lambda i: i.update(content="lb-alb.eu-west-1.elb.amazonaws.com"))
    assert_flags(check_blobs_record(rec, stack_settings("prod")), "dns-blobs")


@pytest.mark.parametrize("name", ["blobs-cert-cert", "blobs-cert-validation"])
def test_alias_certificate_outside_us_east_1_is_caught(name: str) -> None:
    rec = recording("prod")
    rec = rec.replaced(name, provider=rec.named("aws-primary").urn)
    assert_flags(check_alias_certificate_region(rec, stack_settings("prod")), name)


# --- stateful names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STATEFUL_URNS))
def test_renamed_stateful_resource_is_caught(name: str) -> None:
    rec = recording("prod")
    rec = rec.replaced(name, name=f"{name}-v2", urn=f"{rec.named(name).urn}-v2")
    assert_flags(check_stateful_names(rec), name)


def test_reparented_stateful_resource_is_caught() -> None:
    rec = recording("staging")
    urn = rec.named("storage-vault").urn.replace("registry-fleet:index:RegistryStorage$", "")
    rec = rec.replaced("storage-vault", urn=urn)
    assert_flags(check_stateful_names(rec), "storage-vault")
