"""The guardrails every S3 bucket of the fleet carries (practice 7, private registry).

`harden_bucket` adds them to a bucket as children of the component that owns it: all four
Block Public Access flags, BucketOwnerEnforced (ACLs off), default server-side encryption,
a lifecycle configuration, and, when asked, versioning (switched on before the lifecycle rules
that count noncurrent versions) and a bucket policy. A bucket policy starts with
`tls_only_statement`: no request over plain HTTP. The children are named
`<prefix>-versioning`, `-encryption`, `-public-access`, `-ownership`, `-lifecycle` and `-policy`.

The boto3 twin, for buckets made outside Pulumi (the state bucket, the lab), is `fleet/private_bucket.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.errors import ComponentInputError

# A lifecycle rule's filter for every object of the bucket: an empty prefix. An empty filter (`{}`) means the
# same to S3, but the provider warns that it will become an error (exactly one of prefix, tag, size or `and`).
EVERY_OBJECT: dict[str, str] = {"prefix": ""}

# ALB access-log delivery writes with SSE-S3 only, not SSE-KMS.
SSE_S3: list[Any] = [{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}]


def sse_kms(key_arn: pulumi.Input[str]) -> list[Any]:
    """SSE-KMS with a customer key; the bucket key saves a KMS call for every object."""
    return [
        {
            "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms", "kms_master_key_id": key_arn},
            "bucket_key_enabled": True,
        }
    ]


def tls_only_statement(bucket_arn: str) -> dict[str, Any]:
    """Deny every request to the bucket and its objects that does not use TLS."""
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


@dataclass(frozen=True)
class HardenedBucket:
    # None unless versioning was asked for.
    versioning: aws.s3.BucketVersioning | None
    # None when the bucket's policy is made elsewhere (or later).
    policy: aws.s3.BucketPolicy | None


def harden_bucket(
    prefix: str,
    bucket: aws.s3.Bucket,
    *,
    encryption: Sequence[Any],
    lifecycle_rules: Sequence[Any],
    opts: pulumi.ResourceOptions,
    versioned: bool = False,
    policy: pulumi.Input[str] | None = None,
) -> HardenedBucket:
    """The guardrails of `bucket`, named `<prefix>-<setting>`, each with `opts` (parent, provider)."""
    for i, rule in enumerate(lifecycle_rules):
        if not isinstance(rule, Mapping) or not rule.get("filter"):
            rule_id = rule.get("id") if isinstance(rule, Mapping) else None
            raise ComponentInputError(
                f"harden_bucket({prefix!r}): lifecycle rule {rule_id or i} has no filter; give it one, e.g. "
                "EVERY_OBJECT ({'prefix': ''}) for the whole bucket (an empty filter draws a provider warning that "
                "will become an error)"
            )
    versioning = None
    lifecycle_opts = opts
    if versioned:
        versioning = aws.s3.BucketVersioning(
            f"{prefix}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=opts,
        )
        lifecycle_opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[versioning]))
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{prefix}-encryption",
        bucket=bucket.id,
        rules=list(encryption),
        opts=opts,
    )
    aws.s3.BucketPublicAccessBlock(
        f"{prefix}-public-access",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=opts,
    )
    aws.s3.BucketOwnershipControls(
        f"{prefix}-ownership",
        bucket=bucket.id,
        rule={"object_ownership": "BucketOwnerEnforced"},
        opts=opts,
    )
    aws.s3.BucketLifecycleConfiguration(
        f"{prefix}-lifecycle",
        bucket=bucket.id,
        rules=list(lifecycle_rules),
        opts=lifecycle_opts,
    )
    bucket_policy = None
    if policy is not None:
        bucket_policy = aws.s3.BucketPolicy(f"{prefix}-policy", bucket=bucket.id, policy=policy, opts=opts)
    return HardenedBucket(versioning=versioning, policy=bucket_policy)
