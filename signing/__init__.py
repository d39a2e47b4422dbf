"""Image signatures in cosign's format: the payload and `.sig` manifest (cosign.py), the strict verifier
(verify.py, `cryptography` only: the pull-time gate imports it on the hosts), the KMS signer (kms.py)
and a small registry client that authenticates like any registry client (registry.py)."""
