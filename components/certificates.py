"""DnsValidatedCertificate: an ACM certificate proven by Cloudflare DNS (practice 2, TLS everywhere).

Requests the certificate, writes ACM's validation CNAME into the Cloudflare zone, and waits
for ACM to issue it. Listeners and distributions take :attr:`certificate_arn`, which resolves
only once the certificate is issued, so nothing ever serves with a pending certificate.
A certificate for a CloudFront alias must live in us-east-1: pass that region's provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_cloudflare as cloudflare


@dataclass
class DnsValidatedCertificateArgs:
    domain_name: str
    zone_id: str
    tags: dict[str, str]
    # The provider of the region the certificate must live in (None: the parent's).
    provider: pulumi.ProviderResource | None = None


class DnsValidatedCertificate(pulumi.ComponentResource):
    certificate_arn: pulumi.Output[str]

    def __init__(self, name: str, args: DnsValidatedCertificateArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:DnsValidatedCertificate", name, None, opts)
        aws_opts = pulumi.ResourceOptions(parent=self, provider=args.provider)
        cert = aws.acm.Certificate(
            f"{name}-cert",
            domain_name=args.domain_name,
            validation_method="DNS",
            key_algorithm="EC_prime256v1",
            tags=args.tags,
            opts=aws_opts,
        )

        def option(attr: str) -> pulumi.Output[str]:
            """One field of the validation record ACM asks for this domain (known after create)."""

            def pick(options: Sequence[aws.acm.outputs.CertificateDomainValidationOption]) -> str:
                for o in options:
                    if o.domain_name == args.domain_name:
                        return str(getattr(o, attr)).rstrip(".")
                raise ValueError(f"ACM gave no validation record for {args.domain_name}")

            return cert.domain_validation_options.apply(pick)

        record = cloudflare.DnsRecord(
            f"{name}-validation-record",
            zone_id=args.zone_id,
            name=option("resource_record_name"),
            type="CNAME",
            content=option("resource_record_value"),
            ttl=300,
            # ACM must see the record itself: a proxied record would answer with Cloudflare's edge.
            proxied=False,
            comment="ACM certificate validation (registry-fleet)",
            opts=pulumi.ResourceOptions(parent=self),
        )
        validation = aws.acm.CertificateValidation(
            f"{name}-validation",
            certificate_arn=cert.arn,
            validation_record_fqdns=[record.name],
            opts=aws_opts,
        )
        self.certificate_arn = validation.certificate_arn
        self.register_outputs({"certificateArn": validation.certificate_arn})
