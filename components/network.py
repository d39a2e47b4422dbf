"""RegistryNetwork: the private network the registry lives in (practice 7, private registry).

Creates a VPC with one public and one private subnet per zone (zones looked up, never
hard-coded), an internet gateway for the public side, NAT gateways (one per zone, or one
for the whole VPC in cheap stacks) so hosts in private subnets reach package mirrors and
AWS APIs, an S3 gateway endpoint whose policy admits only the registry's buckets and the
AWS-owned buckets the SSM agent needs, in token mode a DynamoDB gateway endpoint whose policy admits
only the token service's lockout table (hosts then reach it without the NAT), and VPC flow logs to an
encrypted log group.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_aws as aws

from auth.shared_lockout import TABLE_ACTIONS
from components.errors import ComponentInputError
from components.iam import assume_role_policy, policy_document

# `opt-in-status` of a region's own Availability Zones (Local and Wavelength Zones are opted in).
ZONE_OPT_IN_NOT_REQUIRED = "opt-in-not-required"
# Buckets AWS owns that hosts must reach through the S3 gateway endpoint: the SSM agent
# downloads itself, its updates and its documents from these (see the SSM VPC endpoint docs).
SSM_BUCKET_PATTERNS = (
    "aws-ssm-{region}",
    "aws-windows-downloads-{region}",
    "amazon-ssm-{region}",
    "amazon-ssm-packages-{region}",
    "{region}-birdwatcher-prod",
    "aws-ssm-distributor-file-{region}",
    "aws-ssm-document-attachments-{region}",
    "patch-baseline-snapshot-{region}",
)


def subnet_plan(cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """Public and private subnet ranges: the VPC split in 16, public first, private next."""
    net = ipaddress.IPv4Network(cidr)
    blocks = [str(b) for b in net.subnets(prefixlen_diff=4)]
    return blocks[:az_count], blocks[8 : 8 + az_count]


def s3_endpoint_policy(region: str, registry_bucket_arns: list[str]) -> str:
    ssm = [f"arn:aws:s3:::{p.format(region=region)}/*" for p in SSM_BUCKET_PATTERNS]
    objects = [f"{arn}/*" for arn in registry_bucket_arns]
    return policy_document(
        {
            "Sid": "RegistryBuckets",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": registry_bucket_arns + objects,
        },
        {
            "Sid": "SsmAgentBuckets",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": ssm,
        },
    )


def dynamodb_endpoint_policy(table_arns: list[str]) -> str:
    return policy_document(
        {
            "Sid": "LockoutTable",
            "Effect": "Allow",
            "Principal": "*",
            "Action": list(TABLE_ACTIONS),
            "Resource": table_arns,
        }
    )


@dataclass
class RegistryNetworkArgs:
    region: str
    cidr: str
    az_count: int
    nat_gateways: Literal["per-az", "single"]
    # The registry buckets the S3 endpoint admits (primary; the replica is in another region).
    registry_bucket_arns: Sequence[pulumi.Input[str]]
    tags: dict[str, str]
    flow_log_retention_days: int = 365
    # Token mode: the lockout table(s) the DynamoDB gateway endpoint admits; empty: no endpoint.
    dynamodb_table_arns: Sequence[pulumi.Input[str]] = ()


class RegistryNetwork(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    private_cidrs: list[str]

    def __init__(self, name: str, args: RegistryNetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryNetwork", name, None, opts)
        tags = args.tags
        child = pulumi.ResourceOptions(parent=self)
        public_cidrs, private_cidrs = subnet_plan(args.cidr, args.az_count)
        self.private_cidrs = private_cidrs

        # The region's own zones only. Local and Wavelength Zones (e.g. us-east-1-atl-2a) are opt-in metro
        # extensions with fewer services, and their names sort before the region's zones: unfiltered, an
        # account that opted in would get its subnets there.
        zones = aws.get_availability_zones_output(
            state="available",
            filters=[{"name": "opt-in-status", "values": [ZONE_OPT_IN_NOT_REQUIRED]}],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )

        def zone(index: int) -> pulumi.Output[str]:
            def pick(names: list[str]) -> str:
                if index >= len(names):
                    raise ComponentInputError(
                        f"network.azCount is {args.az_count} but region {args.region} offers "
                        f"{len(names)} zones ({', '.join(names)}): lower network.azCount"
                    )
                return names[index]

            return zones.names.apply(pick)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={**tags, "Name": f"{name}-vpc"},
            opts=child,
        )
        # The default security group of a VPC allows all traffic between its members: empty it.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, tags=tags, opts=child)

        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags={**tags, "Name": f"{name}-public"},
            opts=child,
        )

        public_subnets = []
        private_subnets = []
        for i in range(args.az_count):
            public = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[i],
                availability_zone=zone(i),
                map_public_ip_on_launch=False,
                tags={**tags, "Name": f"{name}-public-{i}", "tier": "public"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}-rta", subnet_id=public.id, route_table_id=public_rt.id, opts=child
            )
            public_subnets.append(public)
            private = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=private_cidrs[i],
                availability_zone=zone(i),
                map_public_ip_on_launch=False,
                tags={**tags, "Name": f"{name}-private-{i}", "tier": "private"},
                opts=child,
            )
            private_subnets.append(private)

        nat_count = args.az_count if args.nat_gateways == "per-az" else 1
        nats = []
        for i in range(nat_count):
            eip = aws.ec2.Eip(f"{name}-nat-{i}-eip", domain="vpc", tags=tags, opts=child)
            nats.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{i}",
                    allocation_id=eip.id,
                    subnet_id=public_subnets[i].id,
                    tags={**tags, "Name": f"{name}-nat-{i}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
            )

        private_rts = []
        for i, private in enumerate(private_subnets):
            rt = aws.ec2.RouteTable(
                f"{name}-private-{i}-rt",
                vpc_id=vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nats[i % nat_count].id}],
                tags={**tags, "Name": f"{name}-private-{i}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}-rta", subnet_id=private.id, route_table_id=rt.id, opts=child
            )
            private_rts.append(rt)

        def gateway_endpoint(service: str, policy: pulumi.Input[str]) -> None:
            """A gateway endpoint for `service` (s3, dynamodb) on every private route table, with `policy`."""
            aws.ec2.VpcEndpoint(
                f"{name}-{service}-endpoint",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Gateway",
                route_table_ids=[rt.id for rt in private_rts],
                policy=policy,
                tags=tags,
                opts=child,
            )

        gateway_endpoint(
            "s3",
            pulumi.Output.all(*args.registry_bucket_arns).apply(
                lambda arns: s3_endpoint_policy(args.region, list(arns))
            ),
        )
        if args.dynamodb_table_arns:
            gateway_endpoint(
                "dynamodb",
                pulumi.Output.all(*args.dynamodb_table_arns).apply(lambda arns: dynamodb_endpoint_policy(list(arns))),
            )

        flow_log_group = aws.cloudwatch.LogGroup(
            f"{name}-flow-logs",
            retention_in_days=args.flow_log_retention_days,
            tags=tags,
            opts=child,
        )
        flow_role = aws.iam.Role(
            f"{name}-flow-logs-role",
            assume_role_policy=assume_role_policy("vpc-flow-logs.amazonaws.com"),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-flow-logs-policy",
            role=flow_role.id,
            policy=flow_log_group.arn.apply(
                lambda arn: policy_document(
                    {
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                        "Resource": [arn, f"{arn}:*"],
                    }
                )
            ),
            opts=child,
        )
        aws.ec2.FlowLog(
            f"{name}-flow-log",
            vpc_id=vpc.id,
            traffic_type="ALL",
            log_destination_type="cloud-watch-logs",
            log_destination=flow_log_group.arn,
            iam_role_arn=flow_role.arn,
            tags=tags,
            opts=child,
        )

        self.vpc_id = vpc.id
        self.public_subnet_ids = [s.id for s in public_subnets]
        self.private_subnet_ids = [s.id for s in private_subnets]
        self.register_outputs(
            {
                "vpcId": vpc.id,
                "publicSubnetIds": self.public_subnet_ids,
                "privateSubnetIds": self.private_subnet_ids,
            }
        )
