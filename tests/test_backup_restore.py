"""`fleet restore --from-backup`: the StartRestoreJob request, checked against botocore's model of the AWS
Backup API (moto runs no backup jobs, so no restore happens here: docs/backups.md)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from fleet.backup_restore import BackupRestoreError, start_backup_restore
from tests.helpers.aws_fake import FakeClient

POINT = "arn:aws:backup:eu-west-1:123456789012:recovery-point:continuous:registry-dev-blobs-1a2b3c"
ROLE = "arn:aws:iam::123456789012:role/storage-backup-role"
KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def backup() -> FakeClient:
    return FakeClient("backup", {"start_restore_job": lambda p: {"RestoreJobId": "job-1"}})


def start(client: Any, point: str = POINT, into: str = "registry-dev-restored") -> list[str]:
    lines: list[str] = []
    start_backup_restore(client, point, into, ROLE, KEY, "dev", "registry-dev-blobs", lines.append)
    return lines


def test_the_restore_job_goes_into_a_new_bucket_under_the_stacks_key() -> None:
    client = backup()
    lines = start(client)
    ((name, params),) = client.calls
    assert name == "start_restore_job"
    assert params["RecoveryPointArn"] == POINT and params["IamRoleArn"] == ROLE and params["ResourceType"] == "S3"
    metadata = params["Metadata"]
    assert metadata["DestinationBucketName"] == "registry-dev-restored"
    assert metadata["NewBucket"] == "true"
    assert (metadata["EncryptionType"], metadata["KMSKey"]) == ("SSE-KMS", KEY)
    assert metadata["CreationToken"] == params["IdempotencyToken"]
    assert all(isinstance(v, str) for v in metadata.values()), "restore metadata values are strings"
    assert "aws backup describe-restore-job --restore-job-id job-1" in "\n".join(lines)
    assert any("aws s3 sync s3://registry-dev-restored/docker/ s3://registry-dev-blobs/docker/" in x for x in lines)


@pytest.mark.parametrize(
    ("point", "into", "message"),
    [
        ("arn:aws:s3:::registry-dev-blobs", "registry-dev-restored", "is not a recovery point ARN"),
        (POINT, "Registry_Restored", "name a new bucket"),
        (POINT, "registry-dev-blobs", "not the registry's own bucket"),
    ],
)
def test_bad_input_starts_nothing(point: str, into: str, message: str) -> None:
    client = backup()
    with pytest.raises(BackupRestoreError, match=message):
        start(client, point, into)
    assert client.calls == []


def test_a_request_aws_would_refuse_fails_the_fake() -> None:
    with pytest.raises(AssertionError, match="Metadata"):
        backup().start_restore_job(RecoveryPointArn=POINT, Metadata={"NewBucket": True}, IamRoleArn=ROLE)


def test_cli_from_backup_needs_into_and_has_no_lab() -> None:
    from fleet.cli import main

    err = io.StringIO()
    assert main(["restore", "dev", "--from-backup", POINT], io.StringIO(), err) == 2
    assert "--from-backup needs --into BUCKET" in err.getvalue()
