"""A Secrets Manager secret and its value: the one way the components store a generated or given secret.

The secret is encrypted with the stack's KMS key and its value always goes in as a Pulumi secret, so
it never appears in plain text in the state or a preview. Hosts read such secrets at boot by ARN.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws


def stored_secret(
    resource_name: str,
    *,
    name_prefix: str,
    description: str,
    value: pulumi.Input[str],
    kms_key_arn: pulumi.Input[str],
    tags: dict[str, str],
    opts: pulumi.ResourceOptions,
) -> tuple[aws.secretsmanager.Secret, aws.secretsmanager.SecretVersion]:
    """`resource_name` (the secret) and `resource_name-value` (its version holding `value`)."""
    secret = aws.secretsmanager.Secret(
        resource_name,
        name_prefix=name_prefix,
        description=description,
        kms_key_id=kms_key_arn,
        tags=tags,
        opts=opts,
    )
    version = aws.secretsmanager.SecretVersion(
        f"{resource_name}-value",
        secret_id=secret.id,
        secret_string=pulumi.Output.secret(value),
        opts=opts,
    )
    return secret, version
