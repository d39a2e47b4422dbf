"""`fleet restore --from-backup RECOVERY_POINT_ARN --into BUCKET`: an AWS Backup restore job of the registry
bucket's recovery point into a new bucket.

AWS Backup restores S3 only into a bucket it creates (or an existing one, non-destructively: it never
replaces an object), in the region of the recovery point; the new bucket is encrypted with the stack's key.
The stack keeps serving its own bucket: the command prints how to bring the restored data into it (a copy
inside the read-only window, which versioning keeps reversible). moto runs no backup jobs: this is proven
by its requests (checked against botocore's model of the API in tests/test_backup_restore.py), not by a
restore; the weekly restore test of the stack (components/storage.py) is the proof in AWS.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

# arn:aws:backup:REGION:ACCOUNT:recovery-point:ID (continuous S3 points: ID starts with "continuous:")
RECOVERY_POINT_ARN = re.compile(r"^arn:aws[a-z-]*:backup:[a-z0-9-]+:\d{12}:recovery-point:[A-Za-z0-9:_.-]+$")
BUCKET_NAME = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class BackupRestoreError(Exception):
    """Bad input for a restore job; nothing was started."""


def restore_metadata(into_bucket: str, kms_key_arn: str, token: str) -> dict[str, str]:
    """The S3 restore metadata of StartRestoreJob: a new bucket, SSE-KMS with the stack's key."""
    return {
        "DestinationBucketName": into_bucket,
        "NewBucket": "true",
        "Encrypted": "true",
        "EncryptionType": "SSE-KMS",
        "KMSKey": kms_key_arn,
        "CreationToken": token,
    }


def start_backup_restore(
    backup: Any,
    recovery_point_arn: str,
    into_bucket: str,
    role_arn: str,
    kms_key_arn: str,
    stack: str,
    registry_bucket: str,
    log: Callable[[str], None],
) -> str:
    """Start the restore job; its id. Raises BackupRestoreError on bad input, before any request."""
    if not RECOVERY_POINT_ARN.match(recovery_point_arn):
        raise BackupRestoreError(
            f"{recovery_point_arn!r} is not a recovery point ARN (arn:aws:backup:REGION:ACCOUNT:recovery-point:ID; "
            "list them with: aws backup list-recovery-points-by-resource --resource-arn BUCKET_ARN)"
        )
    if not BUCKET_NAME.match(into_bucket) or into_bucket == registry_bucket:
        raise BackupRestoreError(
            f"--into {into_bucket!r}: name a new bucket (3-63 lower-case letters, digits, dots and hyphens), "
            f"not the registry's own bucket: AWS Backup never replaces objects in place"
        )
    token = f"registry-fleet-{secrets.token_hex(8)}"
    job = backup.start_restore_job(
        RecoveryPointArn=recovery_point_arn,
        Metadata=restore_metadata(into_bucket, kms_key_arn, token),
        IamRoleArn=role_arn,
        IdempotencyToken=token,
        ResourceType="S3",
        CopySourceTagsToRestoredResource=True,
    )
    job_id = str(job["RestoreJobId"])
    log(f"restore job {job_id} started: {recovery_point_arn} -> new bucket {into_bucket}")
    log(f"  follow it: aws backup describe-restore-job --restore-job-id {job_id}")
    log("  when it is COMPLETED, to serve the restored data from the stack's bucket (reversible: versioning):")
    log(f"    python -m fleet maintenance {stack} read-only")
    log(f"    aws s3 sync s3://{into_bucket}/docker/ s3://{registry_bucket}/docker/ --delete")
    log(f"    python -m fleet maintenance {stack} read-write")
    log(f"  (to undo the copy: python -m fleet restore {stack} --to TIME-BEFORE-THE-SYNC)")
    return job_id
