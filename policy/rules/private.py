"""Practice 7, private registry: hosts without public IPs or SSH keys, reachable only from the load balancer;
private buckets; no plain secrets."""

from __future__ import annotations

import binascii
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from host.contract import TOKEN_PATH
from policy.graph import (
    BUCKET,
    BUCKET_POLICY,
    FLEET_COMPONENT,
    INGRESS_RULE,
    LAUNCH_TEMPLATE,
    LOAD_BALANCER_COMPONENT,
    LOAD_BALANCERS,
    PUBLIC_ACCESS_BLOCK,
    RANDOM_PASSWORD,
    SECURITY_GROUP,
    SECURITY_GROUP_RULE,
    WEB_ACL,
    WEB_ACL_ASSOCIATION,
    WEB_ACL_LOGGING,
    Res,
    arn_of,
    as_list,
    everyone,
    is_secret,
    is_unknown,
    known_str,
    mapping,
    of_type,
    physical_id,
    prop,
    satellites,
    statements,
    unwrap,
    user_data_text,
)
from policy.registry import Finding, rule


@rule(
    "hosts-private",
    7,
    "Launch templates give hosts no public IP and no SSH key, and require IMDSv2 with a hop limit of 1.",
)
def find_hosts_private(resources: Sequence[Res]) -> Iterator[Finding]:
    for lt in of_type(resources, LAUNCH_TEMPLATE):
        nics = prop(lt, "networkInterfaces")
        if not is_unknown(nics):
            if not as_list(nics):
                yield lt.name, "networkInterfaces is not set: associatePublicIpAddress 'false' must be explicit"
            for i, nic in enumerate(as_list(nics)):
                public = mapping(nic).get("associatePublicIpAddress")
                if not is_unknown(public) and str(public).lower() != "false":
                    yield lt.name, f"networkInterfaces[{i}].associatePublicIpAddress is {public!r}, expected 'false'"
        tokens = prop(lt, "metadataOptions", "httpTokens")
        if not is_unknown(tokens) and tokens != "required":
            yield lt.name, f"metadataOptions.httpTokens is {tokens!r}, expected 'required' (IMDSv2 only)"
        hops = prop(lt, "metadataOptions", "httpPutResponseHopLimit")
        if not is_unknown(hops) and hops != 1:
            yield lt.name, f"metadataOptions.httpPutResponseHopLimit is {hops!r}, expected 1"
        key = prop(lt, "keyName")
        if key not in (None, ""):
            yield lt.name, f"keyName is {key!r}: no SSH key pair on registry hosts (operators use SSM)"


# Per kind of rule: (property naming the group it opens, property naming the group it admits, address properties).
_INGRESS_FIELDS = {
    INGRESS_RULE: ("securityGroupId", "referencedSecurityGroupId", ("cidrIpv4", "cidrIpv6", "prefixListId")),
    SECURITY_GROUP_RULE: (
        "securityGroupId",
        "sourceSecurityGroupId",
        ("cidrBlocks", "ipv6CidrBlocks", "prefixListIds"),
    ),
}


@rule(
    "hosts-ingress-from-lb-only",
    7,
    "The hosts' security group admits traffic only from a referenced security group (the load balancer's).",
)
def find_hosts_ingress_from_lb_only(resources: Sequence[Res]) -> Iterator[Finding]:
    fleets = {r.urn for r in resources if r.type == FLEET_COMPONENT}
    balancers = {r.urn for r in resources if r.type == LOAD_BALANCER_COMPONENT}
    host_groups = [g for g in of_type(resources, SECURITY_GROUP) if g.parent in fleets]
    host_ids = {i for g in host_groups if (i := physical_id(g))}
    lb_ids = {i for g in of_type(resources, SECURITY_GROUP) if g.parent in balancers and (i := physical_id(g))}
    for group in host_groups:
        inline = prop(group, "ingress")
        if not is_unknown(inline) and as_list(inline):
            yield group.name, f"ingress has {len(as_list(inline))} inline rules; hosts admit only the load balancer"
    for ingress in of_type(resources, *_INGRESS_FIELDS):
        target_field, source_field, address_fields = _INGRESS_FIELDS[ingress.type]
        if ingress.type == SECURITY_GROUP_RULE and prop(ingress, "type") != "ingress":
            continue
        if ingress.parent not in fleets and known_str(prop(ingress, target_field)) not in host_ids:
            continue
        addresses = {f: prop(ingress, f) for f in address_fields if prop(ingress, f) not in (None, "", [])}
        source = prop(ingress, source_field)
        if addresses:
            yield ingress.name, f"admits {addresses}; hosts admit only the load balancer's security group"
        elif not source:
            yield ingress.name, f"{source_field} is not set; hosts admit only the load balancer's security group"
        elif lb_ids and not is_unknown(source) and source not in lb_ids:
            yield ingress.name, f"{source_field} is {source!r}, not the load balancer's security group"


PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


@rule("buckets-block-public-access", 7, "Every S3 bucket has a public access block with all four flags true.")
def find_buckets_block_public_access(resources: Sequence[Res]) -> Iterator[Finding]:
    for bucket in of_type(resources, BUCKET):
        blocks = satellites(resources, bucket, PUBLIC_ACCESS_BLOCK)
        if not blocks:
            yield bucket.name, f"no {PUBLIC_ACCESS_BLOCK} names this bucket"
        for block in blocks:
            off = {f: prop(block, f) for f in PUBLIC_ACCESS_FLAGS}
            off = {f: v for f, v in off.items() if not is_unknown(v) and str(v).lower() != "true"}
            if off:
                yield block.name, f"public access flags not true: {off}"


@rule("bucket-policies-not-public", 7, "No bucket policy allows Principal * (or AWS *) without a Condition.")
def find_bucket_policies_not_public(resources: Sequence[Res]) -> Iterator[Finding]:
    for policy in of_type(resources, BUCKET_POLICY, BUCKET):
        for i, stmt in enumerate(statements(prop(policy, "policy")) or []):
            if stmt.get("Effect") == "Allow" and everyone(stmt.get("Principal")) and not stmt.get("Condition"):
                label = stmt.get("Sid") or f"Statement[{i}]"
                yield policy.name, f"policy {label} allows Principal {stmt.get('Principal')!r} with no Condition"


def _plain_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in `value` that is not inside a secret wrapper, with its property path."""
    if is_secret(value):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _plain_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _plain_strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


@rule(
    "no-plain-secrets",
    7,
    "No plain (non-secret) property, user-data included, holds a private key PEM or a generated password.",
)
def find_no_plain_secrets(resources: Sequence[Res]) -> Iterator[Finding]:
    passwords: dict[str, str] = {}
    for pw in of_type(resources, RANDOM_PASSWORD):
        for value in (unwrap(pw.outputs.get("result")), prop(pw, "result")):
            if known_str(value) and len(value) >= 8:
                passwords[value] = pw.name
    for res in resources:
        if res.type == RANDOM_PASSWORD:
            continue
        texts = list(_plain_strings(res.inputs, ""))
        raw = known_str(res.inputs.get("userData")) if res.type == LAUNCH_TEMPLATE else None
        if raw is not None:
            with contextlib.suppress(binascii.Error, OSError, EOFError, UnicodeDecodeError):
                texts.append(("userData (decoded)", user_data_text(raw)))
        for path, text in texts:
            leaked = next((name for value, name in passwords.items() if value in text), None)
            if "PRIVATE KEY-----" in text:
                yield res.name, f"{path} holds a PEM private key in plain text (not a secret)"
                break
            if leaked:
                yield res.name, f"{path} holds the result of {leaked} in plain text (not a secret)"
                break


# The AWS managed rule groups every edge ACL runs (components/firewall.py).
REQUIRED_RULE_GROUPS = ("AWSManagedRulesAmazonIpReputationList", "AWSManagedRulesKnownBadInputsRuleSet")


def _rate_limits_token_path(acl_rule: Mapping[str, Any]) -> bool:
    rate = mapping(mapping(acl_rule.get("statement")).get("rateBasedStatement"))
    match = mapping(mapping(rate.get("scopeDownStatement")).get("byteMatchStatement"))
    return (
        rate.get("aggregateKeyType") == "IP"
        and match.get("searchString") == TOKEN_PATH
        and match.get("positionalConstraint") in ("STARTS_WITH", "EXACTLY")
        and "uriPath" in mapping(match.get("fieldToMatch"))
    )


@rule(
    "edge-firewall",
    7,
    "Every load balancer has a WAF web ACL with AWS's IP reputation and known-bad-inputs rule groups and a "
    "per-address rate rule on the token path, logging with the authorization header redacted.",
)
def find_edge_firewall(resources: Sequence[Res]) -> Iterator[Finding]:
    associations = of_type(resources, WEB_ACL_ASSOCIATION)
    attached = {prop(a, "resourceArn"): prop(a, "webAclArn") for a in associations}
    acl_arns = {arn_of(acl) for acl in of_type(resources, WEB_ACL)}
    # In a preview ARNs are not known yet: an association to an unknown ARN may be this load balancer's.
    previewing = any(is_unknown(arn) for arn in attached)
    for lb in of_type(resources, *LOAD_BALANCERS):
        lb_arn = arn_of(lb)
        if lb_arn is None or previewing:
            continue
        if lb_arn not in attached:
            yield lb.name, f"no {WEB_ACL_ASSOCIATION} puts a web ACL in front of it"
        elif attached[lb_arn] not in acl_arns and not is_unknown(attached[lb_arn]):
            yield lb.name, f"its web ACL {attached[lb_arn]!r} is not one of this stack's"
    logging_configs = of_type(resources, WEB_ACL_LOGGING)
    for acl in of_type(resources, WEB_ACL):
        rules = [mapping(r) for r in as_list(prop(acl, "rules"))]
        groups = {mapping(mapping(r.get("statement")).get("managedRuleGroupStatement")).get("name") for r in rules}
        missing = [g for g in REQUIRED_RULE_GROUPS if g not in groups]
        if missing:
            yield acl.name, f"rules lack the AWS managed rule group(s) {missing}"
        if not any(_rate_limits_token_path(r) for r in rules):
            yield acl.name, f"no rate-based rule per client IP scoped to the token path {TOKEN_PATH!r}"
        arn = arn_of(acl)
        logging = [c for c in logging_configs if is_unknown(prop(c, "resourceArn")) or prop(c, "resourceArn") == arn]
        if not logging:
            yield acl.name, f"no {WEB_ACL_LOGGING}: blocked and counted requests leave no trace"
        for config in logging:
            redacted = [
                mapping(mapping(f).get("singleHeader")).get("name") for f in as_list(prop(config, "redactedFields"))
            ]
            if "authorization" not in [str(h).lower() for h in redacted]:
                yield (
                    config.name,
                    "redactedFields does not redact the authorization header: sign-in passwords and tokens would "
                    "be logged",
                )
