"""The gate's pull policies from a stack's settings: what host/gate_config.py renders for every host, what
the lab's gates run with, and what `python -m fleet gate` checks an image against (one source)."""

from __future__ import annotations

from host.gate_config import GatePolicy
from infra.settings import Settings, TokenAccess, protected_namespaces


def gate_policies(settings: Settings) -> dict[str, GatePolicy]:
    """Each protected namespace's policy (`access.pullPolicies`, `unscanned` resolved), by namespace."""
    access = settings.access
    if not isinstance(access, TokenAccess):
        return {}
    out: dict[str, GatePolicy] = {}
    for ns in protected_namespaces(settings):
        policy = access.pull_policies[ns]
        out[ns] = GatePolicy(
            require_signed=policy.require_signed,
            block_severity=policy.block_severity,
            unscanned=policy.effective_unscanned,
            allow_vulnerabilities=tuple((v.id, v.expires) for v in policy.allow_vulnerabilities),
        )
    return out
