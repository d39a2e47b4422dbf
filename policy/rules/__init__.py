"""The compliance rules, one module per practice of docs/design.md, and `RULES`, every one of them in practice order.

| practice | module |
|---|---|
| 1 dedicated registry hosts | `hosts.py` |
| 2 TLS everywhere | `tls.py` |
| 3 role-based access | `access.py` |
| 4 uploads only by trusted users | `uploads.py` |
| 5 vulnerability scans | `scanning.py` |
| 6 signed images | `signing.py` |
| 7 private registry | `private.py` |
| 8 replicated across servers | `replication.py` |
| 9 CDN for blobs | `cdn.py` |
| 10 regular backups | `backups.py` |

Each rule is a plain function over the whole stack, declared right above it with
`@rule(id, practice, description)` (`policy/registry.py`). The rules read the graph through
`policy/graph.py` and import neither pulumi nor pulumi_policy: the CrossGuard pack
(`policy/crossguard.py`) and `python -m fleet audit` run the same functions.

When a value is not known yet (a CrossGuard preview of new resources sends an "unknown" sentinel) a
rule degrades: it skips that check or accepts an unknown link, and never reports a violation it
cannot prove.
"""

from __future__ import annotations

from collections.abc import Sequence

from policy.graph import Res
from policy.registry import Rule, Violation, declared_rules

# Importing a practice module declares its rules.
from policy.rules import access, backups, cdn, hosts, private, replication, scanning, signing, tls, uploads

PRACTICE_MODULES = (hosts, tls, access, uploads, scanning, signing, private, replication, cdn, backups)
RULES: tuple[Rule, ...] = declared_rules()


def rule_by_id(rule_id: str) -> Rule:
    found = next((r for r in RULES if r.id == rule_id), None)
    if found is None:
        raise KeyError(f"unknown rule {rule_id!r}; known rules: {', '.join(r.id for r in RULES)}")
    return found


def evaluate(resources: Sequence[Res]) -> list[Violation]:
    """Every rule's violations, in the order of RULES."""
    return [v for r in RULES for v in r.check(resources)]
