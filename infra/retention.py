"""The stack's retention policies (`storage.retention`) as retention/ takes them: the one conversion the
maintenance window's task (components/maintenance.py, through infra/program.py) and `python -m fleet
retention` share, so the host runs what the settings say."""

from __future__ import annotations

import json

from infra.settings import Settings
from retention.plan import Policy


def retention_policies(settings: Settings) -> dict[str, Policy]:
    items = sorted(settings.storage.retention.items())
    return {ns: Policy(p.keep_last, p.untagged_after_days, p.protect) for ns, p in items}


def retention_policy_json(settings: Settings) -> str | None:
    """The policies' JSON (compact, sorted: the same settings give the same task); None without any."""
    policies = retention_policies(settings)
    if not policies:
        return None
    return json.dumps({ns: p.to_json() for ns, p in policies.items()}, separators=(",", ":"), sort_keys=True)
