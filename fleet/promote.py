"""`python -m fleet promote`: deploy one commit to the next environment, through four gates.

Environments run in the order dev -> staging -> prod. `main` is deployed to dev on every merge;
staging and prod (and team stacks such as `payments-prod`) only ever receive a commit that the
previous environment's stack already runs. A promotion to stack T at commit C from source S:

1. target-config     T's stack file validates (the settings model, every problem listed).
2. source-commit     S's last successful promotion `up` was C (not for dev: it has no source).
3. stateful-replace  T's preview replaces or deletes no resource that holds data (STATEFUL_TYPES),
                     unless its type was allowed with `--allow-replace TYPE`.
4. audit             the audit of T (the ten practices, `python -m fleet audit T`) passes.

Then `pulumi up` on T, its output streamed; only when it succeeds is C recorded on T (the
stack tag `registry-fleet:commit`), which makes T a valid source for the next environment.
Each gate refuses with :class:`PromotionRefused`, naming the rule and what to do; a failed `up`
raises :class:`PromotionFailed` and records nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fleet.runner import Change, StackRunner
from infra.settings import ENVIRONMENTS, SettingsError

# Resource types that hold data or an identity clients depend on: replacing or deleting one loses
# it. The reason is printed when a promotion is refused.
STATEFUL_REASONS: Mapping[str, str] = {
    "aws:s3/bucket:Bucket": (
        "holds every image blob and manifest (the primary bucket), their replica, or the ALB access logs; "
        "a replacement starts empty and a delete loses them"
    ),
    "aws:kms/key:Key": (
        "encrypts the registry buckets and secrets; objects written under a replaced key become unreadable "
        "once the old key's deletion window ends"
    ),
    "aws:backup/vault:Vault": (
        "holds the recovery points of the registry bucket; a replaced vault orphans them (and a locked vault "
        "cannot be deleted at all)"
    ),
    "aws:secretsmanager/secret:Secret": (
        "holds the registry's http.secret, TLS key, htpasswd, CloudFront signing key, the token service's config "
        "and signing key, or a CI robot's token; a replacement gets a "
        "new ARN while the deleted name stays reserved for its recovery window"
    ),
    "aws:lb/loadBalancer:LoadBalancer": (
        "is the registry's address: registry.<domain> points at its DNS name; a replacement gets a new name "
        "and drops every connection, in-flight pushes included, until DNS follows"
    ),
    "aws:cloudwatch/logGroup:LogGroup": "holds the VPC flow logs; a replacement or delete drops them",
    "random:index/randomPassword:RandomPassword": (
        "is a generated value the fleet shares (the registry's http.secret, the admin password, a CI robot's "
        "token); a replacement generates a new one, failing in-flight uploads and every client login (a robot "
        "token rotation is one: allow it by type when you mean it)"
    ),
    "tls:index/privateKey:PrivateKey": (
        "is the internal CA key, the CloudFront URL-signing key or the token signing key; a replacement "
        "invalidates the hosts' certificate chain, every signed blob URL handed out, or every token while "
        "the fleet rolls (hosts trust one signing certificate at a time)"
    ),
}
STATEFUL_TYPES: frozenset[str] = frozenset(STATEFUL_REASONS)

# Preview steps that destroy the resource a stack has now (Pulumi's OpType values).
DESTRUCTIVE_OPS: frozenset[str] = frozenset({"replace", "create-replacement", "delete-replaced", "delete"})

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class PromotionError(Exception):
    """A promotion did not complete. `rule` names the gate or step."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(message)


class PromotionRefused(PromotionError):  # noqa: N818 (the name the CLI and the workflows know)
    """A gate refused the promotion before anything was changed."""


class PromotionFailed(PromotionError):  # noqa: N818 (pairs with PromotionRefused)
    """`pulumi up` (or recording its commit) failed: the stack may be partly updated, nothing was recorded."""


@dataclass(frozen=True)
class Route:
    target: str
    source: str | None  # None: promoting to dev, which is deployed from main


def route(to_env: str, from_env: str | None, stack: str | None) -> Route:
    """The target stack and the stack it is promoted from.

    The target is `stack` (a team stack such as `payments-prod`) or the environment's own stack.
    The source is the previous environment's stack of the same team: `staging` for `prod`,
    `payments-staging` for `payments-prod`; `from_env` picks another earlier environment.
    """
    if to_env not in ENVIRONMENTS:
        raise _refuse("arguments", f"unknown environment {to_env!r}", f"use one of {', '.join(ENVIRONMENTS)}")
    target = stack or to_env
    if target != to_env and not target.endswith(f"-{to_env}"):
        raise _refuse(
            "arguments",
            f"stack {target!r} is not a {to_env} stack",
            f"a team stack is named <team>-<environment>, e.g. payments-{to_env}",
        )
    index = ENVIRONMENTS.index(to_env)
    if from_env is None:
        if index == 0:
            return Route(target, None)
        from_env = ENVIRONMENTS[index - 1]
    if from_env not in ENVIRONMENTS[:index]:
        earlier = ", ".join(ENVIRONMENTS[:index]) or "none: dev is deployed from main"
        raise _refuse(
            "arguments", f"cannot promote from {from_env!r} to {to_env!r}", f"earlier environments: {earlier}"
        )
    team = target[: -len(to_env)]  # "" or "payments-"
    return Route(target, f"{team}{from_env}")


def destructive_changes(changes: Sequence[Change]) -> list[tuple[Change, list[str]]]:
    """Stateful resources the preview replaces or deletes, each once with every destructive op."""
    ops: dict[str, list[str]] = {}
    first: dict[str, Change] = {}
    for change in changes:
        if change.type in STATEFUL_TYPES and change.op in DESTRUCTIVE_OPS:
            first.setdefault(change.urn, change)
            if change.op not in ops.setdefault(change.urn, []):
                ops[change.urn].append(change.op)
    return [(first[urn], ops[urn]) for urn in first]


def promote(
    *,
    to_env: str,
    from_env: str | None,
    stack: str | None,
    commit: str,
    allow_replace: Sequence[str],
    runner: StackRunner,
    audit: Callable[[str], bool],
    validate: Callable[[str], object],
    out: Callable[[str], None],
) -> None:
    """Promote `commit` to a stack, gate by gate; raise PromotionRefused or PromotionFailed if it does not."""
    unknown = sorted(set(allow_replace) - STATEFUL_TYPES)
    if unknown:
        raise _refuse(
            "arguments",
            f"--allow-replace takes a stateful resource type; unknown: {', '.join(unknown)}",
            "known types: " + ", ".join(sorted(STATEFUL_TYPES)),
        )
    if not _COMMIT.match(commit):
        raise _refuse(
            "arguments",
            f"commit {commit!r} is not a full commit SHA",
            "pass the 40-character lowercase SHA (git rev-parse HEAD) of the checked-out commit",
        )
    where = route(to_env, from_env, stack)
    target = where.target
    out(f"promoting {commit} to stack {target} ({to_env})" + (f" from {where.source}" if where.source else ""))

    # 1. The target's settings validate.
    try:
        validate(target)
    except SettingsError as err:
        raise _refuse(
            "target-config", str(err), f"fix the stack file of {target} (python -m fleet validate {target})"
        ) from None
    out(f"  [ok] target-config: stack {target} settings are valid")

    # 2. The source runs this commit.
    if where.source is None:
        out("  [--] source-commit: none for dev (deployed from main on merge)")
    else:
        deployed = runner.last_deployed_commit(where.source)
        if deployed is None:
            raise _refuse(
                "source-commit",
                f"source stack {where.source} has no recorded deployment, so {commit} is untested there",
                f"promote {commit} to {where.source} first",
            )
        if deployed != commit:
            raise _refuse(
                "source-commit",
                f"source stack {where.source} runs commit {deployed}, not {commit}",
                f"promote {commit} to {where.source} first, or promote {deployed} instead",
            )
        out(f"  [ok] source-commit: {where.source} runs {commit}")

    # 3. No stateful resource is replaced or deleted unless its type is allowed.
    allowed = set(allow_replace)
    found = destructive_changes(runner.preview(target).changes)
    refused = [(c, ops) for c, ops in found if c.type not in allowed]
    if refused:
        lines = [f"    - {'/'.join(ops)} {c.type} {c.name} ({c.urn}): {STATEFUL_REASONS[c.type]}" for c, ops in refused]
        types = " ".join(f"--allow-replace {t}" for t in sorted({c.type for c, _ in refused}))
        raise _refuse(
            "stateful-replace",
            f"the preview of {target} replaces or deletes {len(refused)} stateful resource(s):\n" + "\n".join(lines),
            f"change the program so they are kept, or, if losing them is intended, re-run with {types}",
        )
    for c, ops in found:
        out(f"  [!!] stateful-replace: {'/'.join(ops)} {c.type} {c.name} allowed by --allow-replace")
    out(f"  [ok] stateful-replace: no stateful resource of {target} is replaced or deleted without leave")

    # 4. The audit of the target passes.
    if not audit(target):
        raise _refuse(
            "audit",
            f"the audit of stack {target} fails",
            f"run python -m fleet audit {target} to see which practice fails, then fix it or add a waiver",
        )
    out(f"  [ok] audit: stack {target} passes")

    # Deploy; record the commit only after a successful up.
    out(f"pulumi up {target} at {commit}")
    try:
        result = runner.up(target, out)
    except Exception as err:
        raise PromotionFailed(
            "up",
            f"pulumi up of {target} failed: {err}\nnothing was recorded: {target} may be partly updated and still "
            f"counts as running its previous commit; fix the cause and promote again",
        ) from err
    if not result.ok:
        raise PromotionFailed(
            "up",
            f"pulumi up of {target} failed: {result.summary}\nnothing was recorded: {target} may be partly updated "
            "and still counts as running its previous commit; fix the cause and promote again",
        )
    try:
        runner.record_commit(target, commit)
    except Exception as err:
        raise PromotionFailed(
            "record",
            f"{target} was updated to {commit} but the commit could not be recorded: {err}\n"
            f"promote again (the up is then a no-op) so that {target} can serve as a source",
        ) from err
    out(f"promoted {commit} to {target}: {result.summary}")


def _refuse(rule: str, problem: str, todo: str) -> PromotionRefused:
    return PromotionRefused(rule, f"promotion refused by rule {rule}: {problem}\nto fix: {todo}")
