"""Practice 6, signed images: a KMS signing key only the signer roles may sign with, and in prod, pulls that
need a signature.

`signing-key` checks the key itself (an asymmetric signing key of a spec cosign verifies), `signing-key-policy`
who its key policy lets call `kms:Sign` (IAM roles named one by one, never everyone, never the account root,
whose statement would let any IAM policy in the account grant it), and `signatures-required-in-prod` that a
prod stack protects at least one namespace end to end: the hosts run the gate with a protected namespace, and
the load balancer sends that namespace's manifest reads to the gate's target group, where the hosts register.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from host.contract import GATE_CONFIG_FILE, GATE_PORT, GATE_UNIT
from policy.graph import (
    KMS_KEY,
    LAUNCH_TEMPLATE,
    LISTENER_RULES,
    TARGET_GROUPS,
    Res,
    arn_of,
    as_list,
    cloud_inits,
    enabled_services,
    forward_targets,
    is_unknown,
    mapping,
    of_type,
    path_patterns,
    prop,
    registry_groups,
    statements,
)
from policy.registry import STACK, Finding, rule

# Key specs whose signatures cosign and the gate verify: ECDSA P-256 (the default), or RSA of 3072 bits and up.
SIGNING_SPECS = ("ECC_NIST_P256", "RSA_3072", "RSA_4096")
SIGN = "kms:Sign"
_ROLE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
_ROOT = re.compile(r"^(\d{12}|arn:aws[a-z-]*:iam::\d{12}:root)$")


def signing_keys(resources: Sequence[Res]) -> list[Res]:
    """The KMS keys made for signing (keyUsage SIGN_VERIFY)."""
    return [k for k in of_type(resources, KMS_KEY) if prop(k, "keyUsage") == "SIGN_VERIFY"]


@rule(
    "signing-key",
    6,
    "The stack has a KMS key for signing images (keyUsage SIGN_VERIFY, spec ECC_NIST_P256, RSA_3072 or RSA_4096).",
)
def find_signing_key(resources: Sequence[Res]) -> Iterator[Finding]:
    seen = []
    good = False
    for key in of_type(resources, KMS_KEY):
        usage = prop(key, "keyUsage")
        spec = prop(key, "customerMasterKeySpec") or prop(key, "keySpec")
        if is_unknown(usage) or is_unknown(spec):
            return
        if usage == "SIGN_VERIFY":
            if spec in SIGNING_SPECS:
                good = True
            else:
                yield (
                    key.name,
                    f"customerMasterKeySpec is {spec!r} on a SIGN_VERIFY key; cosign and the gate verify "
                    f"{', '.join(SIGNING_SPECS)}",
                )
        usage, spec = usage or "ENCRYPT_DECRYPT (default)", spec or "SYMMETRIC_DEFAULT (default)"
        seen.append(f"{key.name} (keyUsage {usage}, customerMasterKeySpec {spec})")
    if not good:
        yield (
            STACK,
            f"no {KMS_KEY} with keyUsage 'SIGN_VERIFY' and customerMasterKeySpec in {list(SIGNING_SPECS)} (the "
            f"cosign key); keys: {sorted(seen) or 'none'}",
        )


def _covers_sign(statement: Mapping[str, Any]) -> bool:
    """Whether an Allow statement's actions include kms:Sign (wildcards, NotAction)."""
    if "NotAction" in statement:
        return not any(fnmatch.fnmatchcase(SIGN.lower(), str(a).lower()) for a in as_list(statement["NotAction"]))
    return any(fnmatch.fnmatchcase(SIGN.lower(), str(a).lower()) for a in as_list(statement.get("Action")))


def _principals(statement: Mapping[str, Any]) -> list[str]:
    """Every principal of a statement as a string: "*", AWS ARNs or ids, services, federated providers."""
    principal = statement.get("Principal")
    if principal == "*" or principal is None:
        return ["*"] if principal == "*" else []
    return [str(p) for values in mapping(principal).values() for p in as_list(values)]


def sign_policy_problems(policy: Any) -> list[str]:
    """Why a key policy lets someone other than named IAM roles call kms:Sign (empty when it does not)."""
    if policy is None or policy == "":
        return [
            "policy is not set: the default key policy lets the account root, and so every IAM policy of the "
            "account, grant kms:Sign"
        ]
    found = statements(policy)
    if found is None:
        return []  # not known yet (preview)
    problems = []
    for i, statement in enumerate(found):
        if statement.get("Effect") != "Allow" or not _covers_sign(statement):
            continue
        where = f"policy Statement[{i}] ({statement.get('Sid', 'no Sid')}) allows kms:Sign"
        if "NotPrincipal" in statement:
            problems.append(f"{where} with NotPrincipal: to everyone but the principals it names")
        for principal in _principals(statement):
            if principal == "*":
                problems.append(f"{where} to Principal '*'")
            elif _ROOT.match(principal):
                problems.append(
                    f"{where} to the account root {principal!r}: every IAM policy in the account could grant it; "
                    "name the signer roles instead"
                )
            elif not _ROLE.match(principal):
                problems.append(f"{where} to {principal!r}, which is not an IAM role ARN (a signer role)")
    return problems


@rule(
    "signing-key-policy",
    6,
    "The signing key's policy lets only IAM roles named one by one (the signer roles) call kms:Sign: no '*', "
    "no account root, no other principal.",
)
def find_signing_key_policy(resources: Sequence[Res]) -> Iterator[Finding]:
    for key in signing_keys(resources):
        for problem in sign_policy_problems(prop(key, "policy")):
            yield key.name, problem


def _environment(resources: Sequence[Res]) -> Any:
    """The stack's environment, from its launch template's tags (None when there is no template)."""
    for lt in of_type(resources, LAUNCH_TEMPLATE):
        return prop(lt, "tags", "environment")
    return None


def _gate_namespaces(cloud_init: Mapping[str, Any]) -> list[str] | str:
    """The namespaces the gate's config in user-data protects, or a str saying what is missing."""
    files = {f.get("path"): f.get("content") for f in as_list(cloud_init.get("write_files")) if isinstance(f, dict)}
    if GATE_CONFIG_FILE not in files:
        return f"userData writes no {GATE_CONFIG_FILE} (the gate's config)"
    try:
        config = mapping(yaml.safe_load(str(files[GATE_CONFIG_FILE])))
    except yaml.YAMLError as err:
        return f"{GATE_CONFIG_FILE} in userData is not YAML ({err})"
    namespaces = mapping(config.get("namespaces"))
    protected = [str(ns) for ns, policy in namespaces.items() if mapping(policy).get("require_signed")]
    return sorted(protected) or f"{GATE_CONFIG_FILE} in userData protects no namespace (namespaces: require_signed)"


@rule(
    "signatures-required-in-prod",
    6,
    "A prod stack requires signatures on at least one namespace: its hosts run the gate with that namespace, and "
    "listener rules send the namespace's manifest reads, percent-encoded ones included, to the gate's target group.",
)
def find_signatures_required_in_prod(resources: Sequence[Res]) -> Iterator[Finding]:
    if _environment(resources) != "prod":
        return  # not prod, or not known yet
    hint = "set access.pullPolicies.<namespace>.requireSigned: true"
    namespaces: set[str] = set()
    for lt, doc in cloud_inits(resources):
        if isinstance(doc, str):
            continue  # hosts-dedicated reports an unreadable userData
        found = _gate_namespaces(doc)
        if isinstance(found, str):
            yield lt.name, f"{found}: a prod stack requires signatures on at least one namespace ({hint})"
            continue
        namespaces.update(found)
        if GATE_UNIT not in enabled_services(doc):
            yield lt.name, f"userData runcmd does not enable {GATE_UNIT}: nothing enforces {found}"
    groups = {arn: tg for tg in of_type(resources, *TARGET_GROUPS) if (arn := arn_of(tg))}
    gate_groups = {arn for arn, tg in groups.items() if prop(tg, "port") == GATE_PORT}
    rules = of_type(resources, *LISTENER_RULES)
    if any(is_unknown(prop(r, "conditions")) or is_unknown(prop(r, "actions")) for r in rules):
        return
    registered = {a for g in registry_groups(resources) for a in as_list(prop(g, "targetGroupArns"))}
    for ns in sorted(namespaces):
        path = f"/v2/{ns}/app/manifests/latest"
        routes = [r for r in rules if any(fnmatch.fnmatchcase(path, p) for p in path_patterns(r))]
        targets = {t for r in routes for t in forward_targets(r)}
        if not targets & gate_groups:
            yield (
                STACK,
                f"no listener rule forwards {path} (GET/HEAD of a manifest in the protected namespace {ns!r}) to a "
                f"target group on port {GATE_PORT} (the gate)",
            )
        elif not targets & gate_groups & registered:
            yield STACK, f"the gate's target group for {ns!r} is in no Auto Scaling group's targetGroupArns"
        # The registry decodes the path before routing; the load balancer matches it as sent.
        encoded = f"/v2/{ns}%2Fapp/manifests/latest"
        odd = [r for r in rules if any(_search(rx, encoded) for rx in path_patterns(r, "regexValues"))]
        if not {t for r in odd for t in forward_targets(r)} & gate_groups:
            yield (
                STACK,
                f"no listener rule forwards {encoded} (the registry reads it as {path}) to the gate: a percent-encoded "
                "path would reach the registry's manifest handler unchecked",
            )


def _search(pattern: str, path: str) -> bool:
    """Python's `re` standing in for the load balancer's regex engine (the patterns here are plain)."""
    try:
        return re.search(pattern, path) is not None
    except re.error:
        return False
