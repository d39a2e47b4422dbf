"""BlobCdn: CloudFront in front of blob downloads (practice 9, CDN for blobs).

Creates a CloudFront distribution whose only origin is the registry bucket, reached through
origin access control (the bucket stays private; the origin path stays empty because the
registry redirects to the blob's full key), viewer HTTPS only, GET/HEAD only, and signed URLs
required through a trusted key group. The signing key is a pulumi-tls RSA 2048 key: its
public half goes to the key group; its private half (PKCS#1 PEM, which the registry's
`cloudfront` middleware requires) stays a Pulumi secret and reaches hosts via Secrets Manager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

# AWS managed cache policy "CachingOptimized": query strings (the URL signature) are left out
# of the cache key, so every signed URL for one blob shares one cached copy.
CACHING_OPTIMIZED_POLICY_ID = "658327ea-f89d-4fab-a63d-7e88639e58f6"
ORIGIN_ID = "registry-bucket"


@dataclass
class BlobCdnArgs:
    bucket_regional_domain_name: pulumi.Input[str]
    # Physical names must be unique in the account: include the stack.
    name_prefix: str
    price_class: str
    tags: dict[str, str]
    # Set to serve on blobs.<domain> with an ACM certificate from us-east-1.
    alias: str | None = None
    alias_certificate_arn: pulumi.Input[str] | None = None


class BlobCdn(pulumi.ComponentResource):
    distribution_arn: pulumi.Output[str]
    distribution_domain: pulumi.Output[str]
    base_url: pulumi.Output[str]
    key_pair_id: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]

    def __init__(self, name: str, args: BlobCdnArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:BlobCdn", name, None, opts)
        if (args.alias is None) != (args.alias_certificate_arn is None):
            raise ValueError("BlobCdn: alias and alias_certificate_arn go together")
        child = pulumi.ResourceOptions(parent=self)

        signing_key = tls.PrivateKey(f"{name}-signing-key", algorithm="RSA", rsa_bits=2048, opts=child)
        public_key = aws.cloudfront.PublicKey(
            f"{name}-public-key",
            encoded_key=signing_key.public_key_pem,
            comment=f"{args.name_prefix}: registry blob URL signer",
            opts=child,
        )
        key_group = aws.cloudfront.KeyGroup(
            f"{name}-key-group",
            name=f"{args.name_prefix}-blob-signers",
            items=[public_key.id],
            comment="keys whose signed URLs may download registry blobs",
            opts=child,
        )
        oac = aws.cloudfront.OriginAccessControl(
            f"{name}-oac",
            name=f"{args.name_prefix}-registry-bucket",
            description="CloudFront reads registry blobs, signing every request (SigV4)",
            origin_access_control_origin_type="s3",
            signing_behavior="always",
            signing_protocol="sigv4",
            opts=child,
        )
        viewer_certificate: Any
        if args.alias is not None:
            viewer_certificate = {
                "acm_certificate_arn": args.alias_certificate_arn,
                "ssl_support_method": "sni-only",
                "minimum_protocol_version": "TLSv1.2_2021",
            }
        else:
            # The default *.cloudfront.net certificate; CloudFront fixes its minimum protocol.
            viewer_certificate = {"cloudfront_default_certificate": True}
        distribution = aws.cloudfront.Distribution(
            f"{name}-distribution",
            enabled=True,
            comment=f"{args.name_prefix}: registry blob downloads (signed URLs only)",
            aliases=[args.alias] if args.alias else None,
            price_class=args.price_class,
            http_version="http2and3",
            is_ipv6_enabled=True,
            origins=[
                {
                    "origin_id": ORIGIN_ID,
                    "domain_name": args.bucket_regional_domain_name,
                    "origin_access_control_id": oac.id,
                }
            ],
            default_cache_behavior={
                "target_origin_id": ORIGIN_ID,
                "viewer_protocol_policy": "https-only",
                "allowed_methods": ["GET", "HEAD"],
                "cached_methods": ["GET", "HEAD"],
                "trusted_key_groups": [key_group.id],
                "cache_policy_id": CACHING_OPTIMIZED_POLICY_ID,
                # Layers are compressed already.
                "compress": False,
            },
            restrictions={"geo_restriction": {"restriction_type": "none"}},
            viewer_certificate=viewer_certificate,
            tags=args.tags,
            opts=child,
        )

        self.distribution_arn = distribution.arn
        self.distribution_domain = distribution.domain_name
        host = pulumi.Output.from_input(args.alias) if args.alias else distribution.domain_name
        self.base_url = host.apply(lambda h: f"https://{h}/")
        self.key_pair_id = public_key.id
        self.private_key_pem = pulumi.Output.secret(signing_key.private_key_pem)
        self.register_outputs(
            {"distributionDomain": distribution.domain_name, "baseUrl": self.base_url, "keyPairId": public_key.id}
        )
