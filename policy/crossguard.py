"""The rules of `policy.rules` as CrossGuard stack policies (pulumi-policy 1.21).

`policies()` returns one mandatory `StackValidationPolicy` per rule, plus `waivers-valid`.
`policy/__main__.py` hands them to `PolicyPack(...)`; the tests call each policy's `validate`
directly with hand-built `StackValidationArgs`.

What CrossGuard hands a stack policy, and how `to_res` maps it onto the graph model the rules read
(`policy.graph.Res`, the same model the recording engine records):
- `props` are the resource's final outputs, behind a proxy that raises on values not known
  during preview: `to_res` copies them into plain dicts and lists, keeping the unknown sentinels
  (the rules skip what is not known).
- secrets arrive unwrapped: `to_res` wraps again the properties the resource declares as
  secret outputs (`opts.additional_secret_outputs`, e.g. a SecretVersion's `secretString`),
  so `no-plain-secrets` sees them as the recording engine shows them.
- `parent` and `provider` are objects: `to_res` keeps their URNs; top-level resources (parent:
  the stack) get no parent, as in the recording engine.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from policy.graph import SECRET_SIG, SECRET_VALUE_SIG, WAIVERS, Res, is_secret
from policy.registry import STACK, Rule
from policy.rules import RULES
from policy.waivers import apply_waivers, waivers_in

Today = Callable[[], datetime.date]


def _get(container: Any, key: Any) -> Any:
    try:
        return container[key]
    except UnknownValueError as err:  # a value not known during preview: keep its sentinel
        return err.unknown_type_sentinel


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(_get(value, k)) for k in value}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(_get(value, i)) for i in range(len(value))]
    return value


def to_res(resource: PolicyResource) -> Res:
    """What a rule sees of one CrossGuard resource."""
    props = _plain(resource.props)
    opts = getattr(resource, "opts", None)
    for key in getattr(opts, "additional_secret_outputs", None) or []:
        if key in props and not is_secret(props[key]):
            props[key] = {SECRET_SIG: SECRET_VALUE_SIG, "value": props[key]}
    parent = resource.parent.urn if resource.parent is not None else getattr(opts, "parent", None)
    if parent and "::pulumi:pulumi:Stack::" in parent:
        parent = None
    provider = resource.provider.urn if resource.provider is not None else None
    return Res(
        type=resource.resource_type,
        name=resource.name,
        urn=resource.urn,
        inputs=props,
        parent=parent or None,
        provider=provider,
    )


def _urn_of(resources: Sequence[Res], name: str) -> str | None:
    if name == STACK:
        return None
    return next((r.urn for r in resources if r.name == name), None)


def _rule_policy(rule: Rule, today: Today) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [to_res(r) for r in args.resources]
        unwaived, _, _ = apply_waivers(rule.check(resources), waivers_in(resources), today())
        for v in unwaived:
            report_violation(v.message, _urn_of(resources, v.resource))

    level = EnforcementLevel.MANDATORY if rule.mandatory else EnforcementLevel.ADVISORY
    return StackValidationPolicy(
        name=rule.id,
        description=f"practice {rule.practice}: {rule.description}",
        validate=validate,
        enforcement_level=level,
    )


def _waivers_policy(today: Today) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [to_res(r) for r in args.resources]
        _, _, errors = apply_waivers([], waivers_in(resources), today())
        urn = next((r.urn for r in resources if r.type == WAIVERS), None)
        for error in errors:
            report_violation(error, urn)

    return StackValidationPolicy(
        name="waivers-valid",
        description="Every policy waiver names a known rule, gives a reason and has not expired.",
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def policies(today: Today = datetime.date.today) -> list[StackValidationPolicy]:
    """One stack policy per rule of `policy.rules.RULES`, then `waivers-valid`."""
    return [*(_rule_policy(r, today) for r in RULES), _waivers_policy(today)]
