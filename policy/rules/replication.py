"""Practice 8, replicated across servers: a fleet of hosts in several zones, and the bucket replicated to
another region."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from host.contract import REGISTRY_HEALTH_CODES, REGISTRY_PORT
from policy.graph import (
    AUTOSCALING_GROUP,
    BUCKET,
    REPLICATION,
    TARGET_GROUPS,
    Res,
    arn_of,
    as_list,
    bucket_name,
    is_unknown,
    mapping,
    of_type,
    prop,
    registry_configs,
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
    groups = of_type(resources, AUTOSCALING_GROUP)
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
