"""RegistryLoadBalancer: the only way in (practices 2, TLS everywhere, and 7, private registry).

Creates an Application Load Balancer (internal or internet-facing per settings) with
deletion protection, access logs, invalid-header dropping; a security group that admits only
the allowed client ranges on 443 (and 80, which only redirects); an HTTPS listener with the
validated ACM certificate and a TLS 1.2+/1.3 security policy; HTTP answering 301 to HTTPS; an HTTPS target
group health-checking the registry's `/` (200, or 503 while S3 is unreachable: alive either way, so an S3
outage replaces no host; no answer fails the check).
In token mode (practice 3) a second HTTPS target group reaches the token service on the same hosts,
health-checked on its `/healthz`, and a listener rule sends the realm path (`/auth`) there: clients
get tokens from the registry's own host name, so one certificate and one allow-list cover both.
On a token-mode stack that protects namespaces (practice 6), a third HTTPS target group reaches the
signature gate on the same hosts (health `/healthz`), and per protected namespace listener rules send the
manifest GET/HEAD requests there (`gate_routes`); uploads and blob downloads keep their path.
The hosts' security group (in the fleet) admits only this load balancer's group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.access_logs import CDN_LOG_PREFIX, S3_LOG_PREFIX
from components.errors import ComponentInputError
from components.iam import allow_service, policy_document
from components.private_bucket import EVERY_OBJECT, SSE_S3, harden_bucket, tls_only_statement
from host.contract import (
    GATE_HEALTH_PATH,
    GATE_PORT,
    REGISTRY_HEALTH_CODES,
    REGISTRY_PORT,
    TOKEN_HEALTH_PATH,
    TOKEN_PATH,
    TOKEN_SERVICE_PORT,
)

# Elastic Load Balancing's log-writer accounts for regions opened before August 2022; newer
# regions use the logdelivery.elasticloadbalancing.amazonaws.com service principal (both are
# granted, so the policy works in every region).
ELB_LOG_ACCOUNTS = {
    "us-east-1": "127311923021",
    "us-east-2": "033677994240",
    "us-west-1": "027434742980",
    "us-west-2": "797873946194",
    "af-south-1": "098369216593",
    "ap-east-1": "754344448648",
    "ap-south-1": "718504428378",
    "ap-northeast-1": "582318560864",
    "ap-northeast-2": "600734575887",
    "ap-northeast-3": "383597477331",
    "ap-southeast-1": "114774131450",
    "ap-southeast-2": "783225319266",
    "ca-central-1": "985666609251",
    "eu-central-1": "054676820928",
    "eu-west-1": "156460612806",
    "eu-west-2": "652711504416",
    "eu-west-3": "009996457667",
    "eu-south-1": "635631232127",
    "eu-north-1": "897822967062",
    "me-south-1": "076674570225",
    "sa-east-1": "507241528517",
}
ACCESS_LOG_PREFIX = "alb"
# The gate's listener rules come after the token route (10): the odd-path rule, then per protected namespace
# one rule at gate_rule_priority(ns), derived from the namespace alone, so protecting or releasing one
# namespace never moves another's rule (two rules may not hold one priority, even for a moment).
GATE_ODD_PATHS_PRIORITY = 20
GATE_RULE_PRIORITY = 100
GATE_RULE_SLOTS = 40000
# Paths under /v2/ that the registry's router would decode or clean into another path: a percent-encoded
# character (`/v2/%62ase/app/manifests/1` is base/app's manifest to the registry), an empty segment or a
# dot segment. The load balancer matches the path as sent, so these go to the gate, which reads them as the
# registry would.
ODD_PATH_REGEX = r"^/v2(/.*)?(%|//|/\.\.?(/|$))"
ALB_PATH_MAX = 128  # characters of one path pattern or regex
GATE_METHODS = ("GET", "HEAD")  # pulls only: a push (PUT) or delete keeps its path to the registry


@dataclass(frozen=True)
class GateRoute:
    """One listener rule sending a protected namespace's manifest reads to the gate."""

    suffix: str  # of the rule's logical name: f"{lb}-gate-{suffix}" (the namespace, verbatim, or odd-paths)
    priority: int
    path_values: tuple[str, ...] = ()  # ALB path patterns (`*` matches anything, `/` included)
    path_regex: tuple[str, ...] = ()  # ALB regex path patterns


def gate_rule_priority(namespace: str) -> int:
    """The priority of a namespace's manifest rule: in GATE_RULE_PRIORITY..GATE_RULE_PRIORITY +
    GATE_RULE_SLOTS, from the namespace's SHA-256."""
    return GATE_RULE_PRIORITY + int(hashlib.sha256(namespace.encode()).hexdigest()[:8], 16) % GATE_RULE_SLOTS


def gate_routes(namespaces: Sequence[str]) -> list[GateRoute]:
    """The listener rules that send manifest reads of the protected `namespaces` to the gate: first one rule
    for odd paths (ODD_PATH_REGEX: any `/v2/` path the registry would decode or clean into another one,
    whatever namespace it names), then per namespace (sorted) one rule for its manifest paths,
    `/v2/<ns>/*/manifests/*` (a repository under it) and `/v2/<ns>/manifests/*` (the namespace itself as a
    repository).

    Why the odd-path rule: the load balancer matches the path as the client sent it, but the registry
    decodes it before routing, so `/v2/<ns>/app/%6Danifests/1` or `/v2/<ns>%2Fapp/manifests/1` would reach
    the registry's manifest handler past the namespace's rule. The gate reads such a path as the registry
    does and answers it (a protected manifest read is checked; anything else is forwarded unchanged).
    Each rule has GET and HEAD (2 match evaluations) and at most two path values with at most three
    wildcards: within the ALB limits (3 evaluations per condition, 5 per rule, 5 wildcards per rule).
    """
    if not namespaces:
        return []
    routes = [GateRoute("odd-paths", GATE_ODD_PATHS_PRIORITY, path_regex=(ODD_PATH_REGEX,))]
    taken: dict[int, str] = {}
    for ns in sorted(namespaces):
        priority = gate_rule_priority(ns)
        if priority in taken:
            raise ComponentInputError(
                f"RegistryLoadBalancer: namespaces {taken[priority]!r} and {ns!r} map to the same listener rule "
                f"priority {priority}; protect a parent namespace of one of them instead"
            )
        taken[priority] = ns
        if len(f"/v2/{ns}/*/manifests/*") > ALB_PATH_MAX:
            raise ComponentInputError(
                f"RegistryLoadBalancer: the namespace {ns!r} is too long for an ALB path pattern (at most "
                f"{ALB_PATH_MAX} characters with /v2/ and /*/manifests/*); protect a shorter parent namespace"
            )
        routes.append(
            GateRoute(f"{ns}-manifests", priority, path_values=(f"/v2/{ns}/*/manifests/*", f"/v2/{ns}/manifests/*"))
        )
    return routes


def access_log_bucket_policy(bucket_arn: str, account_id: str, region: str, logged_bucket_arn: str) -> str:
    """Who may write the access logs: the ALB (its own prefix), S3 server access logging of the registry
    bucket and CloudFront's log delivery (components/access_logs.py), each for this account only."""
    target = f"{bucket_arn}/{ACCESS_LOG_PREFIX}/AWSLogs/{account_id}/*"
    this_account = {"StringEquals": {"aws:SourceAccount": account_id}}
    statements: list[dict[str, Any]] = [
        tls_only_statement(bucket_arn),
        allow_service("LogDeliveryWrites", "logdelivery.elasticloadbalancing.amazonaws.com", "s3:PutObject", target),
        allow_service(
            "S3ServerAccessLogs", "logging.s3.amazonaws.com", "s3:PutObject", f"{bucket_arn}/{S3_LOG_PREFIX}*"
        )
        | {"Condition": this_account | {"ArnLike": {"aws:SourceArn": logged_bucket_arn}}},
        allow_service(
            "CdnLogDelivery", "delivery.logs.amazonaws.com", "s3:PutObject", f"{bucket_arn}/{CDN_LOG_PREFIX}/*"
        )
        | {
            "Condition": this_account
            | {"ArnLike": {"aws:SourceArn": f"arn:aws:logs:us-east-1:{account_id}:delivery-source:*"}}
        },
    ]
    if region in ELB_LOG_ACCOUNTS:
        statements.append(
            {
                "Sid": "LegacyRegionLogDeliveryWrites",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ELB_LOG_ACCOUNTS[region]}:root"},
                "Action": "s3:PutObject",
                "Resource": target,
            }
        )
    return policy_document(*statements)


@dataclass
class RegistryLoadBalancerArgs:
    region: str
    account_id: pulumi.Input[str]
    vpc_id: pulumi.Input[str]
    internal: bool
    # Internet-facing: the public subnets; internal: the private ones.
    subnet_ids: Sequence[pulumi.Input[str]]
    allowed_cidrs: list[str]
    # Hosts live here: the load balancer may only talk to these ranges, on the registry port.
    host_cidrs: list[str]
    certificate_arn: pulumi.Input[str]
    # The registry bucket: its S3 server access logs land in the access-log bucket too.
    logged_bucket_arn: pulumi.Input[str]
    tls_policy: str
    tags: dict[str, str]
    deletion_protection: bool = True
    # Token mode: route the realm path to the token service beside the registry on every host.
    token_service: bool = False
    # Token mode: the protected namespaces, whose manifest reads the signature gate on every host answers
    # (empty: no gate).
    gate_namespaces: Sequence[str] = ()
    access_log_days: int = 90
    # Large layer uploads stream through one request: keep idle connections open long enough.
    idle_timeout_seconds: int = 300


class RegistryLoadBalancer(pulumi.ComponentResource):
    security_group_id: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]
    # Token mode only; None in htpasswd mode.
    token_target_group_arn: pulumi.Output[str] | None
    # With protected namespaces only; None otherwise.
    gate_target_group_arn: pulumi.Output[str] | None
    dns_name: pulumi.Output[str]
    zone_id: pulumi.Output[str]
    arn: pulumi.Output[str]
    # The access-log bucket (the ALB's, S3's and CloudFront's logs).
    log_bucket: pulumi.Output[str]
    log_bucket_arn: pulumi.Output[str]
    # CloudWatch's dimensions: `app/<name>/<id>` and `targetgroup/<name>/<id>`.
    arn_suffix: pulumi.Output[str]
    target_group_arn_suffix: pulumi.Output[str]
    token_target_group_arn_suffix: pulumi.Output[str] | None
    gate_target_group_arn_suffix: pulumi.Output[str] | None

    def __init__(self, name: str, args: RegistryLoadBalancerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryLoadBalancer", name, None, opts)
        if args.gate_namespaces and not args.token_service:
            raise ComponentInputError(
                "RegistryLoadBalancer: gate_namespaces is set without token_service: the gate runs in token mode only"
            )
        tags = args.tags
        child = pulumi.ResourceOptions(parent=self)

        logs = aws.s3.Bucket(f"{name}-access-logs", tags=tags, opts=child)
        logs_hardened = harden_bucket(
            f"{name}-access-logs",
            logs,
            # ALB log delivery supports SSE-S3 only, not SSE-KMS.
            encryption=SSE_S3,
            lifecycle_rules=[
                {
                    "id": "expire-access-logs",
                    "status": "Enabled",
                    "filter": EVERY_OBJECT,
                    "expiration": {"days": args.access_log_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 1},
                }
            ],
            policy=pulumi.Output.all(logs.arn, args.account_id, args.logged_bucket_arn).apply(
                lambda a: access_log_bucket_policy(a[0], a[1], args.region, a[2])
            ),
            opts=child,
        )
        logs_policy = logs_hardened.policy
        assert logs_policy is not None  # given above

        sg = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args.vpc_id,
            description="registry load balancer: clients in, registry hosts out",
            tags={**tags, "Name": f"{name}-sg"},
            opts=child,
        )
        for i, cidr in enumerate(args.allowed_cidrs):
            for port in (443, 80):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-in-{port}-{i}",
                    security_group_id=sg.id,
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    description=f"clients ({cidr}) on {port}" + (" (redirected to 443)" if port == 80 else ""),
                    tags=tags,
                    cidr_ipv4=cidr,
                    opts=child,
                )
        # Out to the hosts only, on the port of each service the listener forwards to.
        outbound = [("out-hosts", REGISTRY_PORT, "registry hosts (HTTPS)")]
        if args.token_service:
            outbound.append(("out-hosts-token", TOKEN_SERVICE_PORT, "token service on the registry hosts (HTTPS)"))
        if args.gate_namespaces:
            outbound.append(("out-hosts-gate", GATE_PORT, "signature gate on the registry hosts (HTTPS)"))
        for rule, port, description in outbound:
            for i, cidr in enumerate(args.host_cidrs):
                aws.vpc.SecurityGroupEgressRule(
                    f"{name}-{rule}-{i}",
                    security_group_id=sg.id,
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    cidr_ipv4=cidr,
                    description=description,
                    tags=tags,
                    opts=child,
                )

        lb = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=args.internal,
            subnets=args.subnet_ids,
            security_groups=[sg.id],
            enable_deletion_protection=args.deletion_protection,
            drop_invalid_header_fields=True,
            enable_http2=True,
            idle_timeout=args.idle_timeout_seconds,
            access_logs={"bucket": logs.bucket, "prefix": ACCESS_LOG_PREFIX, "enabled": True},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[logs_policy]),
        )

        def https_target_group(
            resource_name: str, port: int, health_path: str, deregistration_delay: int, matcher: str = "200"
        ) -> aws.lb.TargetGroup:
            """Hosts behind HTTPS on `port`, healthy while `health_path` answers a status in `matcher`."""
            return aws.lb.TargetGroup(
                resource_name,
                vpc_id=args.vpc_id,
                port=port,
                protocol="HTTPS",
                target_type="instance",
                deregistration_delay=deregistration_delay,
                health_check={
                    "enabled": True,
                    "protocol": "HTTPS",
                    "path": health_path,
                    "port": "traffic-port",
                    "matcher": matcher,
                    "interval": 15,
                    "timeout": 5,
                    "healthy_threshold": 2,
                    "unhealthy_threshold": 3,
                },
                tags=tags,
                opts=child,
            )

        # The registry's draintimeout is 60s: let in-flight requests finish before deregistering.
        tg = https_target_group(
            f"{name}-tg", REGISTRY_PORT, "/", deregistration_delay=60, matcher=REGISTRY_HEALTH_CODES
        )
        https = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=lb.arn,
            port=443,
            protocol="HTTPS",
            ssl_policy=args.tls_policy,
            certificate_arn=args.certificate_arn,
            default_actions=[{"type": "forward", "target_group_arn": tg.arn}],
            tags=tags,
            opts=child,
        )
        aws.lb.Listener(
            f"{name}-http",
            load_balancer_arn=lb.arn,
            port=80,
            protocol="HTTP",
            default_actions=[
                {
                    "type": "redirect",
                    "redirect": {"protocol": "HTTPS", "port": "443", "status_code": "HTTP_301"},
                }
            ],
            tags=tags,
            opts=child,
        )

        self.token_target_group_arn = None
        self.token_target_group_arn_suffix = None
        if args.token_service:
            # A token request is one short round trip.
            token_tg = https_target_group(
                f"{name}-token-tg", TOKEN_SERVICE_PORT, TOKEN_HEALTH_PATH, deregistration_delay=15
            )
            aws.lb.ListenerRule(
                f"{name}-token-route",
                listener_arn=https.arn,
                priority=10,
                # Exactly the realm path (the query string is not part of it): every other path goes
                # to the registry, so the service's health path is not reachable from outside.
                conditions=[{"path_pattern": {"values": [TOKEN_PATH]}}],
                actions=[{"type": "forward", "target_group_arn": token_tg.arn}],
                tags=tags,
                opts=child,
            )
            self.token_target_group_arn = token_tg.arn
            self.token_target_group_arn_suffix = token_tg.arn_suffix

        self.gate_target_group_arn = None
        self.gate_target_group_arn_suffix = None
        if args.gate_namespaces:
            # A manifest read: one short round trip (the gate caches verification results).
            gate_tg = https_target_group(f"{name}-gate-tg", GATE_PORT, GATE_HEALTH_PATH, deregistration_delay=15)
            for route in gate_routes(args.gate_namespaces):
                path: Any = (
                    {"values": list(route.path_values)}
                    if route.path_values
                    else {"regex_values": list(route.path_regex)}
                )
                aws.lb.ListenerRule(
                    f"{name}-gate-{route.suffix}",
                    listener_arn=https.arn,
                    priority=route.priority,
                    conditions=[
                        {"http_request_method": {"values": list(GATE_METHODS)}},
                        {"path_pattern": path},
                    ],
                    actions=[{"type": "forward", "target_group_arn": gate_tg.arn}],
                    tags=tags,
                    opts=child,
                )
            self.gate_target_group_arn = gate_tg.arn
            self.gate_target_group_arn_suffix = gate_tg.arn_suffix

        self.security_group_id = sg.id
        self.target_group_arn = tg.arn
        self.dns_name = lb.dns_name
        self.zone_id = lb.zone_id
        self.arn = lb.arn
        self.log_bucket = logs.bucket
        self.log_bucket_arn = logs.arn
        self.arn_suffix = lb.arn_suffix
        self.target_group_arn_suffix = tg.arn_suffix
        self.register_outputs(
            {
                "dnsName": lb.dns_name,
                "targetGroupArn": tg.arn,
                "tokenTargetGroupArn": self.token_target_group_arn,
                "gateTargetGroupArn": self.gate_target_group_arn,
                "securityGroupId": sg.id,
            }
        )
