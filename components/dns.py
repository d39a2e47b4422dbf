"""RegistryDns: the names users type, in Cloudflare (practices 2 and 9).

`registry.<domain>` points at the load balancer and, when set, `blobs.<domain>` at the CDN.
Neither is proxied by Cloudflare: layer uploads are single requests of up to gigabytes, which
Cloudflare's proxy caps (100 MB on most plans) and would also terminate TLS outside AWS; blob
downloads already go through CloudFront, and a second CDN would break its signed URLs.
(ACM validation records live with their certificate, in components/certificates.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare

TTL_SECONDS = 300


@dataclass
class RegistryDnsArgs:
    zone_id: str
    registry_host: str
    load_balancer_dns_name: pulumi.Input[str]
    cdn_alias_host: str | None = None
    cdn_domain: pulumi.Input[str] | None = None


class RegistryDns(pulumi.ComponentResource):
    def __init__(self, name: str, args: RegistryDnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryDns", name, None, opts)
        if (args.cdn_alias_host is None) != (args.cdn_domain is None):
            raise ValueError("RegistryDns: cdn_alias_host and cdn_domain go together")
        child = pulumi.ResourceOptions(parent=self)
        cloudflare.DnsRecord(
            f"{name}-registry",
            zone_id=args.zone_id,
            name=args.registry_host,
            type="CNAME",
            content=args.load_balancer_dns_name,
            ttl=TTL_SECONDS,
            proxied=False,
            comment="registry-fleet: registry load balancer (not proxied: large uploads)",
            opts=child,
        )
        if args.cdn_alias_host is not None:
            cloudflare.DnsRecord(
                f"{name}-blobs",
                zone_id=args.zone_id,
                name=args.cdn_alias_host,
                type="CNAME",
                content=args.cdn_domain,
                ttl=TTL_SECONDS,
                proxied=False,
                comment="registry-fleet: CloudFront blob downloads (not proxied: signed URLs)",
                opts=child,
            )
        self.register_outputs({})
