"""Vulnerability scanning (practice 5): what every token-mode stack deploys so each pushed image is scanned.

Two components, because the registry hosts and the scanning need each other: the hosts send to the queue
(their user-data names it, their role may send), and the queue's policy names the hosts' role.

- `ScanQueue` (before the fleet): the scan queue and its dead-letter queue, the KMS key that encrypts them
  and the findings topic, and the bearer token the registry sends to the events forwarder on every host
  (generated per stack, kept in Secrets Manager; hosts read it at boot).
- `RegistryScanning` (after the fleet and the alarms): the queue's policy, the alarm on the dead-letter queue,
  the findings topic and its subscriptions, the scanner workers (their own Auto Scaling group, launch template,
  role and security group: not registry hosts), their scaling on the queue, the nightly rescan and the Trivy
  database mirror (a Lambda function on a daily schedule).

The flow: registry -> forwarder on the host (`python -m scanner events`, loopback, bearer-checked) -> queue ->
workers (`python -m scanner worker`: Trivy pulls the image through the registry with the read-only scanner robot,
with the database mirrored into the registry) -> reports in the registry bucket under
`registry-fleet/scan-reports/` -> findings at or above the threshold to the findings topic. A message that keeps
failing goes to the dead-letter queue after `maxReceiveCount` receives, and its alarm notifies the stack's alarm
topic.

Choices (see docs/scanning.md):
- A customer-managed KMS key, not SSE-SQS: its key policy lets only EventBridge (for the nightly rescan's rule,
  by source ARN) use it as a service, IAM grants it to the hosts' and workers' roles alone, every use is in
  CloudTrail, and the findings topic (SNS has no service-owned encryption) shares it.
- Step scaling on `ApproximateNumberOfMessagesVisible`, not target tracking: target tracking needs a
  per-instance backlog, which is undefined at zero instances, so it cannot start the first worker. A message
  waiting for a minute adds workers (one, or two above 50 waiting); nothing visible or in flight for 15 minutes
  sets the group to zero, so a scan in progress is never cut short by a scale-in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.errors import ComponentInputError
from components.fleet import hardened_host_template
from components.iam import assume_role_policy, policy_document
from components.stored_secret import stored_secret
from host.contract import DEBIAN_AMI_NAME, DEBIAN_AMI_OWNER, DEBIAN_SUITES
from host.scan_config import TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, WorkerConfig, render_worker_config
from host.scanner_host import (
    ROLE_TAG,
    SCANNER_CACHE_DIR,
    SCANNER_PASSWORD_FILE,
    SCANNER_WORKER_ROLE,
    TRIVY_BIN,
    ScannerBoot,
    render_scanner_host,
)
from host.user_data import encode_user_data
from scanner.report import REPORTS_PREFIX, RESCAN_ALL_BODY

SSM_CORE_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
LAMBDA_VPC_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
SQS = "AWS/SQS"
LAMBDA = "AWS/Lambda"
QUEUE_RETENTION_SECONDS = 4 * 24 * 3600  # a message not scanned in 4 days is dropped (the nightly rescan re-queues)
DLQ_RETENTION_SECONDS = 14 * 24 * 3600  # the most SQS keeps: time to look at a poison message
LONG_POLL_SECONDS = 20
EVENTS_TOKEN_LENGTH = 48  # alphanumerics, about 285 bits: the forwarder compares it in constant time
SCALE_OUT_STEPS = ((0, 50, 1), (50, None, 2))  # (lower, upper, workers added) over visible messages
SCALE_IN_IDLE_MINUTES = 15
WORKER_WARMUP_SECONDS = 300  # apt, the release, Trivy and its database before the first scan
MIRROR_SOURCE = "ghcr.io/aquasecurity/trivy-db:2"
MIRROR_RUNTIME = "python3.12"
MIRROR_HANDLER = "scanner.mirror.handler"
MIRROR_TIMEOUT_SECONDS = 900
MIRROR_MEMORY_MB = 1024
MIRROR_TMP_MB = 2048  # the database layer passes through /tmp
# What the mirror function ships of the scanner package: only these, whichever exist (the package's other
# modules need pydantic, which the Lambda runtime lacks). scanner/mirror.py is written by the scanner's runtime
# (issue 14): the archive is built from what the repository holds, so it works before and after it lands.
MIRROR_MODULES = ("__init__.py", "mirror.py")
SCANNER_DIR = Path(__file__).resolve().parent.parent / "scanner"


def mirror_archive_files(scanner_dir: Path | None = None) -> dict[str, Path]:
    """(name in the archive, file) of the scanner modules the mirror function ships, those that exist."""
    scanner_dir = scanner_dir or SCANNER_DIR
    return {f"scanner/{name}": scanner_dir / name for name in MIRROR_MODULES if (scanner_dir / name).is_file()}


def queue_url(region: str, account_id: str, name: str) -> str:
    return f"https://sqs.{region}.amazonaws.com/{account_id}/{name}"


def scanning_key_policy(account_id: str, region: str, rescan_rule_arn: str) -> str:
    """The scanning key: the account administers it (IAM grants its use to the hosts' and workers' roles);
    EventBridge may encrypt to the queue for the nightly rescan's rule only; CloudWatch may not (it needs
    no access: alarms read metrics)."""
    return policy_document(
        {
            "Sid": "AccountAdministers",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "EventBridgeSendsTheRescan",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account_id, "kms:ViaService": f"sqs.{region}.amazonaws.com"},
                "ArnEquals": {"aws:SourceArn": rescan_rule_arn},
            },
        },
    )


def scan_queue_policy(
    queue_arn: str, rescan_rule_arn: str, sender_role_arns: Sequence[str], worker_role_arn: str
) -> str:
    """Who may use the scan queue: the hosts' role (push events) and the workers' role (the rescan's scan
    messages) send, EventBridge sends for the nightly rule only, the workers receive; nobody else sends, and
    nothing over plain HTTP."""
    senders = sorted({*sender_role_arns, worker_role_arn})
    return policy_document(
        {
            "Sid": "RolesSend",
            "Effect": "Allow",
            "Principal": {"AWS": senders},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
        },
        {
            "Sid": "NightlyRescanSends",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": rescan_rule_arn}},
        },
        {
            "Sid": "WorkersReceive",
            "Effect": "Allow",
            "Principal": {"AWS": worker_role_arn},
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            ],
            "Resource": queue_arn,
        },
        {
            # Deny applies when every condition matches: a sender that is neither one of the roles nor the rule.
            "Sid": "OnlyTheseSend",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {
                "ArnNotEquals": {"aws:PrincipalArn": senders, "aws:SourceArn": rescan_rule_arn},
            },
        },
        deny_insecure_transport(queue_arn, "sqs:*"),
    )


def deny_insecure_transport(resource: str, action: str) -> dict[str, Any]:
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": action,
        "Resource": resource,
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def findings_topic_policy(topic_arn: str, worker_role_arn: str) -> str:
    """Only the workers publish findings, over TLS."""
    return policy_document(
        {
            "Sid": "WorkersPublish",
            "Effect": "Allow",
            "Principal": {"AWS": worker_role_arn},
            "Action": "sns:Publish",
            "Resource": topic_arn,
        },
        deny_insecure_transport(topic_arn, "sns:Publish"),
    )


def worker_policy(
    queue_arn: str,
    bucket_arn: str,
    registry_key_arn: str,
    scanning_key_arn: str,
    topic_arn: str,
    robot_secret_arn: str,
    artifact_key: str,
) -> str:
    """What a worker does and nothing else: the queue (receive, delete, extend, and send for the rescan), its
    reports in the registry bucket, the registry's tag links (the rescan lists them), the release it installs,
    the findings topic, the scanner robot's token; the keys that encrypt them."""
    return policy_document(
        {
            "Sid": "ScanQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "sqs:SendMessage",
            ],
            "Resource": queue_arn,
        },
        {
            "Sid": "Reports",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:GetObject"],
            "Resource": f"{bucket_arn}/{REPORTS_PREFIX}*",
        },
        {
            "Sid": "ListTags",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{REPOSITORIES_PREFIX}*", f"{REPORTS_PREFIX}*"]}},
        },
        {
            "Sid": "ReadTagsAndRelease",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [f"{bucket_arn}/{REPOSITORIES_PREFIX}*", f"{bucket_arn}/{artifact_key}"],
        },
        {
            "Sid": "Keys",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": [registry_key_arn, scanning_key_arn],
        },
        {"Sid": "Findings", "Effect": "Allow", "Action": "sns:Publish", "Resource": topic_arn},
        {
            "Sid": "ScannerRobotToken",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": robot_secret_arn,
        },
    )


# The registry's tag links (docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link): the
# rescan reads them to find every tagged digest, with no catalog right.
REPOSITORIES_PREFIX = "docker/registry/v2/repositories/"


def mirror_policy(secret_arn: str, registry_key_arn: str) -> str:
    """The mirror function reads its robot's credentials and nothing else (it pushes through the registry)."""
    return policy_document(
        {
            "Sid": "MirrorRobotCredentials",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret_arn,
        },
        {"Sid": "SecretKey", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": registry_key_arn},
    )


@dataclass
class ScanQueueArgs:
    name_prefix: str
    region: str
    account_id: pulumi.Input[str]
    visibility_timeout_seconds: int
    max_receive_count: int
    registry_kms_key_arn: pulumi.Input[str]  # the events token's secret is encrypted with the registry's key
    tags: dict[str, str]


class ScanQueue(pulumi.ComponentResource):
    """The scan queue, its dead-letter queue, the scanning key and the registry's bearer token for the forwarder."""

    queue_arn: pulumi.Output[str]
    queue_url: pulumi.Output[str]
    dlq_arn: pulumi.Output[str]
    queue_name: str
    dlq_name: str
    key_arn: pulumi.Output[str]
    rescan_rule_name: str
    events_token_secret_arn: pulumi.Output[str]
    events_token_version_id: pulumi.Output[str]

    def __init__(self, name: str, args: ScanQueueArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:ScanQueue", name, None, opts)
        if not 60 <= args.visibility_timeout_seconds <= 43200:
            raise ComponentInputError(
                f"ScanQueue: visibility_timeout_seconds is {args.visibility_timeout_seconds}; SQS allows 0..43200 "
                "and a scan needs at least a minute"
            )
        if not 1 <= args.max_receive_count <= 1000:
            raise ComponentInputError(f"ScanQueue: max_receive_count is {args.max_receive_count}; SQS allows 1..1000")
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags
        queue_name, dlq_name = f"{args.name_prefix}-scan", f"{args.name_prefix}-scan-dlq"
        self.queue_name = queue_name
        # Fixed physical names: the key policy names the rescan rule before it exists.
        self.rescan_rule_name = f"{args.name_prefix}-scan-nightly"
        rescan_rule_arn = pulumi.Output.from_input(args.account_id).apply(
            lambda account: f"arn:aws:events:{args.region}:{account}:rule/{self.rescan_rule_name}"
        )
        key = aws.kms.Key(
            f"{name}-key",
            description=f"{args.name_prefix}: the scan queue, its dead-letter queue and the findings topic",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.all(args.account_id, rescan_rule_arn).apply(
                lambda a: scanning_key_policy(a[0], args.region, a[1])
            ),
            tags=tags,
            opts=child,
        )
        encryption: Any = {"kms_master_key_id": key.arn, "kms_data_key_reuse_period_seconds": 300}
        dlq = aws.sqs.Queue(
            f"{name}-dlq",
            name=dlq_name,
            message_retention_seconds=DLQ_RETENTION_SECONDS,
            tags=tags,
            opts=child,
            **encryption,
        )
        queue = aws.sqs.Queue(
            f"{name}-queue",
            name=queue_name,
            visibility_timeout_seconds=args.visibility_timeout_seconds,
            message_retention_seconds=QUEUE_RETENTION_SECONDS,
            receive_wait_time_seconds=LONG_POLL_SECONDS,
            redrive_policy=dlq.arn.apply(
                lambda arn: json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": args.max_receive_count})
            ),
            tags=tags,
            opts=child,
            **encryption,
        )
        # Only the scan queue may move messages into the dead-letter queue.
        aws.sqs.RedriveAllowPolicy(
            f"{name}-dlq-redrive-allow",
            queue_url=dlq.url,
            redrive_allow_policy=queue.arn.apply(
                lambda arn: json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [arn]})
            ),
            opts=child,
        )
        aws.sqs.QueuePolicy(
            f"{name}-dlq-policy",
            queue_url=dlq.url,
            policy=dlq.arn.apply(lambda arn: policy_document(deny_insecure_transport(arn, "sqs:*"))),
            opts=child,
        )
        # The bearer the registry sends to the forwarder on its own host: per stack, never in user-data.
        token = random.RandomPassword(
            f"{name}-events-token-random", length=EVENTS_TOKEN_LENGTH, special=False, opts=child
        )
        secret, version = stored_secret(
            f"{name}-events-token",
            name_prefix=f"{args.name_prefix}/scan-events-token-",
            description=f"registry-fleet {args.name_prefix}: the bearer the registry sends to the scan events "
            "forwarder (read by registry hosts at boot)",
            value=token.result,
            kms_key_arn=args.registry_kms_key_arn,
            tags=tags,
            opts=child,
        )
        self.queue_arn = queue.arn
        self.queue_url = queue.url
        self.dlq_arn = dlq.arn
        self.dlq_name = dlq_name
        self.key_arn = key.arn
        self.rescan_rule_arn = rescan_rule_arn
        self.events_token_secret_arn = secret.arn
        self.events_token_version_id = version.version_id
        self.register_outputs({"queueUrl": queue.url, "queueArn": queue.arn, "dlqArn": dlq.arn})


@dataclass
class RegistryScanningArgs:
    name_prefix: str
    region: str
    account_id: pulumi.Input[str]
    queue: ScanQueue
    registry_host: str  # what Trivy pulls from and the mirror pushes to: the fleet's public name
    host_role_arn: pulumi.Input[str]  # the registry hosts' role: sends push events
    alarm_topic_arn: pulumi.Input[str]  # the stack's alarm topic (components/alarms.py)
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    lb_security_group_id: pulumi.Input[str]  # workers and the mirror reach the registry through the load balancer
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    registry_kms_key_arn: pulumi.Input[str]
    artifact_key: str
    artifact_sha256: str
    pip_index_url: str
    scanner_robot: str
    scanner_robot_secret_arn: pulumi.Input[str]
    mirror_robot: str
    mirror_robot_token: pulumi.Input[str]  # a secret: stored here as the mirror's JSON credentials
    findings_threshold: str
    findings_emails: Sequence[str]
    rescan_schedule: str
    mirror_schedule: str
    instance_type: str
    architecture: str  # "arm64" | "amd64"
    debian_release: int
    max_size: int
    root_volume_gib: int
    visibility_timeout_seconds: int
    trivy_version: str
    trivy_sha256: Mapping[str, str]  # per Debian architecture
    tags: dict[str, str] = field(default_factory=dict)


class RegistryScanning(pulumi.ComponentResource):
    findings_topic_arn: pulumi.Output[str]
    worker_asg_name: pulumi.Output[str]
    worker_role_arn: pulumi.Output[str]
    mirror_function_name: pulumi.Output[str]

    def __init__(self, name: str, args: RegistryScanningArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryScanning", name, None, opts)
        if args.debian_release not in DEBIAN_SUITES:
            raise ComponentInputError(
                f"RegistryScanning: debian_release {args.debian_release!r} is not one of {list(DEBIAN_SUITES)}"
            )
        if args.architecture not in args.trivy_sha256:
            raise ComponentInputError(
                f"RegistryScanning: no Trivy checksum for architecture {args.architecture!r} (trivy_sha256 has "
                f"{sorted(args.trivy_sha256)})"
            )
        if not 1 <= args.max_size <= 20:
            raise ComponentInputError(f"RegistryScanning: max_size is {args.max_size}; 1..20 workers")
        if not mirror_archive_files():
            raise ComponentInputError(f"RegistryScanning: {SCANNER_DIR} holds none of {MIRROR_MODULES}")
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags
        queue = args.queue

        # --- the findings topic: only the workers publish ---
        topic = aws.sns.Topic(
            f"{name}-findings",
            name=f"{args.name_prefix}-scan-findings",
            kms_master_key_id=queue.key_arn,
            tags=tags,
            opts=child,
        )
        for i, email in enumerate(args.findings_emails):
            aws.sns.TopicSubscription(
                f"{name}-findings-email-{i}", topic=topic.arn, protocol="email", endpoint=email, opts=child
            )

        # --- the workers: not registry hosts; no way in, HTTPS out ---
        sg = aws.ec2.SecurityGroup(
            f"{name}-worker-sg",
            vpc_id=args.vpc_id,
            description="scanner workers: no inbound; HTTPS out (the registry, AWS APIs, Trivy's release)",
            tags={**tags, "Name": f"{name}-worker-sg"},
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-worker-out-https",
            security_group_id=sg.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4="0.0.0.0/0",
            description="HTTPS to the registry's load balancer, AWS APIs, Debian mirrors and GitHub (Trivy)",
            tags=tags,
            opts=child,
        )
        role = aws.iam.Role(
            f"{name}-worker-role", assume_role_policy=assume_role_policy("ec2.amazonaws.com"), tags=tags, opts=child
        )
        aws.iam.RolePolicy(
            f"{name}-worker-policy",
            role=role.id,
            policy=pulumi.Output.all(
                queue.queue_arn,
                args.bucket_arn,
                args.registry_kms_key_arn,
                queue.key_arn,
                topic.arn,
                args.scanner_robot_secret_arn,
            ).apply(lambda a: worker_policy(a[0], a[1], a[2], a[3], a[4], a[5], args.artifact_key)),
            opts=child,
        )
        aws.iam.RolePolicyAttachment(f"{name}-worker-ssm", role=role.name, policy_arn=SSM_CORE_POLICY, opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-worker-profile", role=role.name, tags=tags, opts=child)

        # The queue: the hosts and the workers send, the nightly rule sends, the workers receive.
        aws.sqs.QueuePolicy(
            f"{name}-queue-policy",
            queue_url=queue.queue_url,
            policy=pulumi.Output.all(queue.queue_arn, queue.rescan_rule_arn, args.host_role_arn, role.arn).apply(
                lambda a: scan_queue_policy(a[0], a[1], [a[2]], a[3])
            ),
            opts=child,
        )
        aws.sns.TopicPolicy(
            f"{name}-findings-policy",
            arn=topic.arn,
            policy=pulumi.Output.all(topic.arn, role.arn).apply(lambda a: findings_topic_policy(a[0], a[1])),
            opts=child,
        )

        user_data = pulumi.Output.all(
            queue_url=queue.queue_url, bucket=args.bucket_name, topic=topic.arn, robot=args.scanner_robot_secret_arn
        ).apply(lambda v: encode_user_data(self._render(args, v)))
        image_id = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[DEBIAN_AMI_OWNER],
            filters=[
                {
                    "name": "name",
                    "values": [DEBIAN_AMI_NAME.format(release=args.debian_release, architecture=args.architecture)],
                },
                {"name": "architecture", "values": ["arm64" if args.architecture == "arm64" else "x86_64"]},
                {"name": "virtualization-type", "values": ["hvm"]},
            ],
            opts=pulumi.InvokeOutputOptions(parent=self),
        ).id
        template = aws.ec2.LaunchTemplate(
            f"{name}-worker-lt",
            name_prefix=f"{args.name_prefix}-scanner-",
            description="registry-fleet scanner worker",
            image_id=image_id,
            instance_type=args.instance_type,
            iam_instance_profile={"arn": profile.arn},
            **hardened_host_template(args.root_volume_gib, sg.id),
            user_data=user_data,
            update_default_version=True,
            tag_specifications=[
                {"resource_type": "instance", "tags": {**tags, "Name": f"{args.name_prefix}-scanner"}},
                {"resource_type": "volume", "tags": tags},
            ],
            tags={**tags, ROLE_TAG: SCANNER_WORKER_ROLE},  # not a registry host (policy/graph.py)
            opts=child,
        )
        group_tags: Any = [
            {"key": k, "value": v, "propagate_at_launch": True}
            for k, v in {**tags, ROLE_TAG: SCANNER_WORKER_ROLE}.items()
        ]
        launch_template: Any = {"id": template.id, "version": template.latest_version.apply(str)}
        refresh: Any = {"strategy": "Rolling", "preferences": {"min_healthy_percentage": 0}}
        metrics: Any = ["GroupInServiceInstances", "GroupDesiredCapacity"]
        # No desired_capacity: the scaling policies own it (a `pulumi up` must not reset a busy group to zero).
        group = aws.autoscaling.Group(
            f"{name}-worker-asg",
            name_prefix=f"{args.name_prefix}-scanner-",
            vpc_zone_identifiers=args.private_subnet_ids,
            min_size=0,
            max_size=args.max_size,
            health_check_type="EC2",
            health_check_grace_period=WORKER_WARMUP_SECONDS,
            default_instance_warmup=WORKER_WARMUP_SECONDS,
            launch_template=launch_template,
            instance_refresh=refresh,
            enabled_metrics=metrics,
            tags=group_tags,
            opts=child,
        )
        self._scaling(name, args, group, child)

        # Workers and the mirror reach the registry through its load balancer (its listener on 443).
        self.mirror_security_group_id = self._mirror(name, args, child)
        for label, source in (("workers", sg.id), ("mirror", self.mirror_security_group_id)):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-lb-in-{label}",
                security_group_id=args.lb_security_group_id,
                referenced_security_group_id=source,
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                description=f"scanner {label} pull (and the mirror pushes) through the registry's HTTPS listener",
                tags=tags,
                opts=child,
            )

        # --- the nightly rescan: the constant body the workers expand into one scan per tagged digest ---
        rescan = aws.cloudwatch.EventRule(
            f"{name}-rescan-rule",
            name=queue.rescan_rule_name,
            description="registry-fleet: queue every tagged digest for a scan with the day's database",
            schedule_expression=args.rescan_schedule,
            tags=tags,
            opts=child,
        )
        aws.cloudwatch.EventTarget(
            f"{name}-rescan-target",
            rule=rescan.name,
            arn=queue.queue_arn,
            input=RESCAN_ALL_BODY,
            opts=child,
        )

        # --- the dead-letter queue's alarm: a poison message, or a digest that cannot be scanned ---
        aws.cloudwatch.MetricAlarm(
            f"{name}-dlq-alarm",
            name=f"{args.name_prefix}-scan-dlq",
            alarm_description="A scan message failed maxReceiveCount times and waits in the dead-letter queue "
            "(a poison message, or an image that cannot be scanned): docs/scanning.md.",
            namespace=SQS,
            metric_name="ApproximateNumberOfMessagesVisible",
            dimensions={"QueueName": queue.dlq_name},
            statistic="Maximum",
            period=300,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            threshold=0,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[args.alarm_topic_arn],
            ok_actions=[args.alarm_topic_arn],
            tags=tags,
            opts=child,
        )

        self.findings_topic_arn = topic.arn
        self.worker_asg_name = group.name
        self.worker_role_arn = role.arn
        self.register_outputs(
            {"findingsTopicArn": topic.arn, "workerAsgName": group.name, "mirrorFunction": self.mirror_function_name}
        )

    def _scaling(
        self, name: str, args: RegistryScanningArgs, group: aws.autoscaling.Group, child: pulumi.ResourceOptions
    ) -> None:
        """Workers from zero when messages wait, back to zero when nothing is visible or in flight."""
        steps: Any = [
            {
                "metric_interval_lower_bound": str(lower),
                **({"metric_interval_upper_bound": str(upper)} if upper is not None else {}),
                "scaling_adjustment": added,
            }
            for lower, upper, added in SCALE_OUT_STEPS
        ]
        out = aws.autoscaling.Policy(
            f"{name}-scale-out",
            autoscaling_group_name=group.name,
            policy_type="StepScaling",
            adjustment_type="ChangeInCapacity",
            estimated_instance_warmup=WORKER_WARMUP_SECONDS,
            step_adjustments=steps,
            opts=child,
        )
        idle = aws.autoscaling.Policy(
            f"{name}-scale-in",
            autoscaling_group_name=group.name,
            policy_type="StepScaling",
            adjustment_type="ExactCapacity",
            step_adjustments=[{"metric_interval_upper_bound": "0", "scaling_adjustment": 0}],
            opts=child,
        )
        queue_name = args.queue.queue_name
        aws.cloudwatch.MetricAlarm(
            f"{name}-messages-waiting",
            name=f"{args.name_prefix}-scan-messages-waiting",
            alarm_description="Scan messages wait: add scanner workers.",
            namespace=SQS,
            metric_name="ApproximateNumberOfMessagesVisible",
            dimensions={"QueueName": queue_name},
            statistic="Maximum",
            period=60,
            evaluation_periods=1,
            threshold=0,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[out.arn],
            tags=args.tags,
            opts=child,
        )
        queries: Any = [
            {
                "id": f"m_{attribute.lower()}",
                "metric": {
                    "namespace": SQS,
                    "metric_name": f"ApproximateNumberOfMessages{attribute}",
                    "dimensions": {"QueueName": queue_name},
                    "period": 60,
                    "stat": "Maximum",
                },
                "return_data": False,
            }
            for attribute in ("Visible", "NotVisible")
        ]
        queries.append(
            {"id": "backlog", "expression": "m_visible + m_notvisible", "label": "backlog", "return_data": True}
        )
        aws.cloudwatch.MetricAlarm(
            f"{name}-queue-idle",
            name=f"{args.name_prefix}-scan-queue-idle",
            alarm_description=f"No scan message visible or in flight for {SCALE_IN_IDLE_MINUTES} minutes: no workers.",
            metric_queries=queries,
            evaluation_periods=SCALE_IN_IDLE_MINUTES,
            threshold=0,
            comparison_operator="LessThanOrEqualToThreshold",
            treat_missing_data="breaching",  # SQS sends no data for an empty, unused queue
            alarm_actions=[idle.arn],
            tags=args.tags,
            opts=child,
        )

    def _mirror(self, name: str, args: RegistryScanningArgs, child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """The daily Trivy database mirror: a Lambda function in the private subnets (egress through the NAT
        gateways to ghcr.io, and to the registry's load balancer), pushing with the mirror robot. Returns its
        security group's id."""
        tags = args.tags
        token: pulumi.Output[str] = pulumi.Output.from_input(args.mirror_robot_token)
        as_json: pulumi.Output[str] = token.apply(lambda t: json.dumps({"username": args.mirror_robot, "password": t}))
        credentials: pulumi.Output[str] = pulumi.Output.secret(as_json)
        secret, _ = stored_secret(
            f"{name}-mirror-credentials",
            name_prefix=f"{args.name_prefix}/scan-mirror-credentials-",
            description=f"registry-fleet {args.name_prefix}: the Trivy database mirror's robot (read by the mirror "
            "function)",
            value=credentials,
            kms_key_arn=args.registry_kms_key_arn,
            tags=tags,
            opts=child,
        )
        sg = aws.ec2.SecurityGroup(
            f"{name}-mirror-sg",
            vpc_id=args.vpc_id,
            description="scanner database mirror: no inbound; HTTPS out (ghcr.io, the registry, Secrets Manager)",
            tags={**tags, "Name": f"{name}-mirror-sg"},
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-mirror-out-https",
            security_group_id=sg.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4="0.0.0.0/0",
            description="HTTPS to ghcr.io, the registry's load balancer and Secrets Manager",
            tags=tags,
            opts=child,
        )
        role = aws.iam.Role(
            f"{name}-mirror-role", assume_role_policy=assume_role_policy("lambda.amazonaws.com"), tags=tags, opts=child
        )
        aws.iam.RolePolicyAttachment(f"{name}-mirror-vpc", role=role.name, policy_arn=LAMBDA_VPC_POLICY, opts=child)
        aws.iam.RolePolicy(
            f"{name}-mirror-policy",
            role=role.id,
            policy=pulumi.Output.all(secret.arn, args.registry_kms_key_arn).apply(lambda a: mirror_policy(a[0], a[1])),
            opts=child,
        )
        function_name = f"{args.name_prefix}-scan-db-mirror"
        logs = aws.cloudwatch.LogGroup(
            f"{name}-mirror-logs", name=f"/aws/lambda/{function_name}", retention_in_days=90, tags=tags, opts=child
        )
        code = pulumi.AssetArchive({n: pulumi.FileAsset(str(p)) for n, p in mirror_archive_files().items()})
        function = aws.lambda_.Function(
            f"{name}-mirror",
            name=function_name,
            description="registry-fleet: copy the Trivy database (ghcr.io) into the registry, daily",
            runtime=MIRROR_RUNTIME,
            handler=MIRROR_HANDLER,
            role=role.arn,
            code=code,
            timeout=MIRROR_TIMEOUT_SECONDS,
            memory_size=MIRROR_MEMORY_MB,
            ephemeral_storage={"size": MIRROR_TMP_MB},
            reserved_concurrent_executions=1,
            architectures=["arm64"],
            vpc_config={"subnet_ids": args.private_subnet_ids, "security_group_ids": [sg.id]},
            environment={
                "variables": {
                    "MIRROR_SOURCE": MIRROR_SOURCE,
                    "MIRROR_TARGET": f"{args.registry_host}/{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}",
                    "MIRROR_CREDENTIALS_SECRET_ARN": secret.arn,
                }
            },
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[logs]),
        )
        rule = aws.cloudwatch.EventRule(
            f"{name}-mirror-rule",
            name=f"{args.name_prefix}-scan-db-mirror",
            description="registry-fleet: mirror the Trivy database into the registry",
            schedule_expression=args.mirror_schedule,
            tags=tags,
            opts=child,
        )
        aws.cloudwatch.EventTarget(f"{name}-mirror-target", rule=rule.name, arn=function.arn, opts=child)
        aws.lambda_.Permission(
            f"{name}-mirror-invoke",
            action="lambda:InvokeFunction",
            function=function.name,
            principal="events.amazonaws.com",
            source_arn=rule.arn,
            opts=child,
        )
        aws.cloudwatch.MetricAlarm(
            f"{name}-mirror-alarm",
            name=f"{args.name_prefix}-scan-db-mirror-failed",
            alarm_description="The Trivy database mirror failed: workers scan with an older database "
            "(docs/scanning.md).",
            namespace=LAMBDA,
            metric_name="Errors",
            dimensions={"FunctionName": function_name},
            statistic="Sum",
            period=3600,
            evaluation_periods=1,
            threshold=0,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[args.alarm_topic_arn],
            ok_actions=[args.alarm_topic_arn],
            tags=tags,
            opts=child,
        )
        self.mirror_function_name = function.name
        return sg.id

    @staticmethod
    def _render(args: RegistryScanningArgs, v: dict[str, Any]) -> str:
        config = render_worker_config(
            WorkerConfig(
                queue_url=v["queue_url"],
                region=args.region,
                bucket=v["bucket"],
                registry=args.registry_host,
                username=args.scanner_robot,
                password_file=SCANNER_PASSWORD_FILE,
                trivy=TRIVY_BIN,
                findings_topic_arn=v["topic"],
                findings_threshold=args.findings_threshold,
                visibility_timeout_seconds=args.visibility_timeout_seconds,
                cache_dir=SCANNER_CACHE_DIR,
            )
        )
        boot = ScannerBoot(
            region=args.region,
            architecture=args.architecture,
            worker_config_yaml=config,
            robot_secret_arn=v["robot"],
            artifact_bucket=v["bucket"],
            artifact_key=args.artifact_key,
            artifact_sha256=args.artifact_sha256,
            pip_index_url=args.pip_index_url,
            trivy_version=args.trivy_version,
            trivy_sha256=args.trivy_sha256[args.architecture],
        )
        return render_scanner_host(boot).user_data
