"""Practice 8, replicated across servers: a fleet of hosts in several zones, and the bucket replicated to
another region."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from host.cloudwatch_agent import REGISTRY_JOB, scrape_config_from_document, scrape_targets
from host.contract import REGISTRY_HEALTH_CODES, REGISTRY_PORT, TOKEN_SERVICE_PORT
from policy.graph import (
    AUTOSCALING_GROUP,
    BACKUP_VAULT,
    BUCKET,
    LOAD_BALANCERS,
    LOG_GROUP,
    METRIC_ALARM,
    REPLICATION,
    ROLE_POLICY,
    SCALING_POLICY,
    SNS_TOPIC,
    SSM_ASSOCIATION,
    SSM_DOCUMENT,
    SSM_PARAMETER,
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
    statements,
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


ASG_TAG = "tag:aws:autoscaling:groupName"


def _agent_steps(document: Res) -> tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]] | None:
    """The document's (scrape-config step, package install inputs, ManageAgent inputs), if it has them in order."""
    try:
        content = json.loads(str(unwrap(prop(document, "content"))))
        steps = content["mainSteps"]
        install = next(i for i, s in enumerate(steps) if s["inputs"].get("documentPath") == "AWS-ConfigureAWSPackage")
        manage = next(
            i for i, s in enumerate(steps) if s["inputs"].get("documentPath") == "AmazonCloudWatch-ManageAgent"
        )
    except (ValueError, KeyError, TypeError, StopIteration):
        return None
    if not install < manage:
        return None
    return content, steps[install]["inputs"]["documentParameters"], steps[manage]["inputs"]["documentParameters"]


@rule(
    "host-metrics-collected",
    8,
    "Every registry host runs the CloudWatch agent (an SSM association on the fleet's Auto Scaling group installs "
    "it with AWS-ConfigureAWSPackage, then configures it with AmazonCloudWatch-ManageAgent from an SSM parameter of "
    "the stack) scraping the registry's Prometheus metrics and, in token mode, the token service's, into a log "
    "group the hosts' role may write.",
)
def find_host_metrics_collected(resources: Sequence[Res]) -> Iterator[Finding]:
    documents = {
        known_str(d.outputs.get("name")) or known_str(prop(d, "name")): d for d in of_type(resources, SSM_DOCUMENT)
    }
    parameters = {known_str(prop(p, "name")): p for p in of_type(resources, SSM_PARAMETER)}
    token_mode = any(prop(tg, "port") == TOKEN_SERVICE_PORT for tg in of_type(resources, *TARGET_GROUPS))
    wanted = {t.job: t.address for t in scrape_targets(token_mode)}
    parsed = [statements(unwrap(prop(p, "policy"))) for p in of_type(resources, ROLE_POLICY)]
    grants = None if any(x is None for x in parsed) else [g for x in parsed for g in x or []]
    group_arns = {known_str(prop(g, "name")): arn_of(g) for g in of_type(resources, LOG_GROUP)}
    for group in registry_groups(resources):  # the scanner workers run no registry nor token service
        name = known_str(unwrap(group.outputs.get("name")))  # None in a preview: any association on the tag counts
        covering = [
            a
            for a in of_type(resources, SSM_ASSOCIATION)
            if any(
                t.get("key") == ASG_TAG and (name is None or name in as_list(t.get("values")))
                for t in as_list(prop(a, "targets"))
                if isinstance(t, Mapping)
            )
        ]
        if not covering:
            yield group.name, f"no {SSM_ASSOCIATION} targets its instances ({ASG_TAG}): its hosts run no metrics agent"
            continue
        for association in covering:
            yield from _agent_findings(association, documents, parameters, wanted, grants, group_arns)


def _agent_findings(
    association: Res,
    documents: Mapping[str | None, Res],
    parameters: Mapping[str | None, Res],
    wanted: Mapping[str, str],
    grants: Sequence[Mapping[str, Any]] | None,
    group_arns: Mapping[str | None, str | None],
) -> Iterator[Finding]:
    doc_name = prop(association, "name")
    if is_unknown(doc_name):
        return
    document = documents.get(known_str(doc_name))
    steps = _agent_steps(document) if document is not None else None
    if document is None or steps is None:
        yield (
            association.name,
            (
                f"runs {doc_name!r}, not a document of the stack that installs the agent (AWS-ConfigureAWSPackage) "
                "and then configures it (AmazonCloudWatch-ManageAgent)"
            ),
        )
        return
    content, install, manage = steps
    if install.get("action") != "Install" or install.get("name") != "AmazonCloudWatchAgent":
        yield document.name, f"AWS-ConfigureAWSPackage {dict(install)} does not install AmazonCloudWatchAgent"
    if manage.get("action") != "configure" or manage.get("optionalConfigurationSource") != "ssm":
        yield document.name, "AmazonCloudWatch-ManageAgent does not configure the agent from an SSM parameter"
        return
    parameter = parameters.get(known_str(manage.get("optionalConfigurationLocation")))
    if parameter is None:
        yield (
            document.name,
            f"the agent's config {manage.get('optionalConfigurationLocation')!r} is no parameter of the stack",
        )
        return
    try:
        config = json.loads(str(unwrap(prop(parameter, "value"))))
        prometheus = config["logs"]["metrics_collected"]["prometheus"]
        scraped = scrape_config_from_document(content)
        jobs = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in scraped["scrape_configs"]}
    except (ValueError, KeyError, TypeError, IndexError, StopIteration):
        yield parameter.name, "the agent's config collects no Prometheus metrics (logs.metrics_collected.prometheus)"
        return
    for job, address in wanted.items():
        if jobs.get(job) != address:
            what = "the registry's debug listener" if job == REGISTRY_JOB else "the token service"
            yield document.name, f"the scrape config reads {job!r} at {jobs.get(job)!r}, not {what} at {address}"
    group = str(prometheus.get("log_group_name"))
    if grants is None:
        return  # a preview: some role policy is not known yet
    if not any(_allows_writing(g, group, group_arns.get(group)) for g in grants):
        yield parameter.name, f"no role policy lets the hosts write the agent's log group {group!r}"


def _allows_writing(grant: Mapping[str, Any], group: str, group_arn: str | None) -> bool:
    """PutLogEvents on the group: its ARN as the stack records it, or any ARN naming it (`...:log-group:NAME:*`)."""
    pattern = re.compile(f":log-group:{re.escape(group)}(:|$)")
    resources = [str(r) for r in as_list(grant.get("Resource"))]
    return (
        grant.get("Effect") == "Allow"
        and "logs:PutLogEvents" in as_list(grant.get("Action"))
        and any(pattern.search(r) or (group_arn is not None and r in (group_arn, f"{group_arn}:*")) for r in resources)
    )
