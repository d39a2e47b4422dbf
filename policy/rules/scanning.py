"""Practice 5, vulnerability scans: registry events reach an encrypted queue with a dead-letter queue, scanner
workers that are not registry hosts scan them, every tagged digest is queued again nightly, and the Trivy
database is mirrored into the registry (components/scanning.py, docs/scanning.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from host.contract import (
    SCAN_EVENTS_CONFIG_FILE,
    SCAN_EVENTS_PATH,
    SCAN_EVENTS_PORT,
    SCAN_EVENTS_UNIT,
)
from host.scanner_host import SCANNER_CONFIG_FILE, SCANNER_UNIT
from policy.graph import (
    INGRESS_RULE,
    KMS_KEY,
    METRIC_ALARM,
    SECURITY_GROUP_RULE,
    Res,
    arn_of,
    as_list,
    cloud_inits,
    enabled_services,
    host_boot,
    is_unknown,
    known_str,
    mapping,
    of_type,
    prop,
    registry_configs,
    registry_groups,
    scanner_groups,
    scanner_templates,
    user_data_text,
)
from policy.registry import STACK, Finding, rule
from policy.rules.hosts import no_launch_template

SQS_QUEUE = "aws:sqs/queue:Queue"
SQS_QUEUE_POLICY = "aws:sqs/queuePolicy:QueuePolicy"
EVENT_RULE = "aws:cloudwatch/eventRule:EventRule"
EVENT_TARGET = "aws:cloudwatch/eventTarget:EventTarget"
LAMBDA_FUNCTION = "aws:lambda/function:Function"
LAMBDA_PERMISSION = "aws:lambda/permission:Permission"
INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
FORWARDER_URL = f"https://127.0.0.1:{SCAN_EVENTS_PORT}{SCAN_EVENTS_PATH}"
RESCAN_ALL = {"kind": "rescan-all"}  # scanner/report.py RESCAN_ALL_BODY
DB_REPOSITORY_SUFFIX = "/mirror/trivy-db:2"
MAX_RECEIVE_COUNT = 100
_DAILY_CRON = re.compile(r"^cron\(\S+ \S+ [*?] \* [*?] \S+\)$")
_DAILY_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day)\)$")


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def _written(doc: Mapping[str, Any], path: str) -> dict[str, Any] | str:
    """The YAML file at `path` that cloud-init writes, or a str saying why it is missing or unreadable."""
    files = {f.get("path"): f.get("content") for f in as_list(doc.get("write_files")) if isinstance(f, dict)}
    if path not in files:
        return f"userData writes no {path}"
    try:
        loaded = yaml.safe_load(str(files[path]))
    except yaml.YAMLError as err:
        return f"{path} in userData is not YAML ({err})"
    return loaded if isinstance(loaded, dict) else f"{path} in userData is not a mapping"


def _daily(expression: Any) -> bool:
    """A schedule that fires at least once every day."""
    if not isinstance(expression, str):
        return False
    if _DAILY_CRON.match(expression):
        return True
    rate = _DAILY_RATE.match(expression)
    return rate is not None and (rate.group(2) != "day" or rate.group(1) == "1")


def _dead_letter_arns(queues: Sequence[Res]) -> set[str]:
    return {str(arn) for q in queues if (arn := mapping(_json(prop(q, "redrivePolicy"))).get("deadLetterTargetArn"))}


def scan_queues(resources: Sequence[Res]) -> list[Res]:
    """The queues scan messages go to: every SQS queue that is not another queue's dead-letter queue."""
    queues = of_type(resources, SQS_QUEUE)
    dead = _dead_letter_arns(queues)
    return [q for q in queues if arn_of(q) not in dead]


@rule(
    "scan-notifications",
    5,
    "Every registry host notifies the scan events forwarder on its loopback (an enabled https endpoint that keeps "
    "pushes) and runs it, configured with the stack's scan queue.",
)
def find_scan_notifications(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from no_launch_template(resources)
    queue_urls = {known_str(unwrap_url) for q in scan_queues(resources) if (unwrap_url := q.outputs.get("url"))}
    queue_urls |= {known_str(prop(q, "url")) for q in scan_queues(resources)}
    queue_urls.discard(None)
    for lt, config in registry_configs(resources):
        if isinstance(config, str):
            yield lt.name, config
            continue
        endpoints = [mapping(e) for e in as_list(mapping(config.get("notifications")).get("endpoints"))]
        forwarders = [e for e in endpoints if e.get("url") == FORWARDER_URL and not e.get("disabled")]
        if not forwarders:
            urls = [e.get("url") for e in endpoints]
            yield lt.name, f"registry config.yml notifications.endpoints urls are {urls}; expected {FORWARDER_URL!r}"
        for e in forwarders:
            if "push" in as_list(mapping(e.get("ignore")).get("actions")):
                yield lt.name, f"notifications endpoint {e.get('name')!r} ignores push events: nothing gets scanned"
    for lt, doc in cloud_inits(resources):
        if isinstance(doc, str):
            continue  # registry_configs reported it
        if SCAN_EVENTS_UNIT not in enabled_services(doc):
            yield lt.name, f"runcmd does not enable {SCAN_EVENTS_UNIT} (the forwarder the registry notifies)"
        events = _written(doc, SCAN_EVENTS_CONFIG_FILE)
        if isinstance(events, str):
            yield lt.name, events
        elif queue_urls and events.get("queue_url") not in queue_urls:
            yield (
                lt.name,
                f"{SCAN_EVENTS_CONFIG_FILE} queue_url is {events.get('queue_url')!r}, not a scan queue of the stack",
            )


@rule(
    "scan-queue",
    5,
    "The scan queue redrives to a dead-letter queue whose visible messages alarm, both are encrypted with a KMS "
    "key of the stack, and its policy refuses plain HTTP.",
)
def find_scan_queue(resources: Sequence[Res]) -> Iterator[Finding]:
    queues = of_type(resources, SQS_QUEUE)
    sources = scan_queues(resources)
    if not sources:
        yield STACK, f"no {SQS_QUEUE}: registry events reach no scan queue"
        return
    by_arn = {arn: q for q in queues if (arn := arn_of(q))}
    keys = {arn for k in of_type(resources, KMS_KEY) if (arn := arn_of(k))}
    alarmed = {
        str(prop(a, "dimensions", "QueueName"))
        for a in of_type(resources, METRIC_ALARM)
        if prop(a, "metricName") == "ApproximateNumberOfMessagesVisible" and as_list(prop(a, "alarmActions"))
    }
    # In a preview the redrive policies (they name the dead-letter queue's ARN) are not known yet: a queue
    # without one may then be the dead-letter queue itself.
    preview = any(is_unknown(prop(q, "redrivePolicy")) or arn_of(q) is None for q in queues)
    for queue in sources:
        redrive = prop(queue, "redrivePolicy")
        if is_unknown(redrive) or (preview and redrive is None):
            continue
        policy = mapping(_json(redrive))
        target, receives = policy.get("deadLetterTargetArn"), policy.get("maxReceiveCount")
        dlq = by_arn.get(str(target))
        if dlq is None and not is_unknown(target):
            yield queue.name, f"redrivePolicy is {redrive!r}: no dead-letter queue of the stack (poison messages loop)"
        if not isinstance(receives, int | float) or not 1 <= receives <= MAX_RECEIVE_COUNT:
            yield queue.name, f"redrivePolicy maxReceiveCount is {receives!r}, expected 1..{MAX_RECEIVE_COUNT}"
        if dlq is not None:
            name = known_str(prop(dlq, "name"))
            if name is not None and name not in alarmed:
                yield dlq.name, f"no alarm on ApproximateNumberOfMessagesVisible of the dead-letter queue {name!r}"
        policies = [
            p
            for p in of_type(resources, SQS_QUEUE_POLICY)
            if prop(p, "queueUrl") in (queue.id, prop(queue, "url"), queue.outputs.get("url"))
        ]
        statements = [mapping(s) for p in policies for s in as_list(mapping(_json(prop(p, "policy"))).get("Statement"))]
        tls_only = any(
            s.get("Effect") == "Deny"
            and str(mapping(mapping(s.get("Condition")).get("Bool")).get("aws:SecureTransport")).lower() == "false"
            for s in statements
        )
        if not tls_only and not any(is_unknown(prop(p, "policy")) for p in policies):
            yield queue.name, "no queue policy denies requests without aws:SecureTransport (TLS only)"
    for queue in queues:
        key = prop(queue, "kmsMasterKeyId")
        if is_unknown(key):
            continue
        if key not in keys:
            yield queue.name, f"kmsMasterKeyId is {key!r}, expected a KMS key of the stack (a customer-managed key)"


@rule(
    "scan-workers",
    5,
    "Scanner workers run in their own Auto Scaling group from their own launch template, instance profile and "
    "security group, none a registry host's, and registry hosts never run the scanner.",
)
def find_scan_workers(resources: Sequence[Res]) -> Iterator[Finding]:
    templates, groups = scanner_templates(resources), scanner_groups(resources)
    if not templates or not groups:
        yield STACK, "no scanner workers' launch template and Auto Scaling group (scans would run nowhere)"
        return
    hosts = [lt for lt, _, _ in host_boot(resources)]
    host_profiles = {p for lt in hosts if (p := known_str(prop(lt, "iamInstanceProfile", "arn")))}
    host_sgs = {
        sg
        for lt in hosts
        for nic in as_list(prop(lt, "networkInterfaces"))
        for sg in as_list(mapping(nic).get("securityGroups"))
    }
    profile_roles = {arn: prop(p, "role") for p in of_type(resources, INSTANCE_PROFILE) if (arn := arn_of(p))}
    host_roles = {profile_roles.get(p) for p in host_profiles} - {None}
    registry_asgs = {g.urn for g in registry_groups(resources)}
    for lt in templates:
        profile = known_str(prop(lt, "iamInstanceProfile", "arn"))
        if profile is not None and (profile in host_profiles or profile_roles.get(profile) in host_roles):
            yield lt.name, f"iamInstanceProfile {profile!r} is the registry hosts' (workers need their own role)"
        for nic in as_list(prop(lt, "networkInterfaces")):
            shared = [sg for sg in as_list(mapping(nic).get("securityGroups")) if sg in host_sgs and not is_unknown(sg)]
            if shared:
                yield lt.name, f"networkInterfaces securityGroups {shared} include the registry hosts' security group"
        raw = prop(lt, "userData")
        if isinstance(raw, str) and not is_unknown(raw):
            doc = mapping(yaml.safe_load(user_data_text(raw)))
            if SCANNER_UNIT not in enabled_services(doc):
                yield lt.name, f"runcmd does not enable {SCANNER_UNIT} (the scanner worker)"
        for sg_id in {
            sg for nic in as_list(prop(lt, "networkInterfaces")) for sg in as_list(mapping(nic).get("securityGroups"))
        }:
            inbound = [
                r.name
                for r in of_type(resources, INGRESS_RULE, SECURITY_GROUP_RULE)
                if prop(r, "securityGroupId") == sg_id and prop(r, "type") in (None, "ingress")
            ]
            if inbound and not is_unknown(sg_id):
                yield lt.name, f"the workers' security group admits {inbound}: workers need no inbound traffic"
    for group in groups:
        if group.urn in registry_asgs:
            yield group.name, "the scanner workers share the registry hosts' Auto Scaling group"
        if as_list(prop(group, "targetGroupArns")):
            yield group.name, "targetGroupArns is set: scanner workers serve no traffic for the load balancer"
    for lt, host_doc in cloud_inits(resources):
        if isinstance(host_doc, dict) and SCANNER_UNIT in enabled_services(host_doc):
            yield lt.name, f"runcmd enables {SCANNER_UNIT} on a registry host: scans run off the registry hosts"


@rule(
    "scan-nightly",
    5,
    "A schedule that fires every day sends the rescan-all message to the scan queue (new CVEs after the push).",
)
def find_scan_nightly(resources: Sequence[Res]) -> Iterator[Finding]:
    queue_arns = {arn for q in scan_queues(resources) if (arn := arn_of(q))}
    rules = {known_str(prop(r, "name")) or r.name: r for r in of_type(resources, EVENT_RULE)}
    found = False
    for target in of_type(resources, EVENT_TARGET):
        arn, rule_name = prop(target, "arn"), prop(target, "rule")
        if is_unknown(arn) or is_unknown(rule_name):
            found = True  # a preview: not judged
            continue
        if arn not in queue_arns or _json(prop(target, "input")) != RESCAN_ALL:
            continue
        schedule = prop(rules[rule_name], "scheduleExpression") if rule_name in rules else None
        if is_unknown(schedule) or _daily(schedule):
            found = True
        else:
            yield target.name, f"its rule's scheduleExpression is {schedule!r}: the rescan must run every day"
            found = True
    if not found:
        yield STACK, f"no EventBridge target sends {json.dumps(RESCAN_ALL)} to the scan queue on a schedule"


@rule(
    "scan-db-mirror",
    5,
    "A function in the VPC mirrors the Trivy database into the registry's mirror/trivy-db:2 every day, and the "
    "workers read the database from there.",
)
def find_scan_db_mirror(resources: Sequence[Res]) -> Iterator[Finding]:
    mirrors = [
        f
        for f in of_type(resources, LAMBDA_FUNCTION)
        if str(prop(f, "environment", "variables", "MIRROR_TARGET") or "").endswith(DB_REPOSITORY_SUFFIX)
    ]
    if not mirrors:
        yield STACK, f"no function mirrors the Trivy database to <registry>{DB_REPOSITORY_SUFFIX}"
        return
    rules = {known_str(prop(r, "name")) or r.name: r for r in of_type(resources, EVENT_RULE)}
    targets = of_type(resources, EVENT_TARGET)
    for function in mirrors:
        if not as_list(prop(function, "vpcConfig", "subnetIds")) and not is_unknown(prop(function, "vpcConfig")):
            yield function.name, "vpcConfig has no subnets: the mirror pushes to a registry reachable from the VPC only"
        arn = arn_of(function)
        scheduled = [rules.get(prop(t, "rule")) for t in targets if prop(t, "arn") == arn or is_unknown(prop(t, "arn"))]
        if not any(
            r is not None and (_daily(prop(r, "scheduleExpression")) or is_unknown(prop(r, "scheduleExpression")))
            for r in scheduled
        ):
            yield function.name, "no EventBridge rule runs the mirror every day"
    targets_wanted = {str(prop(f, "environment", "variables", "MIRROR_TARGET")) for f in mirrors}
    for lt in scanner_templates(resources):
        raw = prop(lt, "userData")
        if not isinstance(raw, str) or is_unknown(raw):
            continue
        config = _written(mapping(yaml.safe_load(user_data_text(raw))), SCANNER_CONFIG_FILE)
        if isinstance(config, str):
            yield lt.name, config
        elif config.get("db_repository") not in targets_wanted:
            yield (
                lt.name,
                (
                    f"{SCANNER_CONFIG_FILE} db_repository is {config.get('db_repository')!r}, not the mirror's "
                    f"target {sorted(targets_wanted)}"
                ),
            )
