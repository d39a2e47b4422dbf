"""ImageSigningKey: the stack's image signing key in AWS KMS (practice 6, signed images).

Creates an asymmetric KMS key (`ECC_NIST_P256`, `SIGN_VERIFY`: ECDSA P-256 with SHA-256, what cosign
signs with), an alias `alias/registry-fleet-<stack>-signing`, and reads its public key (PEM,
SubjectPublicKeyInfo), which the gate on every host and every consumer's trust policy verify with.

The key policy lets only the signer roles (CI, through GitHub OIDC) and the break-glass role call
`kms:Sign`:
- the account root keeps key administration only, each action named (no wildcard): describing, tagging,
  aliases, enabling, deletion, the policy itself, listing and revoking grants, and reading the public key.
  It is the statement that lets the account's IAM policies grant these actions (the deploy role manages
  the key and reads its public key through it); `kms:Sign` is not among them, so no IAM policy in the
  account can grant it, and neither is `kms:CreateGrant` (a grant could hand `kms:Sign` to anyone);
- the signer roles and the break-glass role may `kms:Sign`, `kms:GetPublicKey` and `kms:DescribeKey`;
- a deny refuses `kms:Sign` to every principal but those roles, whatever a later statement or grant says.
Readers of the public key are the account's principals whose IAM policy allows `kms:GetPublicKey` (the
fleet's instance role gets it in its own policy, components/fleet.py); the key is public anyway: the stack
exports it (`signingPublicKeyPem`) and `python -m fleet trust-policy` hands it to consumers.

Whoever may change the key policy (`kms:PutKeyPolicy`, the deploy role) could still add a signer: that is a
reviewed change to this code, visible in CloudTrail, not a silent grant.

Asymmetric KMS keys do not support automatic rotation (AWS refuses `EnableKeyRotation` for them): a new
signing key is a new key, and consumers trust the old and new public keys side by side until every image
is re-signed (docs/signing.md). Deleting the key makes every signature unverifiable: the key is
protected outside dev and, if deleted anyway, waits the longest window AWS allows (30 days).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.errors import ComponentInputError
from components.iam import policy_document

KEY_SPEC = "ECC_NIST_P256"
KEY_USAGE = "SIGN_VERIFY"
DELETION_WINDOW_DAYS = 30  # the longest AWS allows
# What the account root (and so the account's IAM policies) may do with the key: administer it and read
# its public half. Never kms:Sign, never kms:CreateGrant (a grant could give kms:Sign away).
ADMIN_ACTIONS = (
    "kms:DescribeKey",
    "kms:GetPublicKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListResourceTags",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:UpdateKeyDescription",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:ListGrants",
    "kms:RevokeGrant",
)
SIGNER_ACTIONS = ("kms:Sign", "kms:GetPublicKey", "kms:DescribeKey")


def signing_alias(stack: str) -> str:
    return f"alias/registry-fleet-{stack}-signing"


def _partition(role_arn: str) -> str:
    return role_arn.split(":", 2)[1]


def signing_key_policy(account_id: str, signer_roles: Sequence[str]) -> str:
    """The key policy: the root administers, the roles sign, everyone else is refused kms:Sign."""
    if not signer_roles:
        raise ComponentInputError("ImageSigningKey: no signer role: nobody could sign with the key")
    roles = list(signer_roles)
    root = f"arn:{_partition(roles[0])}:iam::{account_id}:root"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AccountAdministersWithoutSigning",
            "Effect": "Allow",
            "Principal": {"AWS": root},
            "Action": list(ADMIN_ACTIONS),
            "Resource": "*",
        },
        {
            "Sid": "SignerRolesSign",
            "Effect": "Allow",
            "Principal": {"AWS": roles},
            "Action": list(SIGNER_ACTIONS),
            "Resource": "*",
        },
        {
            "Sid": "NobodyElseSigns",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "kms:Sign",
            "Resource": "*",
            # ArnNotEquals with several values: true when the caller's role is none of them.
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": roles}},
        },
    ]
    return policy_document(*statements)


@dataclass
class ImageSigningKeyArgs:
    stack: str
    # Every role that may sign: settings.signing.roles (signer roles, then the break-glass role).
    signer_roles: Sequence[str]
    account_id: pulumi.Input[str]
    tags: dict[str, str]
    protect: bool = True


class ImageSigningKey(pulumi.ComponentResource):
    key_arn: pulumi.Output[str]
    alias_name: str
    # The public key, PEM (SubjectPublicKeyInfo): the gate's and every consumer's trust.
    public_key_pem: pulumi.Output[str]

    def __init__(self, name: str, args: ImageSigningKeyArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:ImageSigningKey", name, None, opts)
        if not args.signer_roles:
            raise ComponentInputError("ImageSigningKey: signer_roles is empty (settings: signing.signerRoles)")
        roles = list(args.signer_roles)
        key = aws.kms.Key(
            f"{name}-key",
            description=f"registry-fleet {args.stack}: image signing key (cosign signatures, practice 6)",
            customer_master_key_spec=KEY_SPEC,
            key_usage=KEY_USAGE,
            # No enable_key_rotation: AWS rotates symmetric keys only (see the module docstring).
            deletion_window_in_days=DELETION_WINDOW_DAYS,
            policy=pulumi.Output.from_input(args.account_id).apply(lambda account: signing_key_policy(account, roles)),
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.alias_name = signing_alias(args.stack)
        aws.kms.Alias(
            f"{name}-alias",
            name=self.alias_name,
            target_key_id=key.key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        public = aws.kms.get_public_key_output(key_id=key.arn, opts=pulumi.InvokeOutputOptions(parent=self))
        self.key_arn = key.arn
        self.public_key_pem = public.public_key_pem
        self.register_outputs({"keyArn": key.arn, "aliasName": self.alias_name, "publicKeyPem": self.public_key_pem})
