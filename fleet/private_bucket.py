"""A private, hardened S3 bucket made through the S3 API (boto3), outside Pulumi.

The Pulumi state bucket (`fleet bootstrap`) and the lab's registry bucket (`lab/lab.py`) get the
guardrails the stack gives its own buckets (`components/private_bucket.py`) from `harden_bucket`:
all four Block Public Access flags, BucketOwnerEnforced (ACLs off), versioning, SSE-KMS with a
bucket key and the caller's lifecycle rules. The policy that denies every request without TLS
(`tls_only_policy`) is put by bootstrap only: the lab's moto applies a bucket policy's Deny
without reading its condition, so it would refuse every object request (the lab's S3 is TLS-only anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PUBLIC_ACCESS_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
TLS_ONLY_SID = "DenyInsecureTransport"


def partition(region: str) -> str:
    """The AWS partition a region belongs to (it starts every ARN)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def bucket_arn(bucket: str, region: str) -> str:
    return f"arn:{partition(region)}:s3:::{bucket}"


def tls_only_policy(bucket: str, region: str) -> dict[str, Any]:
    """A bucket policy that denies every request to the bucket and its objects made without TLS."""
    arn = bucket_arn(bucket, region)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": TLS_ONLY_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [arn, f"{arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def harden_bucket(s3: Any, bucket: str, key_arn: str, lifecycle_rules: Sequence[dict[str, Any]]) -> None:
    """Write the guardrails on `bucket`, which exists and is the caller's; `key_arn` encrypts its objects."""
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=dict.fromkeys(PUBLIC_ACCESS_FLAGS, True))
    s3.put_bucket_ownership_controls(
        Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    )
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": list(lifecycle_rules)})
