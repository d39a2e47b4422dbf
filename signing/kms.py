"""Signing with the stack's KMS key: `Sign(MessageType=RAW, SigningAlgorithm=ECDSA_SHA_256)` over the exact
payload bytes (KMS hashes them; a payload is far below the 4096-byte RAW limit), and the public key as PEM.

DIGEST mode would be wrong twice: the payload would have to be hashed here, and moto's KMS hashes again
in that mode. Errors name what is missing: the `kms:Sign` permission on which key, a key that does not
exist, a key of the wrong spec or usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from cryptography.hazmat.primitives import serialization

KEY_SPEC = "ECC_NIST_P256"
KEY_USAGE = "SIGN_VERIFY"
ALGORITHM = "ECDSA_SHA_256"
MAX_RAW_MESSAGE = 4096


class SigningError(Exception):
    """The key cannot sign or be read; the message says what to fix."""


def _explain(err: Exception, action: str, key_id: str) -> SigningError:
    if isinstance(err, NoCredentialsError):
        return SigningError(f"no AWS credentials to call KMS {action} on {key_id} (AWS_PROFILE, the signer role...)")
    if not isinstance(err, ClientError):
        return SigningError(f"KMS {action} on {key_id} failed: {err}")
    code = str(err.response.get("Error", {}).get("Code", ""))
    if code == "AccessDeniedException":
        return SigningError(
            f"KMS refused {action} on {key_id}: these credentials lack the kms:{action} permission on that key "
            f"(only the stack's signer roles may sign: settings signing.signerRoles; readers may GetPublicKey)"
        )
    if code == "NotFoundException":
        return SigningError(f"KMS key {key_id} not found (wrong stack, region or account?)")
    if code in ("DisabledException", "KMSInvalidStateException"):
        return SigningError(f"KMS key {key_id} cannot be used now ({code}): enable it or cancel its deletion")
    if code in ("InvalidKeyUsageException", "UnsupportedOperationException", "ValidationException"):
        return SigningError(f"KMS key {key_id} cannot {action} with {ALGORITHM}: it must be {KEY_SPEC} {KEY_USAGE}")
    return SigningError(f"KMS {action} on {key_id} failed: {err}")


@dataclass
class KmsSigner:
    """`kms` is a boto3 KMS client (endpoint, region and credentials are the caller's)."""

    kms: Any
    key_id: str  # key id, ARN or alias (alias/registry-fleet-<stack>-signing)

    def sign(self, message: bytes) -> bytes:
        """The DER ECDSA signature of `message`."""
        if len(message) > MAX_RAW_MESSAGE:
            raise SigningError(f"a {len(message)}-byte payload is over KMS's {MAX_RAW_MESSAGE}-byte RAW limit")
        try:
            answer = self.kms.sign(KeyId=self.key_id, Message=message, MessageType="RAW", SigningAlgorithm=ALGORITHM)
        except (ClientError, BotoCoreError) as err:
            raise _explain(err, "Sign", self.key_id) from None
        return bytes(answer["Signature"])

    def public_key_pem(self) -> str:
        """The key's public half as PEM (SubjectPublicKeyInfo); refuses a key of another spec or usage."""
        try:
            answer = self.kms.get_public_key(KeyId=self.key_id)
        except (ClientError, BotoCoreError) as err:
            raise _explain(err, "GetPublicKey", self.key_id) from None
        spec = answer.get("KeySpec") or answer.get("CustomerMasterKeySpec")
        if spec != KEY_SPEC or answer.get("KeyUsage") != KEY_USAGE:
            raise SigningError(
                f"KMS key {self.key_id} is {spec} {answer.get('KeyUsage')}; "
                f"the signing key must be {KEY_SPEC} {KEY_USAGE}"
            )
        key = serialization.load_der_public_key(bytes(answer["PublicKey"]))
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem.decode()
