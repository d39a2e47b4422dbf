"""RegistryAlarms: what pages the on-call engineer, and the dashboard they open (practice 8: stays up).

An SNS topic (encrypted with its own KMS key, which CloudWatch and AWS Backup may use to publish; the
AWS-managed `aws/sns` key would refuse them) with an email subscription per `alerts.emails` address,
and CloudWatch alarms that notify it when they fire and when they recover:

- the load balancer answering 5xx itself (no healthy host, a listener fault);
- per target group (the registry, and in token mode the token service): 5xx answered by the hosts,
  p99 response time, and any host failing its health check;
- fewer healthy registry hosts than the Auto Scaling group's minimum;
- S3 replication to the other region failing, or lagging more than 15 minutes;
- AWS Backup backup, copy and restore jobs failing (vault notifications on the primary vault: copy
  jobs to the replica vault are reported by their source);
- with the hosts' CloudWatch agent (components/host_metrics.py) in token mode: the token service deciding
  logins with its own process's counters because its DynamoDB lockout table cannot be reached, and the
  directory (LDAP/AD) not answering it.

A missing data point counts as fine (`notBreaching`): the load balancer publishes nothing when there is
no traffic. The dashboard shows the same signals, one widget each, then panels of what the agent collects:
tokens by outcome, the credential cache, the lockout table's errors, the registry's requests by status code
and in flight (summed over the hosts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from auth import metrics as token_metrics
from components.iam import policy_document
from host.cloudwatch_agent import REGISTRY_JOB, TOKEN_JOB

ELB = "AWS/ApplicationELB"
S3 = "AWS/S3"
PERIOD = 60
# Backup events that mean a copy of the registry is missing or cannot be restored.
BACKUP_FAILURE_EVENTS = ("BACKUP_JOB_FAILED", "COPY_JOB_FAILED", "RESTORE_JOB_FAILED", "S3_BACKUP_OBJECT_FAILED")
REPLICATION_LAG_SECONDS = 900


@dataclass(frozen=True)
class TargetGroupSignals:
    label: str  # "registry", "token"
    arn_suffix: pulumi.Input[str]
    p99_seconds: float  # an upload streams through one request: the registry's bound is generous


@dataclass
class RegistryAlarmsArgs:
    prefix: str
    account_id: pulumi.Input[str]
    region: str
    load_balancer_arn_suffix: pulumi.Input[str]
    target_groups: Sequence[TargetGroupSignals]
    min_hosts: int
    bucket: pulumi.Input[str]
    replica_bucket: pulumi.Input[str]
    replication_rule_id: str
    backup_vault_name: pulumi.Input[str]
    emails: Sequence[str]
    tags: dict[str, str] = field(default_factory=dict)
    # The namespace of the metrics the hosts' CloudWatch agent sends (components/host_metrics.py); None: none.
    host_metrics_namespace: str | None = None
    token_service: bool = False  # token mode: the token service's metrics are among them


@dataclass(frozen=True)
class Signal:
    """One alarm: a metric, how it is summed up, and when it breaches."""

    name: str
    description: str
    namespace: str
    metric: str
    dimensions: Mapping[str, pulumi.Input[str]]
    threshold: float
    comparison: str = "GreaterThanThreshold"
    statistic: str | None = "Sum"
    extended_statistic: str | None = None
    evaluation_periods: int = 5
    datapoints: int = 3
    period: int = PERIOD


def topic_key_policy(account_id: str) -> str:
    """The alarm topic's key: the account administers it; CloudWatch and AWS Backup may encrypt to it."""
    return policy_document(
        {
            "Sid": "AccountAdministers",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "ServicesPublishToTheAlarmTopic",
            "Effect": "Allow",
            "Principal": {"Service": ["cloudwatch.amazonaws.com", "backup.amazonaws.com"]},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
        },
    )


def topic_policy(topic_arn: str, account_id: str) -> str:
    """Who may publish to the topic: CloudWatch alarms and AWS Backup of this account, over TLS."""
    return policy_document(
        {
            "Sid": "ServicesPublish",
            "Effect": "Allow",
            "Principal": {"Service": ["cloudwatch.amazonaws.com", "backup.amazonaws.com"]},
            "Action": "sns:Publish",
            "Resource": topic_arn,
            "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
        },
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sns:Publish",
            "Resource": topic_arn,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
    )


def signals(args: RegistryAlarmsArgs) -> list[Signal]:
    """Every alarm of the stack, in the dashboard's order."""
    lb = {"LoadBalancer": args.load_balancer_arn_suffix}
    out = [
        Signal(
            "lb-5xx",
            "The load balancer answered 5xx itself (no healthy target, a listener fault): more than 10 a minute.",
            ELB,
            "HTTPCode_ELB_5XX_Count",
            lb,
            10,
        )
    ]
    for tg in args.target_groups:
        dims = {**lb, "TargetGroup": tg.arn_suffix}
        out += [
            Signal(
                f"{tg.label}-5xx",
                f"The {tg.label} hosts answered more than 10 5xx a minute (S3 unreachable: 503 UNAVAILABLE).",
                ELB,
                "HTTPCode_Target_5XX_Count",
                dims,
                10,
            ),
            Signal(
                f"{tg.label}-latency-p99",
                f"The {tg.label}'s p99 response time is above {tg.p99_seconds:g} s.",
                ELB,
                "TargetResponseTime",
                dims,
                tg.p99_seconds,
                statistic=None,
                extended_statistic="p99",
            ),
            Signal(
                f"{tg.label}-unhealthy-hosts",
                f"A host fails the {tg.label}'s health check (the Auto Scaling group replaces it).",
                ELB,
                "UnHealthyHostCount",
                dims,
                0,
                statistic="Maximum",
            ),
        ]
    registry = args.target_groups[0]
    out += [
        Signal(
            "registry-healthy-hosts",
            f"Fewer healthy registry hosts than the fleet's minimum ({args.min_hosts}).",
            ELB,
            "HealthyHostCount",
            {**lb, "TargetGroup": registry.arn_suffix},
            args.min_hosts,
            comparison="LessThanThreshold",
            statistic="Minimum",
        ),
        Signal(
            "replication-failed",
            "Objects failed to replicate to the replica bucket in the other region.",
            S3,
            "OperationsFailedReplication",
            _replication_dimensions(args),
            0,
            evaluation_periods=1,
            datapoints=1,
            period=300,
        ),
        Signal(
            "replication-latency",
            f"Replication to the other region lags more than {REPLICATION_LAG_SECONDS // 60} minutes.",
            S3,
            "ReplicationLatency",
            _replication_dimensions(args),
            REPLICATION_LAG_SECONDS,
            statistic="Maximum",
            evaluation_periods=3,
            datapoints=3,
            period=300,
        ),
    ]
    return out


def host_metric_signals(namespace: str) -> list[Signal]:
    """Alarms on what the hosts' agent collects from the token service (auth/metrics.py)."""
    job = {"job": TOKEN_JOB}
    return [
        Signal(
            "token-lockout-local",
            "The token service decided logins with one process's counters only: its DynamoDB lockout table "
            "cannot be reached, so a guesser's tries are not shared by the fleet.",
            namespace,
            token_metrics.LOCKOUT_LOCAL,
            job,
            0,
            evaluation_periods=5,
            datapoints=1,
        ),
        Signal(
            "token-directory-errors",
            "The directory (LDAP/AD) did not answer the token service: directory users get 503.",
            namespace,
            token_metrics.DIRECTORY_ERRORS,
            job,
            0,
        ),
    ]


def host_metric_panels(region: str, namespace: str, token_service: bool) -> list[dict[str, Any]]:
    """Dashboard panels (no alarm) of what the hosts' agent collects, summed over the hosts."""

    def panel(title: str, metrics: list[Any]) -> dict[str, Any]:
        props = {"title": title, "region": region, "metrics": metrics, "stat": "Sum", "period": PERIOD}
        return {"type": "metric", "width": 12, "height": 6, "properties": props}

    registry = [
        panel(
            "Registry requests by status code (all hosts)",
            [
                [
                    {
                        "expression": f'SEARCH(\'{{{namespace},job,code}} job="{REGISTRY_JOB}" '
                        f"MetricName=\"registry_http_requests_total\"', 'Sum', {PERIOD})",
                        "id": "codes",
                        "label": "",
                    }
                ]
            ],
        ),
        panel(
            "Registry requests in flight (all hosts)",
            [[namespace, "registry_http_in_flight_requests", "job", REGISTRY_JOB]],
        ),
    ]
    if not token_service:
        return registry
    token = [
        panel(
            "Tokens by outcome (all hosts)",
            [[namespace, token_metrics.REQUESTS, "job", TOKEN_JOB, "outcome", o] for o in token_metrics.OUTCOMES],
        ),
        panel(
            "Token logins: credential cache hits and checks",
            [[namespace, token_metrics.CACHE, "job", TOKEN_JOB, "result", r] for r in ("hit", "miss")],
        ),
        panel(
            "Lockout table (DynamoDB) errors",
            [[namespace, token_metrics.LOCKOUT_STORE_ERRORS, "job", TOKEN_JOB]],
        ),
    ]
    return token + registry


def _replication_dimensions(args: RegistryAlarmsArgs) -> dict[str, pulumi.Input[str]]:
    return {
        "SourceBucket": args.bucket,
        "DestinationBucket": args.replica_bucket,
        "RuleId": args.replication_rule_id,
    }


def dashboard_body(
    region: str,
    title: str,
    resolved: Sequence[tuple[Signal, Mapping[str, str]]],
    panels: Sequence[dict[str, Any]] = (),
) -> str:
    """One metric widget per signal, two per row, with the alarm threshold drawn; then the extra panels."""
    widgets: list[dict[str, Any]] = []
    for i, (signal, dims) in enumerate(resolved):
        stat = signal.extended_statistic or signal.statistic or "Sum"
        dimension_pairs = [part for pair in sorted(dims.items()) for part in pair]
        widgets.append(
            {
                "type": "metric",
                "x": (i % 2) * 12,
                "y": (i // 2) * 6,
                "width": 12,
                "height": 6,
                "properties": {
                    "title": signal.description,
                    "region": region,
                    "metrics": [[signal.namespace, signal.metric, *dimension_pairs]],
                    "stat": stat,
                    "period": signal.period,
                    "annotations": {"horizontal": [{"label": "alarm", "value": signal.threshold}]},
                },
            }
        )
    for panel in panels:
        i = len(widgets)
        widgets.append({**panel, "x": (i % 2) * 12, "y": (i // 2) * 6})
    return json.dumps({"start": "-PT6H", "periodOverride": "inherit", "widgets": widgets, "title": title})


class RegistryAlarms(pulumi.ComponentResource):
    topic_arn: pulumi.Output[str]
    alarm_names: list[pulumi.Output[str]]

    def __init__(self, name: str, args: RegistryAlarmsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryAlarms", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags
        key = aws.kms.Key(
            f"{name}-topic-key",
            description=f"{args.prefix}: the alarm topic's messages",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.from_input(args.account_id).apply(topic_key_policy),
            tags=tags,
            opts=child,
        )
        topic = aws.sns.Topic(
            f"{name}-topic", name=f"{args.prefix}-alarms", kms_master_key_id=key.arn, tags=tags, opts=child
        )
        aws.sns.TopicPolicy(
            f"{name}-topic-policy",
            arn=topic.arn,
            policy=pulumi.Output.all(topic.arn, args.account_id).apply(lambda a: topic_policy(a[0], a[1])),
            opts=child,
        )
        for i, email in enumerate(args.emails):
            aws.sns.TopicSubscription(
                f"{name}-email-{i}", topic=topic.arn, protocol="email", endpoint=email, opts=child
            )
        aws.backup.VaultNotifications(
            f"{name}-backup-notifications",
            backup_vault_name=args.backup_vault_name,
            sns_topic_arn=topic.arn,
            backup_vault_events=list(BACKUP_FAILURE_EVENTS),
            opts=child,
        )
        all_signals = signals(args)
        panels: list[dict[str, Any]] = []
        if args.host_metrics_namespace is not None:
            if args.token_service:
                all_signals += host_metric_signals(args.host_metrics_namespace)
            panels = host_metric_panels(args.region, args.host_metrics_namespace, args.token_service)
        self.alarm_names = []
        for signal in all_signals:
            alarm = aws.cloudwatch.MetricAlarm(
                f"{name}-{signal.name}",
                name=f"{args.prefix}-{signal.name}",
                alarm_description=signal.description,
                namespace=signal.namespace,
                metric_name=signal.metric,
                dimensions=dict(signal.dimensions),
                statistic=signal.statistic,
                extended_statistic=signal.extended_statistic,
                period=signal.period,
                evaluation_periods=signal.evaluation_periods,
                datapoints_to_alarm=signal.datapoints,
                threshold=signal.threshold,
                comparison_operator=signal.comparison,
                treat_missing_data="notBreaching",
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                tags=tags,
                opts=child,
            )
            self.alarm_names.append(alarm.name)
        dims = [pulumi.Output.all(**dict(s.dimensions)) for s in all_signals]
        aws.cloudwatch.Dashboard(
            f"{name}-dashboard",
            dashboard_name=f"{args.prefix}-registry",
            dashboard_body=pulumi.Output.all(*dims).apply(
                lambda resolved: dashboard_body(
                    args.region, f"registry-fleet {args.prefix}", list(zip(all_signals, resolved, strict=True)), panels
                )
            ),
            opts=child,
        )
        self.topic_arn = topic.arn
        self.register_outputs({"topicArn": topic.arn})
