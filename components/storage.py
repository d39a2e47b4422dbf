"""RegistryStorage: where every image lives, and how it survives (practices 7, 8 and 10).

Creates the registry's primary bucket (versioned, SSE-KMS with a customer key and bucket key,
all four Block Public Access flags, BucketOwnerEnforced, lifecycle rules that expire
noncurrent versions and abort incomplete multipart uploads: the registry's upload scratch
files leave versions behind), a replica bucket in the replica region through a second
provider, protected the same way with its own KMS key (optionally under Object Lock), the
replication of every object and delete marker with a least-privilege role, and an AWS Backup
vault, plan (daily, plus continuous when set, copied to a vault in the replica region) and
selection for the primary bucket.

The primary bucket's policy and key policy are made by :class:`RegistryBucketPolicies` once the
CDN exists, because CloudFront's read grant names the distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_aws as aws

from components.iam import allow_service, assume_role_policy, policy_document
from components.private_bucket import EVERY_OBJECT, harden_bucket, sse_kms, tls_only_statement
from host.contract import BLOB_PREFIX

CLOUDFRONT = "cloudfront.amazonaws.com"
# The backup plan's role (the selection's): S3 backup and restore, and AWS Backup's own service-role policy,
# which the plan's cross-region copy jobs run under (they copy recovery points between the two vaults).
# The restore testing plan: every week AWS Backup restores the latest recovery point of the primary bucket into
# a new bucket (encrypted with the stack's key), reports the job, and deletes the restored bucket after the
# validation window (AWS Backup "restore testing"; moto runs no backup jobs: docs/backups.md).
RESTORE_TEST_SCHEDULE = "cron(0 5 ? * SUN *)"
RESTORE_TEST_WINDOW_DAYS = 7  # pick the latest recovery point of the last week
RESTORE_TEST_VALIDATION_HOURS = 24  # the restored bucket is kept this long for checks, then deleted
BACKUP_MANAGED_POLICIES = (
    "arn:aws:iam::aws:policy/AWSBackupServiceRolePolicyForS3Backup",
    "arn:aws:iam::aws:policy/AWSBackupServiceRolePolicyForS3Restore",
    "arn:aws:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup",
)


def primary_bucket_policy(bucket_arn: str, distribution_arn: str | None) -> str:
    """TLS only; CloudFront (through origin access control) may read blobs and nothing else."""
    statements = [tls_only_statement(bucket_arn)]
    if distribution_arn:
        statements.append(
            allow_service(
                "CloudFrontReadsBlobs",
                CLOUDFRONT,
                "s3:GetObject",
                f"{bucket_arn}/{BLOB_PREFIX}*",
                source_arn=distribution_arn,
            )
        )
    return policy_document(*statements)


def key_policy(account_id: str, distribution_arn: str | None) -> str:
    """Account IAM administers the key; CloudFront may decrypt only for this distribution."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AccountAdministersThroughIam",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    if distribution_arn:
        statements.append(
            allow_service("CloudFrontDecryptsBlobs", CLOUDFRONT, "kms:Decrypt", "*", source_arn=distribution_arn)
        )
    return policy_document(*statements)


def replication_policy(source_arn: str, dest_arn: str, source_key: str, dest_key: str, region: str) -> str:
    return policy_document(
        {
            "Effect": "Allow",
            "Action": ["s3:GetReplicationConfiguration", "s3:ListBucket"],
            "Resource": source_arn,
        },
        {
            "Effect": "Allow",
            "Action": [
                "s3:GetObjectVersionForReplication",
                "s3:GetObjectVersionAcl",
                "s3:GetObjectVersionTagging",
                "s3:GetObjectRetention",
                "s3:GetObjectLegalHold",
            ],
            "Resource": f"{source_arn}/*",
        },
        {
            "Effect": "Allow",
            "Action": ["s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags"],
            "Resource": f"{dest_arn}/*",
        },
        {
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": source_key,
            "Condition": {"StringLike": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
        },
        {
            "Effect": "Allow",
            "Action": ["kms:Encrypt", "kms:GenerateDataKey"],
            "Resource": dest_key,
        },
    )


REPLICATION_RULE_ID = "replicate-everything"  # a dimension of the replication metrics


@dataclass
class ObjectLock:
    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    days: int


@dataclass
class RegistryStorageArgs:
    region: str
    replica_region: str
    replica_provider: pulumi.ProviderResource
    bucket_prefix: str
    noncurrent_version_days: int
    abort_incomplete_upload_days: int
    replication_time_control: bool
    backup_schedule: str
    backup_retention_days: int
    continuous_backup: bool
    continuous_retention_days: int
    vault_lock_mode: Literal["governance", "compliance"]
    tags: dict[str, str]
    # Object Lock on the replica: a tamper-proof copy even if the primary account is misused.
    replica_object_lock: ObjectLock | None = None
    # Stateful resources refuse deletion (pulumi destroy, replacement) unless unprotected first.
    protect: bool = True


class RegistryStorage(pulumi.ComponentResource):
    bucket: aws.s3.Bucket
    key: aws.kms.Key
    replica_bucket: aws.s3.Bucket
    replica_key: aws.kms.Key

    def __init__(self, name: str, args: RegistryStorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryStorage", name, None, opts)
        tags = args.tags
        child = pulumi.ResourceOptions(parent=self)
        keep = pulumi.ResourceOptions(parent=self, protect=args.protect)
        replica = pulumi.ResourceOptions(parent=self, provider=args.replica_provider)
        replica_keep = pulumi.ResourceOptions.merge(replica, pulumi.ResourceOptions(protect=args.protect))

        self.key = aws.kms.Key(
            f"{name}-key",
            description="registry-fleet: registry blobs (primary bucket and backup vault)",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags,
            opts=keep,
        )
        self.replica_key = aws.kms.Key(
            f"{name}-replica-key",
            description="registry-fleet: registry blobs (replica bucket and backup copies)",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags,
            opts=replica_keep,
        )

        self.bucket = aws.s3.Bucket(f"{name}-primary", bucket_prefix=f"{args.bucket_prefix}-", tags=tags, opts=keep)
        self.replica_bucket = aws.s3.Bucket(
            f"{name}-replica",
            bucket_prefix=f"{args.bucket_prefix}-replica-",
            # Object Lock is switched on by BucketObjectLockConfiguration below, not here: the
            # bucket's own flag would force a new bucket when a stack turns it on later.
            tags=tags,
            opts=replica_keep,
        )

        lifecycle_rules = [
            {
                "id": "expire-noncurrent-versions",
                "status": "Enabled",
                "filter": EVERY_OBJECT,
                "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_version_days},
                "expiration": {"expired_object_delete_marker": True},
            },
            {
                "id": "abort-incomplete-multipart-uploads",
                "status": "Enabled",
                "filter": EVERY_OBJECT,
                "abort_incomplete_multipart_upload": {"days_after_initiation": args.abort_incomplete_upload_days},
            },
        ]
        # The primary's policy names the distribution, so RegistryBucketPolicies makes it later;
        # the replica's never names CloudFront: TLS only.
        replica_policy = self.replica_bucket.arn.apply(lambda arn: policy_document(tls_only_statement(arn)))
        versionings: list[aws.s3.BucketVersioning] = []
        for label, bucket, key, opt, policy in (
            ("primary", self.bucket, self.key, child, None),
            ("replica", self.replica_bucket, self.replica_key, replica, replica_policy),
        ):
            hardened = harden_bucket(
                f"{name}-{label}",
                bucket,
                encryption=sse_kms(key.arn),
                lifecycle_rules=lifecycle_rules,
                versioned=True,
                policy=policy,
                opts=opt,
            )
            if hardened.versioning is not None:
                versionings.append(hardened.versioning)

        if args.replica_object_lock is not None:
            aws.s3.BucketObjectLockConfiguration(
                f"{name}-replica-object-lock",
                bucket=self.replica_bucket.id,
                rule={
                    "default_retention": {
                        "mode": args.replica_object_lock.mode,
                        "days": args.replica_object_lock.days,
                    }
                },
                object_lock_enabled="Enabled",
                # Object Lock needs versioning on first.
                opts=pulumi.ResourceOptions.merge(replica, pulumi.ResourceOptions(depends_on=[versionings[1]])),
            )

        replication_role = aws.iam.Role(
            f"{name}-replication-role", assume_role_policy=assume_role_policy("s3.amazonaws.com"), tags=tags, opts=child
        )
        aws.iam.RolePolicy(
            f"{name}-replication-policy",
            role=replication_role.id,
            policy=pulumi.Output.all(
                self.bucket.arn, self.replica_bucket.arn, self.key.arn, self.replica_key.arn
            ).apply(lambda a: replication_policy(a[0], a[1], a[2], a[3], args.region)),
            opts=child,
        )
        destination: Any = {
            "bucket": self.replica_bucket.arn,
            "storage_class": "STANDARD",
            "encryption_configuration": {"replica_kms_key_id": self.replica_key.arn},
        }
        # Replication metrics (failed operations, latency) feed the stack's alarms (components/alarms.py).
        destination["metrics"] = {"status": "Enabled"}
        if args.replication_time_control:
            destination["replication_time"] = {"status": "Enabled", "time": {"minutes": 15}}
            destination["metrics"] = {"status": "Enabled", "event_threshold": {"minutes": 15}}
        aws.s3.BucketReplicationConfig(
            f"{name}-replication",
            bucket=self.bucket.id,
            role=replication_role.arn,
            rules=[
                {
                    "id": REPLICATION_RULE_ID,
                    "status": "Enabled",
                    "priority": 1,
                    "filter": {},
                    "delete_marker_replication": {"status": "Enabled"},
                    "source_selection_criteria": {"sse_kms_encrypted_objects": {"status": "Enabled"}},
                    "destination": destination,
                }
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=versionings),
        )

        self._backup(name, args, versionings)

        self.register_outputs(
            {
                "bucket": self.bucket.bucket,
                "bucketArn": self.bucket.arn,
                "replicaBucket": self.replica_bucket.bucket,
                "keyArn": self.key.arn,
            }
        )

    def _backup(self, name: str, args: RegistryStorageArgs, after: Sequence[pulumi.Resource]) -> None:
        tags = args.tags
        child = pulumi.ResourceOptions(parent=self)
        keep = pulumi.ResourceOptions(parent=self, protect=args.protect)
        replica_keep = pulumi.ResourceOptions(parent=self, provider=args.replica_provider, protect=args.protect)

        vault = aws.backup.Vault(f"{name}-vault", kms_key_arn=self.key.arn, tags=tags, opts=keep)
        replica_vault = aws.backup.Vault(
            f"{name}-replica-vault", kms_key_arn=self.replica_key.arn, tags=tags, opts=replica_keep
        )
        max_days = max(args.backup_retention_days, args.continuous_retention_days)
        for label, v, opt in (("", vault, child), ("replica-", replica_vault, replica_keep)):
            lock: dict[str, Any] = {"min_retention_days": 1, "max_retention_days": max_days}
            if args.vault_lock_mode == "compliance":
                # After this grace period the lock can no longer be changed or removed by anyone.
                lock["changeable_for_days"] = 3
            aws.backup.VaultLockConfiguration(
                f"{name}-{label}vault-lock",
                backup_vault_name=v.name,
                **lock,
                opts=pulumi.ResourceOptions.merge(opt, pulumi.ResourceOptions(protect=False)),
            )

        rules: list[Any] = [
            {
                "rule_name": "daily",
                "target_vault_name": vault.name,
                "schedule": args.backup_schedule,
                "start_window": 60,
                "completion_window": 480,
                "lifecycle": {"delete_after": args.backup_retention_days},
                "copy_actions": [
                    {
                        "destination_vault_arn": replica_vault.arn,
                        "lifecycle": {"delete_after": args.backup_retention_days},
                    }
                ],
            }
        ]
        if args.continuous_backup:
            rules.append(
                {
                    "rule_name": "continuous",
                    "target_vault_name": vault.name,
                    "schedule": args.backup_schedule,
                    "enable_continuous_backup": True,
                    "lifecycle": {"delete_after": args.continuous_retention_days},
                }
            )
        plan = aws.backup.Plan(f"{name}-backup-plan", rules=rules, tags=tags, opts=child)

        role = aws.iam.Role(
            f"{name}-backup-role", assume_role_policy=assume_role_policy("backup.amazonaws.com"), tags=tags, opts=child
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-backup-role-{arn.rsplit('For', 1)[-1].lower()}", role=role.name, policy_arn=arn, opts=child
            )
            for arn in BACKUP_MANAGED_POLICIES
        ]
        aws.backup.Selection(
            f"{name}-backup-selection",
            plan_id=plan.id,
            iam_role_arn=role.arn,
            resources=[self.bucket.arn],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, *attachments]),
        )
        self._restore_testing(name, args, vault, role, attachments)
        self.backup_role = role  # also what `fleet restore --from-backup` restores with
        self.vault = vault
        self.replica_vault = replica_vault
        self.backup_plan = plan

    def _restore_testing(
        self,
        name: str,
        args: RegistryStorageArgs,
        vault: aws.backup.Vault,
        role: aws.iam.Role,
        after: Sequence[pulumi.Resource],
    ) -> None:
        """A backup that was never restored is a hope: AWS Backup restores the latest recovery point on a
        schedule (restore testing) and reports whether the restore job succeeded."""
        child = pulumi.ResourceOptions(parent=self)
        # Names: letters, digits and underscores only (the API refuses hyphens).
        plan_name = "".join(c if c.isalnum() else "_" for c in f"{args.bucket_prefix}_restore_test")[:50]
        types = ["SNAPSHOT", "CONTINUOUS"] if args.continuous_backup else ["SNAPSHOT"]
        testing = aws.backup.RestoreTestingPlan(
            f"{name}-restore-testing-plan",
            name=plan_name,
            schedule_expression=RESTORE_TEST_SCHEDULE,
            recovery_point_selection={
                "algorithm": "LATEST_WITHIN_WINDOW",
                "include_vaults": [vault.arn],
                "recovery_point_types": types,
                "selection_window_days": RESTORE_TEST_WINDOW_DAYS,
            },
            tags=args.tags,
            opts=child,
        )
        aws.backup.RestoreTestingSelection(
            f"{name}-restore-testing-selection",
            name="registry_bucket",
            restore_testing_plan_name=testing.name,
            protected_resource_type="S3",
            protected_resource_arns=[self.bucket.arn],
            iam_role_arn=role.arn,
            # The restored bucket is encrypted with the stack's key, like the bucket it comes from.
            restore_metadata_overrides={"encryptionType": "SSE-KMS", "kmsKey": self.key.arn},
            validation_window_hours=RESTORE_TEST_VALIDATION_HOURS,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )


@dataclass
class RegistryBucketPoliciesArgs:
    bucket_id: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    key_id: pulumi.Input[str]
    account_id: pulumi.Input[str]
    # Set when the CDN is on: CloudFront may then read blobs and decrypt them, for this distribution only.
    distribution_arn: pulumi.Input[str] | None = None


class RegistryBucketPolicies(pulumi.ComponentResource):
    """The primary bucket's policy and key policy, made once the distribution (if any) exists."""

    def __init__(self, name: str, args: RegistryBucketPoliciesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryBucketPolicies", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        dist = args.distribution_arn if args.distribution_arn is not None else ""
        aws.s3.BucketPolicy(
            f"{name}-bucket-policy",
            bucket=args.bucket_id,
            policy=pulumi.Output.all(args.bucket_arn, dist).apply(lambda a: primary_bucket_policy(a[0], a[1] or None)),
            opts=child,
        )
        aws.kms.KeyPolicy(
            f"{name}-key-policy",
            key_id=args.key_id,
            policy=pulumi.Output.all(args.account_id, dist).apply(lambda a: key_policy(a[0], a[1] or None)),
            opts=child,
        )
        self.register_outputs({})
