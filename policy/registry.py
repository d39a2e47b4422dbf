"""What a compliance rule is, and `@rule`, the declaration that registers one.

A rule is a function over a whole stack (a sequence of `policy.graph.Res`) that yields findings:
(the offending resource's logical name, a message naming the property checked and the bad value).
`@rule(id, practice, description)` goes right above the function; the practice modules in
`policy/rules/` hold the rules, and `policy.rules.RULES` lists every declared rule in practice order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from policy.graph import Res

PRACTICES: tuple[tuple[int, str], ...] = (
    (1, "dedicated registry hosts"),
    (2, "TLS everywhere"),
    (3, "role-based access"),
    (4, "uploads only by trusted users"),
    (5, "vulnerability scans"),
    (6, "signed images"),
    (7, "private registry"),
    (8, "replicated across servers"),
    (9, "CDN for blobs"),
    (10, "regular backups"),
)

STACK = "(stack)"  # Violation.resource when no single resource is at fault

Finding = tuple[str, str]  # (resource name, message)
Find = Callable[[Sequence[Res]], Iterable[Finding]]


@dataclass(frozen=True)
class Violation:
    rule: str  # rule id
    resource: str  # logical name of the offending resource ("(stack)" if none)
    message: str  # names the property checked and the bad value


@dataclass(frozen=True)
class Rule:
    id: str  # kebab-case, stable (waivers name it)
    practice: int  # 1..10
    description: str  # one sentence: the rule
    check: Callable[[Sequence[Res]], list[Violation]]  # every rule sees the whole stack
    mandatory: bool = True


_declared: list[Rule] = []


def rule(rule_id: str, practice: int, description: str) -> Callable[[Find], Find]:
    """Declare the function below as rule `rule_id` of `practice`; the function itself is unchanged."""

    def declare(find: Find) -> Find:
        if any(r.id == rule_id for r in _declared):
            raise ValueError(f"rule {rule_id!r} is declared twice")

        def check(resources: Sequence[Res]) -> list[Violation]:
            return [Violation(rule_id, name, message) for name, message in find(resources)]

        check.__name__ = check.__qualname__ = f"check_{rule_id.replace('-', '_')}"
        _declared.append(Rule(rule_id, practice, description, check))
        return find

    return declare


def declared_rules() -> tuple[Rule, ...]:
    """Every rule declared so far, in practice order (in declaration order within a practice)."""
    return tuple(sorted(_declared, key=lambda r: r.practice))
