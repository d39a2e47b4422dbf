"""Practice 2, TLS everywhere: HTTPS listeners with a TLS 1.3 policy, HTTPS to the hosts and to CDN viewers,
TLS-only buckets."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from policy.graph import (
    BUCKET,
    BUCKET_POLICY,
    DISTRIBUTION,
    LISTENERS,
    LOAD_BALANCERS,
    TARGET_GROUPS,
    UNKNOWN_VALUES,
    Res,
    as_list,
    cache_behaviors,
    everyone,
    is_unknown,
    mapping,
    of_type,
    prop,
    satellites,
    statements,
)
from policy.registry import STACK, Finding, rule

TLS13_POLICY_PREFIX = "ELBSecurityPolicy-TLS13-"
MIN_CLOUDFRONT_TLS = (1, 2, 2021)  # TLSv1.2_2021


def _redirects_to_https(action: Any) -> bool:
    redirect = mapping(mapping(action).get("redirect"))
    return (
        mapping(action).get("type") == "redirect"
        and redirect.get("protocol") == "HTTPS"
        and redirect.get("statusCode") == "HTTP_301"
    )


@rule(
    "tls-listeners",
    2,
    "Load balancer listeners are HTTPS with an ELBSecurityPolicy-TLS13-* policy, or only redirect to HTTPS "
    "with HTTP_301.",
)
def find_tls_listeners(resources: Sequence[Res]) -> Iterator[Finding]:
    listeners = of_type(resources, *LISTENERS)
    if of_type(resources, *LOAD_BALANCERS) and not any(
        prop(li, "protocol") in ("HTTPS", *UNKNOWN_VALUES) for li in listeners
    ):
        yield STACK, "no load balancer listener has protocol 'HTTPS'"
    for li in listeners:
        protocol = prop(li, "protocol")
        if is_unknown(protocol):
            continue
        if protocol in ("HTTPS", "TLS"):
            policy = prop(li, "sslPolicy")
            if not is_unknown(policy) and not str(policy).startswith(TLS13_POLICY_PREFIX):
                yield li.name, f"sslPolicy is {policy!r}, expected an {TLS13_POLICY_PREFIX}* policy (TLS 1.2+ with 1.3)"
            continue
        actions = prop(li, "defaultActions")
        if is_unknown(actions):
            continue
        if not as_list(actions) or not all(_redirects_to_https(a) for a in as_list(actions)):
            shown = [
                (
                    mapping(a).get("type"),
                    *(mapping(mapping(a).get("redirect")).get(k) for k in ("protocol", "statusCode")),
                )
                for a in as_list(actions)
            ]
            yield (
                li.name,
                f"protocol {protocol!r} (port {prop(li, 'port')}) has defaultActions (type, protocol, statusCode) "
                f"{shown}; a plain listener may only redirect to HTTPS with HTTP_301",
            )


@rule("tls-to-hosts", 2, "Target groups reach the hosts over HTTPS and health-check them over HTTPS.")
def find_tls_to_hosts(resources: Sequence[Res]) -> Iterator[Finding]:
    for tg in of_type(resources, *TARGET_GROUPS):
        if prop(tg, "targetType") == "lambda":
            continue
        protocol = prop(tg, "protocol")
        if not is_unknown(protocol) and protocol != "HTTPS":
            yield tg.name, f"protocol is {protocol!r}, expected 'HTTPS' (the load balancer re-encrypts to the hosts)"
        check = prop(tg, "healthCheck", "protocol")
        if not is_unknown(check) and check != "HTTPS":
            yield tg.name, f"healthCheck.protocol is {check!r}, expected 'HTTPS'"


def _tls_version(value: Any) -> tuple[int, int, int] | None:
    match = re.fullmatch(r"TLSv(\d+)\.(\d+)_(\d{4})", str(value))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


@rule(
    "tls-cdn-viewers",
    2,
    "CloudFront serves viewers https-only on an alias with an ACM certificate and TLSv1.2_2021 or newer, never on "
    "the default *.cloudfront.net certificate (which accepts TLS 1.0).",
)
def find_tls_cdn_viewers(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        for where, behavior in cache_behaviors(d):
            policy = behavior.get("viewerProtocolPolicy")
            if not is_unknown(policy) and policy != "https-only":
                yield d.name, f"{where}.viewerProtocolPolicy is {policy!r}, expected 'https-only'"
        certificate = prop(d, "viewerCertificate")
        if is_unknown(certificate):
            continue
        certificate = mapping(certificate)
        # AWS: on the default certificate CloudFront uses TLSv1 as the minimum, whatever the setting says.
        if certificate.get("cloudfrontDefaultCertificate") is True or not certificate.get("acmCertificateArn"):
            yield (
                d.name,
                "viewerCertificate is the default *.cloudfront.net certificate "
                f"(cloudfrontDefaultCertificate {certificate.get('cloudfrontDefaultCertificate')!r}, no "
                "acmCertificateArn), which accepts TLS 1.0: serve the CDN on an alias with an ACM certificate",
            )
            continue
        version = certificate.get("minimumProtocolVersion")
        parsed = _tls_version(version)
        if not is_unknown(version) and (parsed is None or parsed < MIN_CLOUDFRONT_TLS):
            yield d.name, f"viewerCertificate.minimumProtocolVersion is {version!r}, expected TLSv1.2_2021 or newer"


def denies_plain_http(stmt: Mapping[str, Any]) -> bool:
    if stmt.get("Effect") != "Deny" or not everyone(stmt.get("Principal")):
        return False
    bool_block = mapping(mapping(stmt.get("Condition")).get("Bool"))
    secure = next((v for k, v in bool_block.items() if k.lower() == "aws:securetransport"), None)
    return [str(v).lower() for v in as_list(secure)] == ["false"]


@rule("tls-only-buckets", 2, "Every S3 bucket has a bucket policy that denies requests with aws:SecureTransport false.")
def find_tls_only_buckets(resources: Sequence[Res]) -> Iterator[Finding]:
    for bucket in of_type(resources, BUCKET):
        policies = satellites(resources, bucket, BUCKET_POLICY)
        if not policies:
            yield bucket.name, f"no {BUCKET_POLICY} names this bucket (none denies aws:SecureTransport false)"
            continue
        docs = [statements(prop(p, "policy")) for p in policies]
        if any(doc is None or any(denies_plain_http(s) for s in doc) for doc in docs):
            continue  # a policy denies plain HTTP (or is not known yet)
        yield (
            policies[0].name,
            "policy has no Deny for Principal '*' with Condition Bool aws:SecureTransport 'false'",
        )
