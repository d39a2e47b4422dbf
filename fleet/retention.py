"""Retention per team: `python -m fleet retention STACK [--dry-run] [--lab]` (issue 15).

Applies the stack's `storage.retention` policies through the registry API (retention/: the plan, the
push times read from the bucket, DELETE by digest). Where it runs is where GC runs:
  - on AWS, on the first host of the stack's Auto Scaling group through SSM Run Command (the host script's
    `retention` action, fleet/maintenance.py), against that host's own registry, with the token signing key
    the host already holds; the weekly maintenance window runs the same action before GC
    (components/maintenance.py);
  - with `--lab`, in this process against the first registry instance of the stack's running lab, with the
    lab's token signing key: the same code, the same inputs, read from the same kind of files.
Retention runs while the fleet is writable (a read-only registry answers deletes 405); what it deletes is
freed by the next GC (`python -m fleet gc STACK`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.retention import retention_policy_json
from infra.settings import Settings

if TYPE_CHECKING:
    from fleet.maintenance import Fleet
    from lab.lab import LabState


class RetentionError(Exception):
    """Retention cannot run or stopped; the message says what was changed (nothing, or how far it got)."""


def retention_command(stack: str, settings: Settings, fleet: Fleet, dry_run: bool, log: Callable[[str], None]) -> None:
    policies = retention_policy_json(settings)
    if policies is None:
        log(f"stack {stack} sets no storage.retention: retention keeps everything; nothing was deleted")
        return
    log(f"retention{' (dry run)' if dry_run else ''}: {fleet.description}, policies {policies}")
    fleet.retention(policies, dry_run, log)


def lab_retention(
    state_dir: Path,
    state: LabState,
    instance: str,
    policies_json: str,
    dry_run: bool,
    log: Callable[[str], None],
    now: datetime | None = None,
) -> None:
    """Retention against one instance of a running lab, as a host runs it against its own registry (`now`:
    the clock, for tests of untaggedAfterDays)."""
    import json

    from auth.tokens import SigningKeyError
    from lab.lab import s3_client
    from retention.plan import PolicyError, parse_policies
    from retention.registry import minting_client, registry_settings
    from retention.run import run_retention
    from signing.registry import RegistryError

    if state.auth_mode != "token":
        raise RetentionError("retention needs a token-mode lab (it mints tokens with the token signing key)")
    try:
        policies = parse_policies(json.loads(policies_json))
        reg = registry_settings(state_dir / f"{instance}.yml")
        port = state.services[instance]["ports"]["https"]
        client = minting_client(
            f"https://127.0.0.1:{port}", state.ca_file, None, Path(state.token["signing_key"]),
            Path(state.token["signing_cert"]), reg["service"], reg["issuer"],
        )  # fmt: skip
    except (OSError, ValueError, KeyError, PolicyError, SigningKeyError) as err:
        raise RetentionError(f"{err}; nothing was deleted") from None
    s3: Any = s3_client(state.s3_endpoint, state.ca_file, reg["region"])
    try:
        run_retention(client, s3, state.bucket, policies, now or datetime.now(UTC), dry_run, log)
    except RegistryError as err:
        raise RetentionError(f"{instance}: {err}; run it again to finish") from None
