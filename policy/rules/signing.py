"""Practice 6, signed images: the stack holds an asymmetric KMS key to sign images with."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from policy.graph import KMS_KEY, Res, is_unknown, of_type, prop
from policy.registry import STACK, Finding, rule


@rule(
    "signing-key",
    6,
    "The stack has an asymmetric KMS key for signing images (keyUsage SIGN_VERIFY, an ECC_ or RSA_ spec).",
)
def find_signing_key(resources: Sequence[Res]) -> Iterator[Finding]:
    seen = []
    for key in of_type(resources, KMS_KEY):
        usage = prop(key, "keyUsage")
        spec = prop(key, "customerMasterKeySpec") or prop(key, "keySpec")
        if is_unknown(usage) or is_unknown(spec):
            return
        if usage == "SIGN_VERIFY" and str(spec).startswith(("ECC_", "RSA_")):
            return
        usage, spec = usage or "ENCRYPT_DECRYPT (default)", spec or "SYMMETRIC_DEFAULT (default)"
        seen.append(f"{key.name} (keyUsage {usage}, customerMasterKeySpec {spec})")
    yield (
        STACK,
        f"no {KMS_KEY} with keyUsage 'SIGN_VERIFY' and an ECC_* or RSA_* customerMasterKeySpec (the cosign key); "
        f"keys: {sorted(seen) or 'none'}",
    )
