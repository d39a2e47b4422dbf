"""Practice 3, role-based access: the registry always asks for credentials, and in token mode the load
balancer routes the realm to the token service."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from host.contract import TOKEN_HEALTH_PATH
from policy.graph import (
    BUCKET_LOGGING,
    DISTRIBUTION,
    LISTENER_RULES,
    LISTENERS,
    LOG_DELIVERY,
    LOG_DELIVERY_SOURCE,
    TARGET_GROUPS,
    UNKNOWN_VALUES,
    Res,
    arn_of,
    as_list,
    bucket_name,
    forward_targets,
    host_boot,
    is_unknown,
    known_str,
    mapping,
    of_type,
    path_patterns,
    primary_buckets,
    prop,
    registry_configs,
    registry_groups,
    statements,
)
from policy.registry import STACK, Finding, rule
from policy.rules.hosts import no_launch_template


@rule(
    "registry-auth-required",
    3,
    "The registry config on the hosts has an auth section: the registry is never anonymous.",
)
def find_registry_auth_required(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from no_launch_template(resources)
    for lt, config in registry_configs(resources):
        if isinstance(config, str):
            yield lt.name, config
        elif not mapping(config.get("auth")):
            yield lt.name, f"registry config.yml auth is {config.get('auth')!r}: anyone may pull and push"


def token_auth(config: Any) -> Mapping[str, Any]:
    """The registry config's `auth.token` options ({} when the config is unreadable or not in token mode)."""
    return mapping(mapping(mapping(config).get("auth")).get("token"))


@rule(
    "token-service-routed",
    3,
    "In token mode an HTTPS listener rule sends the realm path to a target group health-checked over HTTPS on "
    "/healthz, in which the Auto Scaling group registers its hosts.",
)
def find_token_service_routed(resources: Sequence[Res]) -> Iterator[Finding]:
    realms = {
        urlparse(realm).path
        for _, _, config in host_boot(resources)
        if isinstance(config, dict) and (realm := known_str(token_auth(config).get("realm")))
    }
    if not realms:
        return  # not token mode, or not known yet (registry-auth-trusted reports a bad auth section)
    https_arns = {
        arn_of(li) for li in of_type(resources, *LISTENERS) if prop(li, "protocol") in ("HTTPS", *UNKNOWN_VALUES)
    }
    groups = {arn: tg for tg in of_type(resources, *TARGET_GROUPS) if (arn := arn_of(tg))}
    fleets = registry_groups(resources)
    rules = of_type(resources, *LISTENER_RULES)
    for path in sorted(realms):
        routes = [r for r in rules if any(fnmatch.fnmatchcase(path, p) for p in path_patterns(r))]
        if not routes and not any(is_unknown(prop(r, "conditions")) for r in rules):
            yield STACK, f"no {LISTENER_RULES[0]} has a path-pattern condition matching the realm path {path!r}"
        for route in routes:
            listener = prop(route, "listenerArn")
            if known_str(listener) and None not in https_arns and listener not in https_arns:
                yield route.name, f"listenerArn is {listener!r}, not an HTTPS listener of this stack"
            targets = forward_targets(route)
            if not targets:
                yield route.name, f"actions forward {path!r} to no target group"
            for arn in targets:
                if is_unknown(arn):
                    continue
                tg = groups.get(arn)
                if tg is None:
                    if groups:
                        yield route.name, f"actions forward to {arn!r}, not a target group of this stack"
                    continue
                check = (prop(tg, "healthCheck", "protocol"), prop(tg, "healthCheck", "path"))
                if not any(map(is_unknown, check)) and check != ("HTTPS", TOKEN_HEALTH_PATH):
                    yield (
                        tg.name,
                        f"healthCheck (protocol, path) is {check}, expected ('HTTPS', '{TOKEN_HEALTH_PATH}') "
                        "(the token service's health)",
                    )
                for group in fleets:
                    registered = prop(group, "targetGroupArns")
                    if is_unknown(registered) or any(is_unknown(a) for a in as_list(registered)):
                        continue
                    if arn not in as_list(registered):
                        yield (
                            group.name,
                            f"targetGroupArns does not include {tg.name}: its hosts never get token requests",
                        )


@rule(
    "access-logs",
    3,
    "Who read and wrote images is on record: S3 server access logs of the registry bucket, and CloudFront "
    "standard logging of the blob CDN, each delivered to a bucket of the stack.",
)
def find_access_logs(resources: Sequence[Res]) -> Iterator[Finding]:
    buckets = {name for b in of_type(resources, "aws:s3/bucket:Bucket") if (name := bucket_name(b))}
    logging = {prop(r, "bucket"): prop(r, "targetBucket") for r in of_type(resources, BUCKET_LOGGING)}
    for bucket in primary_buckets(resources):
        name = bucket_name(bucket)
        if name is None or any(is_unknown(k) for k in logging):
            continue  # a preview: names are not known yet
        target = logging.get(name)
        if target is None:
            yield bucket.name, f"no {BUCKET_LOGGING}: reads and deletes of images leave no record"
        elif not is_unknown(target) and target not in buckets:
            yield bucket.name, f"its access logs go to {target!r}, not a bucket of this stack"
    delivered = {prop(d, "deliverySourceName") for d in of_type(resources, LOG_DELIVERY)}
    sources = {
        prop(s, "resourceArn"): s
        for s in of_type(resources, LOG_DELIVERY_SOURCE)
        if prop(s, "logType") == "ACCESS_LOGS"
    }
    for distribution in of_type(resources, DISTRIBUTION):
        arn = arn_of(distribution)
        if arn is None or any(is_unknown(k) for k in sources):
            continue
        source = sources.get(arn)
        if source is None:
            yield distribution.name, f"no {LOG_DELIVERY_SOURCE} of its ACCESS_LOGS: downloads leave no record"
        elif prop(source, "name") not in delivered and not any(is_unknown(d) for d in delivered):
            yield source.name, f"no {LOG_DELIVERY} sends it anywhere"


DYNAMODB_TABLE = "aws:dynamodb/table:Table"
INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
IAM_POLICIES = ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy", "aws:iam/userPolicy:UserPolicy")
# What changes a table's items (or everything): reads are not the concern here.
_TABLE_WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem")


def _names_table(resource: Any, table_arn: str | None, table_name: str | None) -> bool:
    for pattern in (str(r) for r in as_list(resource)):
        if table_arn and fnmatch.fnmatchcase(table_arn, pattern):
            return True
        if table_name and fnmatch.fnmatchcase(f"arn:aws:dynamodb:region:account:table/{table_name}", pattern):
            return True
        if table_name and pattern.endswith(f":table/{table_name}"):
            return True
    return False


def _writes(action: Any) -> bool:
    return any(fnmatch.fnmatchcase(w, str(a)) for a in as_list(action) for w in _TABLE_WRITES)


@rule(
    "lockout-table",
    3,
    "The token service's lockout table forgets on its own and can be restored: TTL and point-in-time "
    "recovery on; only the fleet's instance role (the hosts) may write its items.",
)
def find_lockout_table(resources: Sequence[Res]) -> Iterator[Finding]:
    # The hosts' role is the one their instance profile names; its inline policy is registered beside
    # the profile (the fleet component's children): ids differ between a preview, an update and the tests.
    fleet_parents = {p.parent for p in of_type(resources, INSTANCE_PROFILE)}
    for table in of_type(resources, DYNAMODB_TABLE):
        ttl = prop(table, "ttl", "enabled")
        if not is_unknown(ttl) and (ttl is not True or not prop(table, "ttl", "attributeName")):
            yield table.name, f"ttl.enabled is {ttl!r}: counters would never be deleted"
        pitr = prop(table, "pointInTimeRecovery", "enabled")
        if not is_unknown(pitr) and pitr is not True:
            yield table.name, f"pointInTimeRecovery.enabled is {pitr!r}"
        arn, name = arn_of(table), known_str(prop(table, "name"))
        for policy in of_type(resources, *IAM_POLICIES):
            for statement in statements(prop(policy, "policy")) or []:
                if statement.get("Effect") != "Allow" or not _writes(statement.get("Action")):
                    continue
                if not _names_table(statement.get("Resource"), arn, name):
                    continue
                if policy.type != IAM_POLICIES[0] or policy.parent not in fleet_parents:
                    yield (
                        policy.name,
                        f"allows {statement.get('Action')!r} on the lockout table {name!r}: not the fleet's role",
                    )
