"""Policy waivers: a stack excuses a rule's violations for a reason, until a date.

A stack registers its waivers as the `waivers` of a `registry-fleet:index:PolicyWaivers` resource;
both callers of the rules (the CrossGuard pack and `python -m fleet audit`) apply them here.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from policy.graph import WAIVERS, Res, as_list, is_unknown, of_type, prop, unwrap
from policy.registry import Violation
from policy.rules import RULES


def waivers_in(resources: Sequence[Res]) -> list[dict[str, Any]]:
    """The waivers a stack registers: the `waivers` of its `registry-fleet:index:PolicyWaivers` resources."""
    found: list[dict[str, Any]] = []
    for res in of_type(resources, WAIVERS):
        raw = prop(res, "waivers")
        if raw is None:
            raw = unwrap(res.outputs.get("waivers"))
        if is_unknown(raw):
            continue
        found += [dict(w) for w in as_list(raw) if isinstance(w, Mapping)]
    return found


def apply_waivers(
    violations: Sequence[Violation], waivers: Sequence[Mapping[str, Any]], today: datetime.date
) -> tuple[list[Violation], list[Violation], list[str]]:
    """Split `violations` into (unwaived, waived) by the waivers valid `today`, plus the waivers' errors.

    A waiver is an error when it names an unknown rule, has no reason, has no valid `expires` date
    (YYYY-MM-DD) or has expired (`today` is after `expires`); an erroneous waiver waives nothing.
    """
    known = {r.id for r in RULES}
    active: set[str] = set()
    errors: list[str] = []
    for waiver in waivers:
        rule_id, reason, expires = waiver.get("rule"), waiver.get("reason"), waiver.get("expires")
        if rule_id not in known:
            errors.append(f"waiver for unknown rule {rule_id!r}; known rules: {', '.join(sorted(known))}")
            continue
        try:
            until = expires if isinstance(expires, datetime.date) else datetime.date.fromisoformat(str(expires))
        except ValueError:
            errors.append(f"waiver for {rule_id} has expires {expires!r}, expected a date YYYY-MM-DD")
            continue
        if not str(reason or "").strip():
            errors.append(f"waiver for {rule_id} gives no reason")
        elif today > until:
            errors.append(f"waiver for {rule_id} expired on {until.isoformat()}")
        else:
            active.add(str(rule_id))
    unwaived = [v for v in violations if v.rule not in active]
    waived = [v for v in violations if v.rule in active]
    return unwaived, waived, errors
