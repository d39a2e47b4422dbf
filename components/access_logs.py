"""AccessLogs: who read and wrote the registry's storage, and who downloaded through the CDN.

Both go to the load balancer's access-log bucket (components/loadbalancer.py: SSE-S3, TLS-only, every
object expires after `access_log_days`), each under its own prefix, beside the ALB's own logs:

- `s3/registry/`: S3 server access logs of the registry bucket (every GET, PUT and DELETE, including
  the ones CloudFront makes through its origin access control and the ones a restore makes);
- `cloudfront/`: CloudFront standard logging (v2, through CloudWatch Logs delivery: the legacy logging
  needs bucket ACLs, which every bucket of the fleet turns off). The delivery source lives in us-east-1,
  as CloudFront's own logging does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

S3_LOG_PREFIX = "s3/registry/"
CDN_LOG_PREFIX = "cloudfront"


@dataclass
class AccessLogsArgs:
    prefix: str
    log_bucket: pulumi.Input[str]  # name
    log_bucket_arn: pulumi.Input[str]
    registry_bucket: pulumi.Input[str]  # name
    # With the CDN: the distribution, and a provider in us-east-1 for its delivery source.
    distribution_arn: pulumi.Input[str] | None = None
    us_east_1: aws.Provider | None = None
    tags: dict[str, str] = field(default_factory=dict)


class AccessLogs(pulumi.ComponentResource):
    def __init__(self, name: str, args: AccessLogsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:AccessLogs", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        aws.s3.BucketLogging(
            f"{name}-registry-bucket",
            bucket=args.registry_bucket,
            target_bucket=args.log_bucket,
            target_prefix=S3_LOG_PREFIX,
            opts=child,
        )
        if args.distribution_arn is not None and args.us_east_1 is not None:
            in_us_east_1 = pulumi.ResourceOptions(parent=self, provider=args.us_east_1)
            source = aws.cloudwatch.LogDeliverySource(
                f"{name}-cdn-source",
                name=f"{args.prefix}-cdn",
                log_type="ACCESS_LOGS",
                resource_arn=args.distribution_arn,
                tags=args.tags,
                opts=in_us_east_1,
            )
            destination = aws.cloudwatch.LogDeliveryDestination(
                f"{name}-cdn-destination",
                name=f"{args.prefix}-cdn-logs",
                output_format="parquet",
                delivery_destination_configuration={
                    "destination_resource_arn": pulumi.Output.concat(args.log_bucket_arn, "/", CDN_LOG_PREFIX)
                },
                tags=args.tags,
                opts=in_us_east_1,
            )
            aws.cloudwatch.LogDelivery(
                f"{name}-cdn-delivery",
                delivery_source_name=source.name,
                delivery_destination_arn=destination.arn,
                tags=args.tags,
                opts=in_us_east_1,
            )
        self.register_outputs({})
