"""`python -m retention`: one retention run on a registry host, against its local registry.

What the maintenance window (components/maintenance.py) and `python -m fleet retention STACK` run through
SSM, by way of host/files/registry-maintenance.sh, as root. The policies come as a JSON file (the stack's
`storage.retention`, sent with the command); everything else is the host's own: the registry's config.yml
(`auth.token.service` and `issuer`, the bucket and region), the token signing key and certificate, the
internal CA. Exit 2: bad input (nothing was deleted); 1: the registry or S3 failed mid-way (a second run
finishes the job).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m retention", description=__doc__.splitlines()[0])
    p.add_argument("--policy-file", type=Path, required=True)
    p.add_argument("--registry-config", type=Path, required=True)
    p.add_argument("--registry-url", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--server-name")
    p.add_argument("--signing-key", type=Path, required=True)
    p.add_argument("--signing-cert", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from auth.tokens import SigningKeyError
    from retention.plan import PolicyError, parse_policies
    from retention.registry import minting_client, registry_settings
    from retention.run import run_retention
    from signing.registry import RegistryError

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        policies = parse_policies(json.loads(args.policy_file.read_text()))
        reg = registry_settings(args.registry_config)
        client = minting_client(
            args.registry_url, args.ca_file, args.server_name, args.signing_key, args.signing_cert,
            reg["service"], reg["issuer"],
        )  # fmt: skip
    except (OSError, ValueError, KeyError, PolicyError, SigningKeyError) as err:
        print(f"retention: {err}; nothing was deleted", file=sys.stderr)
        return 2
    s3 = boto3.client("s3", region_name=reg["region"], endpoint_url=reg["endpoint"])
    try:
        run_retention(client, s3, reg["bucket"], policies, datetime.now(UTC), args.dry_run, log)
    except (RegistryError, BotoCoreError, ClientError) as err:
        print(f"retention: {err}; run it again to finish", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
