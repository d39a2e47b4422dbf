"""The ten practices of DESIGN.md as policy rules: plain functions over a stack's resources.

Two callers run the same rules: the CrossGuard pack (`policy/crossguard.py`, which turns each
`PolicyResource` into a :class:`Res`) and `python -m fleet audit` (which builds `Res` from the
recording engine). This module therefore imports neither pulumi nor pulumi_policy.

Every rule sees the whole stack. Rules look at what both engines see: input properties, types,
names, URNs, parents and providers. Physical ids and outputs (`Res.id`, `Res.outputs`; in CrossGuard
the props carry the outputs) are used only to link resources (a bucket policy to its bucket by the
bucket's name, a backup selection to the bucket's ARN) and only when known; when a value is not
known yet (a CrossGuard preview of new resources sends an "unknown" sentinel) the rule degrades:
it skips that check or accepts an unknown link, and never reports a violation it cannot prove.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import fnmatch
import functools
import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import yaml

PRACTICES: tuple[tuple[int, str], ...] = (
    (1, "dedicated registry hosts"),
    (2, "TLS everywhere"),
    (3, "role-based access"),
    (4, "uploads only by trusted users"),
    (5, "vulnerability scans"),
    (6, "signed images"),
    (7, "private registry"),
    (8, "replicated across servers"),
    (9, "CDN for blobs"),
    (10, "regular backups"),
)

STACK = "(stack)"  # Violation.resource when no single resource is at fault

# --- values as the engines send them ----------------------------------------------------------

SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE_SIG = "1b47061264138c4ac30d75fd1eb44270"
# The engine's "not known during preview" sentinels (one per kind of value; same as pulumi_policy.proxy).
UNKNOWN_VALUES = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # boolean
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # number
        "04da6b54-80e4-46f7-96ec-b56ff0331ba9",  # string
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # array
        "030794c1-ac77-496b-92df-f27374a8bd58",  # asset
        "e48ece36-62e2-4504-bad9-02848725956a",  # archive
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # object
    }
)


@dataclass(frozen=True)
class Res:
    """What a rule sees of one resource."""

    type: str  # e.g. "aws:s3/bucket:Bucket"
    name: str  # logical name
    urn: str
    props: Mapping[str, Any]  # input properties, camelCase; secrets may be wrapped (see is_secret)
    parent: str | None = None  # parent URN
    provider: str | None = None  # provider URN (None: the default provider)
    id: str = ""  # physical id when known
    outputs: Mapping[str, Any] = field(default_factory=dict)  # known outputs (recording engine); CrossGuard: empty


@dataclass(frozen=True)
class Violation:
    rule: str  # rule id
    resource: str  # logical name of the offending resource ("(stack)" if none)
    message: str  # names the property checked and the bad value


@dataclass(frozen=True)
class Rule:
    id: str  # kebab-case, stable (waivers name it)
    practice: int  # 1..10
    description: str  # one sentence: the rule
    check: Callable[[Sequence[Res]], list[Violation]]  # every rule sees the whole stack
    mandatory: bool = True


def is_secret(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get(SECRET_SIG) == SECRET_VALUE_SIG


def unwrap(value: Any) -> Any:
    """`value` with every secret wrapper removed."""
    if is_secret(value):
        return unwrap(value.get("value"))
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


def is_unknown(value: Any) -> bool:
    return isinstance(value, str) and value in UNKNOWN_VALUES


def prop(res: Res, *path: str) -> Any:
    """The unwrapped property at `path`: None when a step is missing, the sentinel when a step is unknown."""
    node: Any = res.props
    for key in path:
        node = unwrap(node)
        if is_unknown(node):
            return node
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return unwrap(node)


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def of_type(resources: Iterable[Res], *types: str) -> list[Res]:
    return [r for r in resources if r.type in types]


def known_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value and not is_unknown(value) else None


# --- resource types ---------------------------------------------------------------------------

BUCKET = "aws:s3/bucket:Bucket"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
REPLICATION = "aws:s3/bucketReplicationConfig:BucketReplicationConfig"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
LOAD_BALANCERS = ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer")
LISTENERS = ("aws:lb/listener:Listener", "aws:alb/listener:Listener")
LISTENER_RULES = ("aws:lb/listenerRule:ListenerRule", "aws:alb/listenerRule:ListenerRule")
TARGET_GROUPS = ("aws:lb/targetGroup:TargetGroup", "aws:alb/targetGroup:TargetGroup")
DISTRIBUTION = "aws:cloudfront/distribution:Distribution"
KMS_KEY = "aws:kms/key:Key"
BACKUP_PLAN = "aws:backup/plan:Plan"
BACKUP_SELECTION = "aws:backup/selection:Selection"
BACKUP_VAULT = "aws:backup/vault:Vault"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
FLEET_COMPONENT = "registry-fleet:index:RegistryFleet"
LOAD_BALANCER_COMPONENT = "registry-fleet:index:RegistryLoadBalancer"
WAIVERS = "registry-fleet:index:PolicyWaivers"

# What a registry host may install and enable: the registry and the token service beside it (token
# mode; python3-venv holds its hash-pinned wheels), what boots them (the AWS CLI reads their secrets,
# curl fetches the SSM agent), and the SSM agent (operators use Session Manager, not SSH).
HOST_PACKAGES = frozenset({"docker-registry", "awscli", "ca-certificates", "curl", "python3-venv"})
HOST_SERVICES = frozenset({"docker-registry", "registry-token", "amazon-ssm-agent"})
REGISTRY_CONFIG_PATH = "/etc/docker/registry/config.yml"
# Access controllers that identify users, with the options each needs (distribution 2.8 configuration).
TRUSTED_AUTH = {"htpasswd": ("realm", "path"), "token": ("realm", "service", "issuer", "rootcertbundle")}
# Token mode: clients get tokens at this path on the registry's own host (the load balancer routes it
# to the token service), which the load balancer health-checks on TOKEN_HEALTH_PATH.
TOKEN_REALM_PATH = "/auth"
TOKEN_HEALTH_PATH = "/healthz"
HTPASSWD_UNTRUSTED = (
    "every htpasswd user may push and delete everywhere; use token mode, or waive with a reason for a small stack"
)
TLS13_POLICY_PREFIX = "ELBSecurityPolicy-TLS13-"
MIN_CLOUDFRONT_TLS = (1, 2, 2021)  # TLSv1.2_2021
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
READ_METHODS = frozenset({"GET", "HEAD"})


# --- shared readers ---------------------------------------------------------------------------


def physical_id(res: Res) -> str | None:
    return known_str(res.id) or known_str(res.outputs.get("id")) or known_str(prop(res, "id"))


def bucket_name(bucket: Res) -> str | None:
    """The bucket's physical name: its id (recording engine) or its `bucket` property (CrossGuard outputs)."""
    return known_str(bucket.id) or known_str(bucket.outputs.get("bucket")) or known_str(prop(bucket, "bucket"))


def bucket_arn(bucket: Res) -> str | None:
    return known_str(unwrap(bucket.outputs.get("arn"))) or known_str(prop(bucket, "arn"))


def satellites(resources: Sequence[Res], bucket: Res, type_: str) -> list[Res]:
    """Resources of `type_` whose `bucket` names this bucket.

    In a preview of new resources neither the bucket's name nor the satellite's `bucket` is known:
    then every satellite whose `bucket` is unknown counts (the rule cannot tell them apart).
    """
    name = bucket_name(bucket)
    found = []
    for r in of_type(resources, type_):
        target = prop(r, "bucket")
        if (name is not None and target == name) or (name is None and is_unknown(target)):
            found.append(r)
    return found


def registry_buckets(resources: Sequence[Res]) -> list[Res]:
    """The buckets that hold images (the load balancer's access-log bucket does not)."""
    return [b for b in of_type(resources, BUCKET) if "access-logs" not in b.name]


def primary_buckets(resources: Sequence[Res]) -> list[Res]:
    """The buckets the registry stores images in: named by `storage.s3.bucket` in the hosts' registry
    config or, where that is not readable, the sources of bucket replication (empty when neither is known)."""
    names = {
        known_str(mapping(mapping(config.get("storage")).get("s3")).get("bucket"))
        for _, _, config in host_boot(resources)
        if isinstance(config, dict)
    }
    if not names - {None}:
        names = {known_str(prop(cfg, "bucket")) for cfg in of_type(resources, REPLICATION)}
    return [b for b in of_type(resources, BUCKET) if bucket_name(b) in names - {None}]


def statements(policy: Any) -> list[Mapping[str, Any]] | None:
    """The statements of an IAM policy document (JSON text or a mapping); None when it is not known yet."""
    if is_unknown(policy):
        return None
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except json.JSONDecodeError:
            return []
    return [s for s in as_list(mapping(policy).get("Statement")) if isinstance(s, Mapping)]


def everyone(principal: Any) -> bool:
    """Whether a policy Principal is anyone at all: "*" or {"AWS": "*"}."""
    if principal == "*":
        return True
    return "*" in as_list(mapping(principal).get("AWS"))


def denies_plain_http(stmt: Mapping[str, Any]) -> bool:
    if stmt.get("Effect") != "Deny" or not everyone(stmt.get("Principal")):
        return False
    bool_block = mapping(mapping(stmt.get("Condition")).get("Bool"))
    secure = next((v for k, v in bool_block.items() if k.lower() == "aws:securetransport"), None)
    return [str(v).lower() for v in as_list(secure)] == ["false"]


def user_data_text(raw: str) -> str:
    """The text of a base64 user-data, gzipped (as the fleet sends it; cloud-init unpacks it) or not.
    Raises binascii.Error, OSError (bad gzip) or UnicodeDecodeError when it is neither."""
    data = base64.b64decode(raw, validate=True)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode()


@functools.lru_cache(maxsize=64)
def _parse_user_data(raw: str) -> tuple[dict[str, Any] | str, dict[str, Any] | str]:
    """(cloud-init document, registry config.yml) of a base64 user-data; a str says why one is unreadable."""
    try:
        text = user_data_text(raw)
    except (binascii.Error, OSError, EOFError, UnicodeDecodeError) as err:
        return f"userData is not base64 (gzipped) text ({err})", "userData is unreadable"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return f"userData is not YAML cloud-config ({err})", "userData is unreadable"
    if not isinstance(doc, dict):
        return "userData is not a #cloud-config mapping", "userData is unreadable"
    files = {f.get("path"): f.get("content") for f in as_list(doc.get("write_files")) if isinstance(f, dict)}
    if REGISTRY_CONFIG_PATH not in files:
        return doc, f"userData writes no {REGISTRY_CONFIG_PATH} (registry config)"
    try:
        config = yaml.safe_load(str(files[REGISTRY_CONFIG_PATH]))
    except yaml.YAMLError as err:
        return doc, f"{REGISTRY_CONFIG_PATH} in userData is not YAML ({err})"
    return doc, config if isinstance(config, dict) else f"{REGISTRY_CONFIG_PATH} in userData is not a mapping"


def host_boot(
    resources: Sequence[Res],
) -> Iterator[tuple[Res, dict[str, Any] | str | None, dict[str, Any] | str | None]]:
    """Each launch template with its cloud-init and its registry config: a dict, a str saying why it is
    unreadable, or None when userData is not known yet (preview).

    The parsed documents are shared between rules: read them, never change them.
    """
    for lt in of_type(resources, LAUNCH_TEMPLATE):
        raw = prop(lt, "userData")
        if is_unknown(raw):
            yield lt, None, None
        elif not isinstance(raw, str) or not raw:
            yield lt, "userData is not set", "userData is not set"
        else:
            yield lt, *_parse_user_data(raw)


def enabled_services(cloud_init: Mapping[str, Any]) -> list[str]:
    """The units `systemctl enable` names anywhere in runcmd (also inside `sh -c '...'`)."""
    found = []
    for cmd in as_list(cloud_init.get("runcmd")):
        text = " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd)
        for segment in re.split(r"[;&|\n]", text):
            words = [w.strip("'\"") for w in segment.split()]
            if "systemctl" not in words:
                continue
            verbs = [w for w in words[words.index("systemctl") + 1 :] if not w.startswith("-")]
            if verbs[:1] == ["enable"]:
                found += [v.removesuffix(".service") for v in verbs[1:]]
    return found


Finding = tuple[str, str]  # (resource name, message)


# --- 1: dedicated registry hosts --------------------------------------------------------------


def _no_launch_template(resources: Sequence[Res]) -> Iterator[Finding]:
    if not of_type(resources, LAUNCH_TEMPLATE):
        yield STACK, f"no {LAUNCH_TEMPLATE}: no registry host to check"


def find_hosts_dedicated(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from _no_launch_template(resources)
    for lt, doc, _ in host_boot(resources):
        if doc is None:
            continue
        if isinstance(doc, str):
            yield lt.name, doc
            continue
        names = [str(p[0] if isinstance(p, list) and p else p) for p in as_list(doc.get("packages"))]
        extra = sorted(set(names) - HOST_PACKAGES)
        if extra:
            yield lt.name, f"userData packages include {extra}; a registry host installs only {sorted(HOST_PACKAGES)}"
        for service in enabled_services(doc):
            if service not in HOST_SERVICES:
                yield (
                    lt.name,
                    f"userData runcmd enables {service!r}; only {sorted(HOST_SERVICES)} run on a registry host",
                )


# --- 2: TLS everywhere ------------------------------------------------------------------------


def _redirects_to_https(action: Any) -> bool:
    redirect = mapping(mapping(action).get("redirect"))
    return (
        mapping(action).get("type") == "redirect"
        and redirect.get("protocol") == "HTTPS"
        and redirect.get("statusCode") == "HTTP_301"
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


def cache_behaviors(distribution: Res) -> list[tuple[str, Mapping[str, Any]]]:
    ordered = prop(distribution, "orderedCacheBehaviors")
    behaviors = [("defaultCacheBehavior", mapping(prop(distribution, "defaultCacheBehavior")))]
    if not is_unknown(ordered):
        behaviors += [(f"orderedCacheBehaviors[{i}]", mapping(b)) for i, b in enumerate(as_list(ordered))]
    return behaviors


def _tls_version(value: Any) -> tuple[int, int, int] | None:
    match = re.fullmatch(r"TLSv(\d+)\.(\d+)_(\d{4})", str(value))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def find_tls_cdn_viewers(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        for where, behavior in cache_behaviors(d):
            policy = behavior.get("viewerProtocolPolicy")
            if not is_unknown(policy) and policy != "https-only":
                yield d.name, f"{where}.viewerProtocolPolicy is {policy!r}, expected 'https-only'"
        certificate = mapping(prop(d, "viewerCertificate"))
        if certificate.get("acmCertificateArn"):
            version = certificate.get("minimumProtocolVersion")
            parsed = _tls_version(version)
            if not is_unknown(version) and (parsed is None or parsed < MIN_CLOUDFRONT_TLS):
                yield d.name, f"viewerCertificate.minimumProtocolVersion is {version!r}, expected TLSv1.2_2021 or newer"


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


# --- 3 and 4: role-based access, uploads only by trusted users --------------------------------


def find_registry_auth_required(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from _no_launch_template(resources)
    for lt, _, config in host_boot(resources):
        if config is None:
            continue
        if isinstance(config, str):
            yield lt.name, config
        elif not mapping(config.get("auth")):
            yield lt.name, f"registry config.yml auth is {config.get('auth')!r}: anyone may pull and push"


def token_auth(config: Any) -> Mapping[str, Any]:
    """The registry config's `auth.token` options ({} when the config is unreadable or not in token mode)."""
    return mapping(mapping(mapping(config).get("auth")).get("token"))


def find_registry_auth_trusted(resources: Sequence[Res]) -> Iterator[Finding]:
    for lt, _, config in host_boot(resources):
        auth = mapping(config.get("auth")) if isinstance(config, dict) else {}
        if not auth:
            continue  # unknown, unreadable or absent: registry-auth-required reports it
        untrusted = sorted(set(auth) - set(TRUSTED_AUTH))
        if untrusted:
            yield (
                lt.name,
                f"registry config.yml auth uses {untrusted}; only token scopes who may push where "
                "(silly accepts any credentials)",
            )
            continue
        if len(auth) != 1:
            yield lt.name, f"registry config.yml auth names {sorted(auth)}; name exactly one access controller"
            continue
        method, options = next(iter(auth.items()))
        missing = [k for k in TRUSTED_AUTH[method] if not mapping(options).get(k)]
        if missing:
            yield lt.name, f"registry config.yml auth.{method} has no {missing}"
        if method == "htpasswd":
            yield lt.name, f"registry config.yml auth is htpasswd: {HTPASSWD_UNTRUSTED}"
        if method != "token" or missing:
            continue
        host = urlparse(str(mapping(mapping(config).get("http")).get("host") or "")).netloc
        realm = str(mapping(options).get("realm"))
        parsed = urlparse(realm)
        if parsed.scheme != "https" or (host and parsed.netloc != host) or parsed.path != TOKEN_REALM_PATH:
            yield (
                lt.name,
                f"registry config.yml auth.token.realm is {realm!r}, expected https://{host or '<registry host>'}"
                f"{TOKEN_REALM_PATH} (clients send passwords there: the registry's own host, routed to the token "
                "service)",
            )
        bundle = str(mapping(options).get("rootcertbundle"))
        if not bundle.startswith("/"):
            yield lt.name, f"registry config.yml auth.token.rootcertbundle is {bundle!r}, expected an absolute path"


def _arn(res: Res) -> str | None:
    return known_str(unwrap(res.outputs.get("arn"))) or known_str(prop(res, "arn"))


def _path_patterns(listener_rule: Res) -> list[str]:
    conditions = prop(listener_rule, "conditions")
    if is_unknown(conditions):
        return []
    return [
        str(value)
        for condition in as_list(conditions)
        for value in as_list(mapping(mapping(condition).get("pathPattern")).get("values"))
    ]


def _forward_targets(listener_rule: Res) -> list[Any]:
    """The target group ARNs a rule's forward actions name (the simple form or a weighted forward)."""
    actions = prop(listener_rule, "actions")
    if is_unknown(actions):
        return [actions]
    found: list[Any] = []
    for action in map(mapping, as_list(actions)):
        if action.get("type") != "forward":
            continue
        if action.get("targetGroupArn"):
            found.append(action.get("targetGroupArn"))
        found += [mapping(g).get("arn") for g in as_list(mapping(action.get("forward")).get("targetGroups"))]
    return found


def find_token_service_routed(resources: Sequence[Res]) -> Iterator[Finding]:
    realms = {
        urlparse(realm).path
        for _, _, config in host_boot(resources)
        if isinstance(config, dict) and (realm := known_str(token_auth(config).get("realm")))
    }
    if not realms:
        return  # not token mode, or not known yet (registry-auth-trusted reports a bad auth section)
    https_arns = {
        _arn(li) for li in of_type(resources, *LISTENERS) if prop(li, "protocol") in ("HTTPS", *UNKNOWN_VALUES)
    }
    groups = {arn: tg for tg in of_type(resources, *TARGET_GROUPS) if (arn := _arn(tg))}
    fleets = of_type(resources, AUTOSCALING_GROUP)
    rules = of_type(resources, *LISTENER_RULES)
    for path in sorted(realms):
        routes = [r for r in rules if any(fnmatch.fnmatchcase(path, p) for p in _path_patterns(r))]
        if not routes and not any(is_unknown(prop(r, "conditions")) for r in rules):
            yield STACK, f"no {LISTENER_RULES[0]} has a path-pattern condition matching the realm path {path!r}"
        for route in routes:
            listener = prop(route, "listenerArn")
            if known_str(listener) and None not in https_arns and listener not in https_arns:
                yield route.name, f"listenerArn is {listener!r}, not an HTTPS listener of this stack"
            targets = _forward_targets(route)
            if not targets:
                yield route.name, f"actions forward {path!r} to no target group"
            for arn in targets:
                if is_unknown(arn):
                    continue
                tg = groups.get(arn)
                if tg is None:
                    if groups:
                        yield route.name, f"actions forward to {arn!r}, not a target group of this stack"
                    continue
                check = (prop(tg, "healthCheck", "protocol"), prop(tg, "healthCheck", "path"))
                if not any(map(is_unknown, check)) and check != ("HTTPS", TOKEN_HEALTH_PATH):
                    yield (
                        tg.name,
                        f"healthCheck (protocol, path) is {check}, expected ('HTTPS', '{TOKEN_HEALTH_PATH}') "
                        "(the token service's health)",
                    )
                for group in fleets:
                    registered = prop(group, "targetGroupArns")
                    if is_unknown(registered) or any(is_unknown(a) for a in as_list(registered)):
                        continue
                    if arn not in as_list(registered):
                        yield (
                            group.name,
                            f"targetGroupArns does not include {tg.name}: its hosts never get token requests",
                        )


# --- 5: vulnerability scans -------------------------------------------------------------------


def find_scan_notifications(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from _no_launch_template(resources)
    for lt, _, config in host_boot(resources):
        if config is None:
            continue
        if isinstance(config, str):
            yield lt.name, config
            continue
        endpoints = as_list(mapping(config.get("notifications")).get("endpoints"))
        https = [
            e
            for e in endpoints
            if str(mapping(e).get("url", "")).startswith("https://") and not mapping(e).get("disabled")
        ]
        if not https:
            urls = [mapping(e).get("url") for e in endpoints]
            yield (
                lt.name,
                f"registry config.yml notifications.endpoints urls are {urls}; "
                "expected an enabled https:// endpoint (the scanner bridge)",
            )


# --- 6: signed images -------------------------------------------------------------------------


def find_signing_key(resources: Sequence[Res]) -> Iterator[Finding]:
    seen = []
    for key in of_type(resources, KMS_KEY):
        usage = prop(key, "keyUsage")
        spec = prop(key, "customerMasterKeySpec") or prop(key, "keySpec")
        if is_unknown(usage) or is_unknown(spec):
            return
        if usage == "SIGN_VERIFY" and str(spec).startswith(("ECC_", "RSA_")):
            return
        usage, spec = usage or "ENCRYPT_DECRYPT (default)", spec or "SYMMETRIC_DEFAULT (default)"
        seen.append(f"{key.name} (keyUsage {usage}, customerMasterKeySpec {spec})")
    yield (
        STACK,
        f"no {KMS_KEY} with keyUsage 'SIGN_VERIFY' and an ECC_* or RSA_* customerMasterKeySpec (the cosign key); "
        f"keys: {sorted(seen) or 'none'}",
    )


# --- 7: private registry ----------------------------------------------------------------------


def find_hosts_private(resources: Sequence[Res]) -> Iterator[Finding]:
    for lt in of_type(resources, LAUNCH_TEMPLATE):
        nics = prop(lt, "networkInterfaces")
        if not is_unknown(nics):
            if not as_list(nics):
                yield lt.name, "networkInterfaces is not set: associatePublicIpAddress 'false' must be explicit"
            for i, nic in enumerate(as_list(nics)):
                public = mapping(nic).get("associatePublicIpAddress")
                if not is_unknown(public) and str(public).lower() != "false":
                    yield lt.name, f"networkInterfaces[{i}].associatePublicIpAddress is {public!r}, expected 'false'"
        tokens = prop(lt, "metadataOptions", "httpTokens")
        if not is_unknown(tokens) and tokens != "required":
            yield lt.name, f"metadataOptions.httpTokens is {tokens!r}, expected 'required' (IMDSv2 only)"
        hops = prop(lt, "metadataOptions", "httpPutResponseHopLimit")
        if not is_unknown(hops) and hops != 1:
            yield lt.name, f"metadataOptions.httpPutResponseHopLimit is {hops!r}, expected 1"
        key = prop(lt, "keyName")
        if key not in (None, ""):
            yield lt.name, f"keyName is {key!r}: no SSH key pair on registry hosts (operators use SSM)"


# Per kind of rule: (property naming the group it opens, property naming the group it admits, address properties).
_INGRESS_FIELDS = {
    INGRESS_RULE: ("securityGroupId", "referencedSecurityGroupId", ("cidrIpv4", "cidrIpv6", "prefixListId")),
    SECURITY_GROUP_RULE: (
        "securityGroupId",
        "sourceSecurityGroupId",
        ("cidrBlocks", "ipv6CidrBlocks", "prefixListIds"),
    ),
}


def find_hosts_ingress_from_lb_only(resources: Sequence[Res]) -> Iterator[Finding]:
    fleets = {r.urn for r in resources if r.type == FLEET_COMPONENT}
    balancers = {r.urn for r in resources if r.type == LOAD_BALANCER_COMPONENT}
    host_groups = [g for g in of_type(resources, SECURITY_GROUP) if g.parent in fleets]
    host_ids = {i for g in host_groups if (i := physical_id(g))}
    lb_ids = {i for g in of_type(resources, SECURITY_GROUP) if g.parent in balancers and (i := physical_id(g))}
    for group in host_groups:
        inline = prop(group, "ingress")
        if not is_unknown(inline) and as_list(inline):
            yield group.name, f"ingress has {len(as_list(inline))} inline rules; hosts admit only the load balancer"
    for rule in of_type(resources, *_INGRESS_FIELDS):
        target_field, source_field, address_fields = _INGRESS_FIELDS[rule.type]
        if rule.type == SECURITY_GROUP_RULE and prop(rule, "type") != "ingress":
            continue
        if rule.parent not in fleets and known_str(prop(rule, target_field)) not in host_ids:
            continue
        addresses = {f: prop(rule, f) for f in address_fields if prop(rule, f) not in (None, "", [])}
        source = prop(rule, source_field)
        if addresses:
            yield rule.name, f"admits {addresses}; hosts admit only the load balancer's security group"
        elif not source:
            yield rule.name, f"{source_field} is not set; hosts admit only the load balancer's security group"
        elif lb_ids and not is_unknown(source) and source not in lb_ids:
            yield rule.name, f"{source_field} is {source!r}, not the load balancer's security group"


def find_buckets_block_public_access(resources: Sequence[Res]) -> Iterator[Finding]:
    for bucket in of_type(resources, BUCKET):
        blocks = satellites(resources, bucket, PUBLIC_ACCESS_BLOCK)
        if not blocks:
            yield bucket.name, f"no {PUBLIC_ACCESS_BLOCK} names this bucket"
        for block in blocks:
            off = {f: prop(block, f) for f in PUBLIC_ACCESS_FLAGS}
            off = {f: v for f, v in off.items() if not is_unknown(v) and str(v).lower() != "true"}
            if off:
                yield block.name, f"public access flags not true: {off}"


def find_bucket_policies_not_public(resources: Sequence[Res]) -> Iterator[Finding]:
    for policy in of_type(resources, BUCKET_POLICY, BUCKET):
        for i, stmt in enumerate(statements(prop(policy, "policy")) or []):
            if stmt.get("Effect") == "Allow" and everyone(stmt.get("Principal")) and not stmt.get("Condition"):
                label = stmt.get("Sid") or f"Statement[{i}]"
                yield policy.name, f"policy {label} allows Principal {stmt.get('Principal')!r} with no Condition"


def _plain_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in `value` that is not inside a secret wrapper, with its property path."""
    if is_secret(value):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _plain_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _plain_strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


def find_no_plain_secrets(resources: Sequence[Res]) -> Iterator[Finding]:
    passwords: dict[str, str] = {}
    for pw in of_type(resources, RANDOM_PASSWORD):
        for value in (unwrap(pw.outputs.get("result")), prop(pw, "result")):
            if known_str(value) and len(value) >= 8:
                passwords[value] = pw.name
    for res in resources:
        if res.type == RANDOM_PASSWORD:
            continue
        texts = list(_plain_strings(res.props, ""))
        raw = known_str(res.props.get("userData")) if res.type == LAUNCH_TEMPLATE else None
        if raw is not None:
            with contextlib.suppress(binascii.Error, OSError, EOFError, UnicodeDecodeError):
                texts.append(("userData (decoded)", user_data_text(raw)))
        for path, text in texts:
            leaked = next((name for value, name in passwords.items() if value in text), None)
            if "PRIVATE KEY-----" in text:
                yield res.name, f"{path} holds a PEM private key in plain text (not a secret)"
                break
            if leaked:
                yield res.name, f"{path} holds the result of {leaked} in plain text (not a secret)"
                break


# --- 8: replicated across servers -------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def find_fleet_replicated(resources: Sequence[Res]) -> Iterator[Finding]:
    groups = of_type(resources, AUTOSCALING_GROUP)
    if not groups:
        yield STACK, f"no {AUTOSCALING_GROUP}: the registry runs on no replicated fleet"
    for group in groups:
        min_size = prop(group, "minSize")
        if not is_unknown(min_size) and not (_number(min_size) and min_size >= 2):
            yield group.name, f"minSize is {min_size!r}, expected at least 2"
        subnets = prop(group, "vpcZoneIdentifiers")
        if not is_unknown(subnets) and len(as_list(subnets)) < 2:
            yield group.name, f"vpcZoneIdentifiers has {len(as_list(subnets))} subnets, expected at least 2 (zones)"
        health = prop(group, "healthCheckType")
        if not is_unknown(health) and health != "ELB":
            yield group.name, f"healthCheckType is {health!r}, expected 'ELB' (replace hosts the registry fails on)"


def _bucket_named(resources: Sequence[Res], name: Any) -> Res | None:
    return next((b for b in of_type(resources, BUCKET) if name is not None and bucket_name(b) == name), None)


def _bucket_with_arn(resources: Sequence[Res], arn: Any) -> Res | None:
    return next((b for b in of_type(resources, BUCKET) if arn is not None and bucket_arn(b) == arn), None)


def find_bucket_replicated(resources: Sequence[Res]) -> Iterator[Finding]:
    configs = of_type(resources, REPLICATION)
    if not configs:
        yield STACK, f"no {REPLICATION}: registry blobs live in one region"
    for cfg in configs:
        source = _bucket_named(resources, prop(cfg, "bucket"))
        source_provider = source.provider if source else cfg.provider
        rules = prop(cfg, "rules")
        if is_unknown(rules):
            continue
        if not as_list(rules):
            yield cfg.name, "rules is empty"
        for i, rule in enumerate(map(mapping, as_list(rules))):
            status = rule.get("status")
            if not is_unknown(status) and status != "Enabled":
                yield cfg.name, f"rules[{i}].status is {status!r}, expected 'Enabled'"
            markers = mapping(rule.get("deleteMarkerReplication")).get("status")
            if not is_unknown(markers) and markers != "Enabled":
                yield cfg.name, f"rules[{i}].deleteMarkerReplication.status is {markers!r}, expected 'Enabled'"
            target = mapping(rule.get("destination")).get("bucket")
            dest = _bucket_with_arn(resources, target)
            if is_unknown(target):
                if not any(b.provider != source_provider for b in of_type(resources, BUCKET)):
                    yield cfg.name, f"rules[{i}].destination.bucket: no bucket of this stack is in another region"
            elif dest is None:
                yield cfg.name, f"rules[{i}].destination.bucket {target!r} is not a bucket of this stack"
            elif dest.provider == source_provider:
                yield (
                    cfg.name,
                    f"rules[{i}].destination.bucket is {dest.name}, through the source's provider "
                    f"{source_provider!r}: the replica must be in another region",
                )


# --- 9: CDN for blobs -------------------------------------------------------------------------


def find_cdn_signed_urls(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        for where, behavior in cache_behaviors(d):
            groups = behavior.get("trustedKeyGroups")
            if not is_unknown(groups) and not [g for g in as_list(groups) if g]:
                yield d.name, f"{where}.trustedKeyGroups is {groups!r}: blob URLs would need no signature"


def find_cdn_origin_access_control(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        origins = prop(d, "origins")
        for i, origin in enumerate(map(mapping, [] if is_unknown(origins) else as_list(origins))):
            if not origin.get("originAccessControlId"):
                yield d.name, f"origins[{i}].originAccessControlId is {origin.get('originAccessControlId')!r}"
            path = origin.get("originPath")
            if path not in (None, "") and not is_unknown(path):
                yield d.name, f"origins[{i}].originPath is {path!r}, expected empty (the registry signs full keys)"


def find_cdn_read_only(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        for where, behavior in cache_behaviors(d):
            methods = behavior.get("allowedMethods")
            if is_unknown(methods):
                continue
            if not as_list(methods) or set(map(str, as_list(methods))) - READ_METHODS:
                yield d.name, f"{where}.allowedMethods is {methods!r}, expected only GET and HEAD"


# --- 10: regular backups ----------------------------------------------------------------------


def find_buckets_versioned(resources: Sequence[Res]) -> Iterator[Finding]:
    for bucket in registry_buckets(resources):
        versionings = satellites(resources, bucket, VERSIONING)
        if not versionings:
            yield bucket.name, f"no {VERSIONING} names this bucket"
        for v in versionings:
            status = prop(v, "versioningConfiguration", "status")
            if not is_unknown(status) and status != "Enabled":
                yield v.name, f"versioningConfiguration.status is {status!r}, expected 'Enabled'"


def _expires_noncurrent(rule: Any) -> bool:
    days = mapping(mapping(rule).get("noncurrentVersionExpiration")).get("noncurrentDays")
    return mapping(rule).get("status") in ("Enabled", *UNKNOWN_VALUES) and bool(days)


def find_noncurrent_versions_expire(resources: Sequence[Res]) -> Iterator[Finding]:
    for bucket in registry_buckets(resources):
        configs = satellites(resources, bucket, LIFECYCLE)
        if not configs:
            yield bucket.name, f"no {LIFECYCLE} names this bucket"
            continue
        rules = [prop(c, "rules") for c in configs]
        if any(is_unknown(r) or any(_expires_noncurrent(x) for x in as_list(r)) for r in rules):
            continue
        yield configs[0].name, "rules has no enabled rule with noncurrentVersionExpiration.noncurrentDays"


def find_backup_plan(resources: Sequence[Res]) -> Iterator[Finding]:
    plans, selections = of_type(resources, BACKUP_PLAN), of_type(resources, BACKUP_SELECTION)
    if not plans:
        yield STACK, f"no {BACKUP_PLAN}"
    for plan in plans:
        if not is_unknown(prop(plan, "rules")) and not as_list(prop(plan, "rules")):
            yield plan.name, "rules is empty: the plan never backs anything up"
    if not selections:
        yield STACK, f"no {BACKUP_SELECTION}: no resource is backed up"
        return
    chosen = [x for s in selections for x in as_list(prop(s, "resources"))]
    for s in selections:
        if not as_list(prop(s, "resources")) and not prop(s, "selectionTags") and not prop(s, "conditions"):
            yield s.name, "resources is empty"
    if any(is_unknown(x) for x in chosen):
        return  # a selection names something not known yet: it may be the bucket
    for bucket in primary_buckets(resources):
        arn = bucket_arn(bucket)
        if arn is not None and not any(fnmatch.fnmatchcase(arn, str(pattern)) for pattern in chosen):
            yield selections[0].name, f"resources is {chosen!r}, without {bucket.name} ({arn})"


def find_backup_vaults_encrypted(resources: Sequence[Res]) -> Iterator[Finding]:
    for vault in of_type(resources, BACKUP_VAULT):
        if not prop(vault, "kmsKeyArn"):
            yield vault.name, f"kmsKeyArn is {prop(vault, 'kmsKeyArn')!r}: backups need a customer KMS key"


# --- the rules --------------------------------------------------------------------------------


def _rule(rule_id: str, practice: int, description: str, find: Callable[[Sequence[Res]], Iterable[Finding]]) -> Rule:
    def check(resources: Sequence[Res]) -> list[Violation]:
        return [Violation(rule_id, name, message) for name, message in find(resources)]

    check.__name__ = check.__qualname__ = f"check_{rule_id.replace('-', '_')}"
    return Rule(rule_id, practice, description, check)


RULES: tuple[Rule, ...] = (
    _rule(
        "hosts-dedicated",
        1,
        "Registry hosts install only docker-registry, awscli, ca-certificates, curl and python3-venv, and enable "
        "only docker-registry, registry-token and amazon-ssm-agent.",
        find_hosts_dedicated,
    ),
    _rule(
        "tls-listeners",
        2,
        "Load balancer listeners are HTTPS with an ELBSecurityPolicy-TLS13-* policy, or only redirect to HTTPS "
        "with HTTP_301.",
        find_tls_listeners,
    ),
    _rule(
        "tls-to-hosts",
        2,
        "Target groups reach the hosts over HTTPS and health-check them over HTTPS.",
        find_tls_to_hosts,
    ),
    _rule(
        "tls-cdn-viewers",
        2,
        "CloudFront serves viewers https-only, with TLSv1.2_2021 or newer on a custom certificate.",
        find_tls_cdn_viewers,
    ),
    _rule(
        "tls-only-buckets",
        2,
        "Every S3 bucket has a bucket policy that denies requests with aws:SecureTransport false.",
        find_tls_only_buckets,
    ),
    _rule(
        "registry-auth-required",
        3,
        "The registry config on the hosts has an auth section: the registry is never anonymous.",
        find_registry_auth_required,
    ),
    _rule(
        "token-service-routed",
        3,
        "In token mode an HTTPS listener rule sends the realm path to a target group health-checked over HTTPS "
        "on /healthz, in which the Auto Scaling group registers its hosts.",
        find_token_service_routed,
    ),
    _rule(
        "registry-auth-trusted",
        4,
        "The registry uses token auth with an https realm on its own host at /auth, a service, an issuer and a "
        "rootcertbundle (never htpasswd or silly).",
        find_registry_auth_trusted,
    ),
    _rule(
        "scan-notifications",
        5,
        "The registry sends its events to at least one enabled https notification endpoint (the scanner bridge).",
        find_scan_notifications,
    ),
    _rule(
        "signing-key",
        6,
        "The stack has an asymmetric KMS key for signing images (keyUsage SIGN_VERIFY, an ECC_ or RSA_ spec).",
        find_signing_key,
    ),
    _rule(
        "hosts-private",
        7,
        "Launch templates give hosts no public IP and no SSH key, and require IMDSv2 with a hop limit of 1.",
        find_hosts_private,
    ),
    _rule(
        "hosts-ingress-from-lb-only",
        7,
        "The hosts' security group admits traffic only from a referenced security group (the load balancer's).",
        find_hosts_ingress_from_lb_only,
    ),
    _rule(
        "buckets-block-public-access",
        7,
        "Every S3 bucket has a public access block with all four flags true.",
        find_buckets_block_public_access,
    ),
    _rule(
        "bucket-policies-not-public",
        7,
        "No bucket policy allows Principal * (or AWS *) without a Condition.",
        find_bucket_policies_not_public,
    ),
    _rule(
        "no-plain-secrets",
        7,
        "No plain (non-secret) property, user-data included, holds a private key PEM or a generated password.",
        find_no_plain_secrets,
    ),
    _rule(
        "fleet-replicated",
        8,
        "The Auto Scaling group keeps at least two hosts in at least two subnets, replaced on ELB health.",
        find_fleet_replicated,
    ),
    _rule(
        "bucket-replicated",
        8,
        "A bucket replication configuration copies objects and delete markers to a bucket in another region.",
        find_bucket_replicated,
    ),
    _rule(
        "cdn-signed-urls",
        9,
        "Every CloudFront cache behavior requires URLs signed by a trusted key group.",
        find_cdn_signed_urls,
    ),
    _rule(
        "cdn-origin-access-control",
        9,
        "Every CloudFront origin uses origin access control and an empty origin path.",
        find_cdn_origin_access_control,
    ),
    _rule(
        "cdn-read-only",
        9,
        "CloudFront allows viewers only GET and HEAD.",
        find_cdn_read_only,
    ),
    _rule(
        "buckets-versioned",
        10,
        "Every registry bucket has versioning Enabled.",
        find_buckets_versioned,
    ),
    _rule(
        "noncurrent-versions-expire",
        10,
        "Every registry bucket has an enabled lifecycle rule that expires noncurrent versions.",
        find_noncurrent_versions_expire,
    ),
    _rule(
        "backup-plan",
        10,
        "An AWS Backup plan exists and a backup selection covers the primary registry bucket.",
        find_backup_plan,
    ),
    _rule(
        "backup-vaults-encrypted",
        10,
        "Every AWS Backup vault is encrypted with a customer KMS key (kmsKeyArn).",
        find_backup_vaults_encrypted,
    ),
)


def rule(rule_id: str) -> Rule:
    found = next((r for r in RULES if r.id == rule_id), None)
    if found is None:
        raise KeyError(f"unknown rule {rule_id!r}; known rules: {', '.join(r.id for r in RULES)}")
    return found


def evaluate(resources: Sequence[Res]) -> list[Violation]:
    """Every rule's violations, in the order of RULES."""
    return [v for r in RULES for v in r.check(resources)]


# --- waivers ----------------------------------------------------------------------------------


def waivers_in(resources: Sequence[Res]) -> list[dict[str, Any]]:
    """The waivers a stack registers: the `waivers` of its `registry-fleet:index:PolicyWaivers` resources."""
    found: list[dict[str, Any]] = []
    for res in of_type(resources, WAIVERS):
        raw = prop(res, "waivers")
        if raw is None:
            raw = unwrap(res.outputs.get("waivers"))
        if is_unknown(raw):
            continue
        found += [dict(w) for w in as_list(raw) if isinstance(w, Mapping)]
    return found


def apply_waivers(
    violations: Sequence[Violation], waivers: Sequence[Mapping[str, Any]], today: datetime.date
) -> tuple[list[Violation], list[Violation], list[str]]:
    """Split `violations` into (unwaived, waived) by the waivers valid `today`, plus the waivers' errors.

    A waiver is an error when it names an unknown rule, has no reason, has no valid `expires` date
    (YYYY-MM-DD) or has expired (`today` is after `expires`); an erroneous waiver waives nothing.
    """
    known = {r.id for r in RULES}
    active: set[str] = set()
    errors: list[str] = []
    for waiver in waivers:
        rule_id, reason, expires = waiver.get("rule"), waiver.get("reason"), waiver.get("expires")
        if rule_id not in known:
            errors.append(f"waiver for unknown rule {rule_id!r}; known rules: {', '.join(sorted(known))}")
            continue
        try:
            until = expires if isinstance(expires, datetime.date) else datetime.date.fromisoformat(str(expires))
        except ValueError:
            errors.append(f"waiver for {rule_id} has expires {expires!r}, expected a date YYYY-MM-DD")
            continue
        if not str(reason or "").strip():
            errors.append(f"waiver for {rule_id} gives no reason")
        elif today > until:
            errors.append(f"waiver for {rule_id} expired on {until.isoformat()}")
        else:
            active.add(str(rule_id))
    unwaived = [v for v in violations if v.rule not in active]
    waived = [v for v in violations if v.rule in active]
    return unwaived, waived, errors
