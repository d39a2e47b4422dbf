"""HostMetrics: the CloudWatch agent on every registry host, collecting the registry's and the token
service's Prometheus metrics (practice 8: a fleet you can see; issue 16).

What it creates, all in the stack's region:

- the log group the agent writes its embedded-metric-format events to (`/registry-fleet/<prefix>/prometheus`,
  30 days), from which CloudWatch makes the metrics in the namespace `registry-fleet/<prefix>`;
- the agent's config in an SSM parameter (`AmazonCloudWatch-<prefix>-registry`: the AWS naming its managed
  policy reads; here the host role may read this one parameter only), rendered by host/cloudwatch_agent.py;
- a Command document that writes the Prometheus scrape config on the host, installs the agent with
  `AWS-ConfigureAWSPackage` (Distributor: no binary fetched from the internet in user-data; the S3 gateway
  endpoint already admits the Distributor's bucket) and configures it with `AmazonCloudWatch-ManageAgent`
  from the parameter, in that order;
- a State Manager association running it on every instance of the fleet's Auto Scaling group (the tag
  `aws:autoscaling:groupName`), as each registers with Systems Manager. The document carries the digest of
  the agent config, so a config change is a new document version, which the association names: updating
  it runs it again on every host;
- the least privilege the agent needs on the hosts' role: write to that log group, read that parameter. It
  collects nothing but Prometheus scrapes, so it needs no `cloudwatch:PutMetricData` and no EC2 reads (AWS's
  CloudWatchAgentServerPolicy grants those and every `AmazonCloudWatch-*` parameter).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.iam import policy_document
from host.cloudwatch_agent import LOG_RETENTION_DAYS, agent_config, install_document, scrape_targets

# What the agent calls: CloudWatch Logs on its own log group (its streams), SSM on its own parameter.
AGENT_LOG_ACTIONS = ("logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents")
AGENT_SSM_ACTIONS = ("ssm:GetParameter",)


def metric_namespace(prefix: str) -> str:
    return f"registry-fleet/{prefix}"


def agent_policy(log_group_arn: str, parameter_arn: str) -> str:
    return policy_document(
        {
            "Sid": "AgentWritesItsLogGroup",
            "Effect": "Allow",
            "Action": list(AGENT_LOG_ACTIONS),
            "Resource": [log_group_arn, f"{log_group_arn}:*"],
        },
        {"Sid": "AgentReadsItsConfig", "Effect": "Allow", "Action": list(AGENT_SSM_ACTIONS), "Resource": parameter_arn},
    )


@dataclass
class HostMetricsArgs:
    prefix: str
    role_name: pulumi.Input[str]  # the hosts' instance role
    asg_name: pulumi.Input[str]  # the fleet's Auto Scaling group: its instances run the agent
    token_service: bool  # token mode: the token service's metrics too
    tags: dict[str, str] = field(default_factory=dict)


class HostMetrics(pulumi.ComponentResource):
    namespace: str
    log_group_name: pulumi.Output[str]

    def __init__(self, name: str, args: HostMetricsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:HostMetrics", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.namespace = metric_namespace(args.prefix)
        targets = scrape_targets(args.token_service)
        logs = aws.cloudwatch.LogGroup(
            f"{name}-prometheus",
            name=f"/registry-fleet/{args.prefix}/prometheus",
            retention_in_days=LOG_RETENTION_DAYS,
            tags=args.tags,
            opts=child,
        )
        config = json.dumps(agent_config(f"/registry-fleet/{args.prefix}/prometheus", self.namespace, targets))
        parameter = aws.ssm.Parameter(
            f"{name}-agent-config",
            name=f"AmazonCloudWatch-{args.prefix}-registry",
            description="registry-fleet: the CloudWatch agent's config on the registry hosts",
            type="String",  # no secret in it: loopback targets, a log group, a namespace
            value=config,
            tags=args.tags,
            opts=child,
        )
        content = install_document(f"AmazonCloudWatch-{args.prefix}-registry", targets)
        content["description"] += f" (agent config sha256 {hashlib.sha256(config.encode()).hexdigest()[:16]})"
        document = aws.ssm.Document(
            f"{name}-agent-document",
            name=f"{args.prefix}-cloudwatch-agent",
            document_type="Command",
            document_format="JSON",
            target_type="/AWS::EC2::Instance",
            content=json.dumps(content, indent=2),
            tags=args.tags,
            opts=child,
        )
        aws.ssm.Association(
            f"{name}-agent",
            association_name=f"{args.prefix}-cloudwatch-agent",
            name=document.name,
            document_version=document.latest_version,
            targets=[{"key": "tag:aws:autoscaling:groupName", "values": [args.asg_name]}],
            max_concurrency="50%",  # a config change restarts half the fleet's agents at a time
            max_errors="100%",  # one host failing must not stop the others getting the agent
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[parameter, logs]),
        )
        aws.iam.RolePolicy(
            f"{name}-agent-policy",
            role=args.role_name,
            policy=pulumi.Output.all(logs.arn, parameter.arn).apply(lambda a: agent_policy(a[0], a[1])),
            opts=child,
        )
        self.log_group_name = logs.name
        self.register_outputs({"logGroupName": logs.name, "namespace": self.namespace})
