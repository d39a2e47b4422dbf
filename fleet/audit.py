"""`python -m fleet audit`: the ten practices as a scorecard, from the real program and the policy rules.

The audit records a stack's program under the recording engine (what `pulumi preview` would
register), runs every rule of the policy pack (policy/rules/, the same functions the
CrossGuard pack runs, over the same `policy.graph.Res` model), applies the stack's waivers, and
scores each practice in the order of docs/design.md: `fail` if a mandatory rule has an unwaived
violation, `waived` if every violation is waived, else `pass`. An unknown or expired waiver is an
error and fails the audit, and so is an expired entry of a namespace's vulnerability allow-list
(`access.pullPolicies.*.allowVulnerabilities`): it no longer excuses anything, so it must go.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fleet.engine import record
from infra.settings import STACKS_DIR, Settings, TokenAccess, load_stack_settings
from policy.graph import Res
from policy.registry import PRACTICES, Violation
from policy.rules import RULES
from policy.waivers import apply_waivers, waivers_in

Status = Literal["pass", "fail", "waived"]


@dataclass
class Practice:
    id: int
    title: str
    status: Status
    evidence: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Scorecard:
    stack: str
    practices: list[Practice]
    waiver_errors: list[str]

    @property
    def passed(self) -> bool:
        return not self.waiver_errors and all(p.status != "fail" for p in self.practices)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "stack": self.stack,
            "practices": [
                {"id": p.id, "title": p.title, "status": p.status, "evidence": p.evidence} for p in self.practices
            ],
        }
        if self.waiver_errors:
            doc["waiver_errors"] = self.waiver_errors
        return doc


def score(stack: str, resources: Sequence[Res], today: datetime.date) -> Scorecard:
    violations: list[Violation] = []
    for rule in RULES:
        violations += rule.check(resources)
    unwaived, waived, errors = apply_waivers(violations, waivers_in(resources), today)
    practices = []
    for number, title in PRACTICES:
        rules = [r for r in RULES if r.practice == number]
        evidence: list[dict[str, str]] = []
        status: Status = "pass"
        for rule in rules:
            failing = [v for v in unwaived if v.rule == rule.id]
            excused = [v for v in waived if v.rule == rule.id]
            for v in failing:
                evidence.append({"rule": rule.id, "result": "fail", "resource": v.resource, "detail": v.message})
            for v in excused:
                evidence.append({"rule": rule.id, "result": "waived", "resource": v.resource, "detail": v.message})
            if not failing and not excused:
                evidence.append({"rule": rule.id, "result": "pass", "resource": "", "detail": rule.description})
            if failing and rule.mandatory:
                status = "fail"
            elif excused and status == "pass":
                status = "waived"
        practices.append(Practice(number, title, status, evidence))
    return Scorecard(stack, practices, errors)


def today() -> datetime.date:
    """The audit's clock (tests fix it)."""
    return datetime.date.today()


def expired_allow_entries(settings: Settings, on: datetime.date) -> list[str]:
    """An error per allow-list entry whose last day is before `on` (it counts through its expiry day, UTC)."""
    access = settings.access
    if not isinstance(access, TokenAccess):
        return []
    return [
        f"access.pullPolicies.{ns}.allowVulnerabilities[{i}] ({entry.id}) expired on {entry.expires.isoformat()}: "
        "it no longer excuses the finding; remove it (or fix the image)"
        for ns, policy in sorted(access.pull_policies.items())
        for i, entry in enumerate(policy.allow_vulnerabilities)
        if on > entry.expires
    ]


def audit_stack(stack: str, on: datetime.date | None = None, stacks_dir: Path = STACKS_DIR) -> Scorecard:
    settings = load_stack_settings(stack, stacks_dir=stacks_dir)
    day = on or today()
    card = score(stack, record(settings).in_urn_order(), day)
    card.waiver_errors += expired_allow_entries(settings, day)
    return card


# --- presentation ---------------------------------------------------------------------------

_MARK = {"pass": "PASS", "fail": "FAIL", "waived": "WAIVED"}


def render_text(card: Scorecard) -> str:
    lines = [f"audit of stack {card.stack}: {'passed' if card.passed else 'FAILED'}"]
    for p in card.practices:
        lines.append(f"  {p.id:2d}. {p.title:32} {_MARK[p.status]}")
        for e in p.evidence:
            if e["result"] != "pass":
                lines.append(f"        {e['result']}: {e['rule']} on {e['resource']}: {e['detail']}")
    for error in card.waiver_errors:
        lines.append(f"  waiver error: {error}")
    return "\n".join(lines)


def render_markdown(card: Scorecard) -> str:
    icon = {"pass": "✅ pass", "fail": "❌ fail", "waived": "⚠️ waived"}
    lines = [
        f"### registry-fleet audit: `{card.stack}` {'passed' if card.passed else 'failed'}",
        "",
        "| # | practice | status | evidence |",
        "|---|---|---|---|",
    ]
    for p in card.practices:
        shown = [e for e in p.evidence if e["result"] != "pass"] or p.evidence
        cells = "<br>".join(
            f"`{e['rule']}`" + (f" on `{e['resource']}`: {e['detail']}" if e["resource"] else f": {e['detail']}")
            for e in shown
        )
        lines.append(f"| {p.id} | {p.title} | {icon[p.status]} | {cells.replace('|', '/')} |")
    if card.waiver_errors:
        lines += ["", "**Waiver errors**", *[f"- {e}" for e in card.waiver_errors]]
    return "\n".join(lines)


def render(cards: Sequence[Scorecard], fmt: str) -> str:
    if fmt == "json":
        docs = [c.to_json() for c in cards]
        return json.dumps(docs[0] if len(docs) == 1 else docs, indent=2)
    renderer = render_markdown if fmt == "markdown" else render_text
    return "\n\n".join(renderer(c) for c in cards)
