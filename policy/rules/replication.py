"""Practice 8, replicated across servers: a fleet of hosts in several zones, and the bucket replicated to
another region."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from host.contract import REGISTRY_HEALTH_CODES, REGISTRY_PORT
from policy.graph import (
    AUTOSCALING_GROUP,
    BACKUP_VAULT,
    BUCKET,
    LOAD_BALANCERS,
    METRIC_ALARM,
    REPLICATION,
    SCALING_POLICY,
    SNS_TOPIC,
    TARGET_GROUPS,
    VAULT_NOTIFICATIONS,
    Res,
    arn_of,
    as_list,
    bucket_name,
    is_unknown,
    known_str,
    mapping,
    of_type,
    prop,
    registry_configs,
    registry_groups,
    unwrap,
)
from policy.registry import STACK, Finding, rule


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _matcher_codes(matcher: Any) -> set[int]:
    """The HTTP codes a target group's health-check matcher accepts ("200", "200,503", "200-399")."""
    codes: set[int] = set()
    for part in str(matcher).split(","):
        low, _, high = part.strip().partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            codes.update(range(int(low), int(high or low) + 1))
    return codes


@rule(
    "fleet-replicated",
    8,
    "The Auto Scaling group keeps at least two hosts in at least two subnets, replaced on ELB health that no "
    "shared dependency fails (the registry's target group counts the 503 of its storage check as alive).",
)
def find_fleet_replicated(resources: Sequence[Res]) -> Iterator[Finding]:
    groups = registry_groups(resources)
    if not groups:
        yield STACK, f"no {AUTOSCALING_GROUP}: the registry runs on no replicated fleet"
    for group in groups:
        min_size = prop(group, "minSize")
        if not is_unknown(min_size) and not (_number(min_size) and min_size >= 2):
            yield group.name, f"minSize is {min_size!r}, expected at least 2"
        subnets = prop(group, "vpcZoneIdentifiers")
        if not is_unknown(subnets) and len(as_list(subnets)) < 2:
            yield group.name, f"vpcZoneIdentifiers has {len(as_list(subnets))} subnets, expected at least 2 (zones)"
        health = prop(group, "healthCheckType")
        if not is_unknown(health) and health != "ELB":
            yield group.name, f"healthCheckType is {health!r}, expected 'ELB' (replace hosts the registry fails on)"
    # A registry health check fails every path with 503, `/` (the load balancer's check, which replaces hosts)
    # included. A storage check fails on every host at once while S3 or its KMS key is unavailable: the
    # registry's target group must count that 503 as alive, or ELB health replaces the whole fleet.
    storage_checked = any(
        mapping(mapping(mapping(config).get("health")).get("storagedriver")).get("enabled") is True
        for _, config in registry_configs(resources)
        if isinstance(config, dict)
    )
    if storage_checked:
        for tg in of_type(resources, *TARGET_GROUPS):
            if prop(tg, "port") != REGISTRY_PORT:
                continue
            matcher = mapping(prop(tg, "healthCheck")).get("matcher", "200")
            if not is_unknown(matcher) and 503 not in _matcher_codes(matcher):
                yield (
                    tg.name,
                    f"healthCheck.matcher is {matcher!r} while the registry runs a storage health check: an S3 "
                    f"outage answers 503 on every host at once and ELB health would replace the whole fleet "
                    f"(expected {REGISTRY_HEALTH_CODES!r})",
                )


def _bucket_named(resources: Sequence[Res], name: Any) -> Res | None:
    return next((b for b in of_type(resources, BUCKET) if name is not None and bucket_name(b) == name), None)


def _bucket_with_arn(resources: Sequence[Res], arn: Any) -> Res | None:
    return next((b for b in of_type(resources, BUCKET) if arn is not None and arn_of(b) == arn), None)


@rule(
    "bucket-replicated",
    8,
    "A bucket replication configuration copies objects and delete markers to a bucket in another region.",
)
def find_bucket_replicated(resources: Sequence[Res]) -> Iterator[Finding]:
    configs = of_type(resources, REPLICATION)
    if not configs:
        yield STACK, f"no {REPLICATION}: registry blobs live in one region"
    for cfg in configs:
        source = _bucket_named(resources, prop(cfg, "bucket"))
        source_provider = source.provider if source else cfg.provider
        rules = prop(cfg, "rules")
        if is_unknown(rules):
            continue
        if not as_list(rules):
            yield cfg.name, "rules is empty"
        for i, spec in enumerate(map(mapping, as_list(rules))):
            status = spec.get("status")
            if not is_unknown(status) and status != "Enabled":
                yield cfg.name, f"rules[{i}].status is {status!r}, expected 'Enabled'"
            markers = mapping(spec.get("deleteMarkerReplication")).get("status")
            if not is_unknown(markers) and markers != "Enabled":
                yield cfg.name, f"rules[{i}].deleteMarkerReplication.status is {markers!r}, expected 'Enabled'"
            target = mapping(spec.get("destination")).get("bucket")
            dest = _bucket_with_arn(resources, target)
            if is_unknown(target):
                if not any(b.provider != source_provider for b in of_type(resources, BUCKET)):
                    yield cfg.name, f"rules[{i}].destination.bucket: no bucket of this stack is in another region"
            elif dest is None:
                yield cfg.name, f"rules[{i}].destination.bucket {target!r} is not a bucket of this stack"
            elif dest.provider == source_provider:
                yield (
                    cfg.name,
                    f"rules[{i}].destination.bucket is {dest.name}, through the source's provider "
                    f"{source_provider!r}: the replica must be in another region",
                )


# The signals every stack alarms on (components/alarms.py): per load balancer, per target group, per
# replication rule. A missing one is a failure nobody hears about.
LB_METRICS = ("HTTPCode_ELB_5XX_Count",)
TARGET_GROUP_METRICS = ("HTTPCode_Target_5XX_Count", "TargetResponseTime", "UnHealthyHostCount")
REPLICATION_METRICS = ("OperationsFailedReplication", "ReplicationLatency")
BACKUP_FAILURES = ("BACKUP_JOB_FAILED", "COPY_JOB_FAILED")


@rule(
    "alarms-notify",
    8,
    "CloudWatch alarms on load-balancer 5xx, each target group's 5xx, latency and unhealthy hosts, and "
    "replication failures and lag notify an SNS topic of the stack, as do failed backup and copy jobs.",
)
def find_alarms_notify(resources: Sequence[Res]) -> Iterator[Finding]:
    topics = {arn for t in of_type(resources, SNS_TOPIC) if (arn := arn_of(t))}
    # An alarm that only scales a group of the stack (the scanner workers' queue alarms) pages nobody by design.
    scalers = {arn for p in of_type(resources, SCALING_POLICY) if (arn := arn_of(p))}
    watched: set[tuple[str, str]] = set()  # (metric, the dimension that names what it watches)
    for alarm in of_type(resources, METRIC_ALARM):
        actions = as_list(prop(alarm, "alarmActions"))
        if is_unknown(prop(alarm, "alarmActions")) or any(is_unknown(a) for a in actions):
            continue  # a preview: the topic's ARN is not known yet
        if actions and all(a in scalers for a in actions):
            continue
        if not any(a in topics for a in actions):
            yield alarm.name, f"alarmActions {actions} notify no SNS topic of the stack: it fires unheard"
            continue
        dims = mapping(prop(alarm, "dimensions"))
        key = dims.get("TargetGroup") or dims.get("LoadBalancer") or dims.get("SourceBucket")
        watched.add((str(prop(alarm, "metricName")), str(key)))
    # In a preview neither suffixes nor topics are known yet: what cannot be matched is not judged.
    for watched_resources, metrics in (
        (of_type(resources, *LOAD_BALANCERS), LB_METRICS),
        (of_type(resources, *TARGET_GROUPS), TARGET_GROUP_METRICS),
    ):
        for res in watched_resources:
            suffix = known_str(unwrap(res.outputs.get("arnSuffix"))) or known_str(prop(res, "arnSuffix"))
            for metric in metrics if suffix is not None else ():
                if (metric, str(suffix)) not in watched:
                    yield res.name, f"no alarm on {metric} notifies the stack's topic"
    for replication in of_type(resources, REPLICATION):
        source = prop(replication, "bucket")
        for metric in REPLICATION_METRICS:
            if not is_unknown(source) and (metric, str(source)) not in watched:
                yield replication.name, f"no alarm on {metric} notifies the stack's topic"
    notified = [
        n
        for n in of_type(resources, VAULT_NOTIFICATIONS)
        if prop(n, "snsTopicArn") in topics or is_unknown(prop(n, "snsTopicArn"))
    ]
    events = {e for n in notified for e in as_list(prop(n, "backupVaultEvents"))}
    if of_type(resources, BACKUP_VAULT) and not all(e in events for e in BACKUP_FAILURES):
        yield STACK, f"no {VAULT_NOTIFICATIONS} sends {list(BACKUP_FAILURES)} to the stack's topic"
