"""The resource graph as rules see it: one recorded resource (`Res`) and the readers over a stack of them.

One model for everyone who reads a stack's resources: the recording engine (`fleet/engine.py`)
records each registration as a `Res`, the CrossGuard adapter (`policy/crossguard.py`) turns each
`PolicyResource` into one, and the rules (`policy/rules/`) and the graph tests read them with the
readers below. This module imports neither pulumi nor pulumi_policy.

Values arrive as the engines send them: secrets wrapped (`is_secret`, `unwrap`) and, in a CrossGuard
preview, values not known yet as "unknown" sentinels (`is_unknown`). `prop` reads through both. Physical
ids and outputs (`Res.id`, `Res.outputs`; in CrossGuard the inputs carry the outputs) serve only to link
resources (a bucket policy to its bucket by the bucket's name, a backup selection to the bucket's ARN),
and only when known.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from host.contract import CONFIG_PATH
from host.scanner_host import ROLE_TAG, SCANNER_WORKER_ROLE
from host.user_data import decode_user_data

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
    """One resource of a stack: what the program registered, as the recording engine and CrossGuard see it."""

    type: str  # e.g. "aws:s3/bucket:Bucket"
    name: str  # logical name
    urn: str
    inputs: Mapping[str, Any]  # input properties, camelCase (CrossGuard: the final outputs); secrets wrapped
    parent: str | None = None  # parent URN (None: a top-level resource, whose parent is the stack)
    provider: str | None = None  # provider URN (None: the default provider)
    id: str = ""  # physical id when known
    outputs: Mapping[str, Any] = field(default_factory=dict)  # known outputs (recording engine); CrossGuard: empty
    custom: bool = True  # a cloud resource, not a component (the recording engine knows; CrossGuard does not say)
    retain_on_delete: bool = False  # the engine would leave the cloud resource when Pulumi deletes it


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
    node: Any = res.inputs
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
SCALING_POLICY = "aws:autoscaling/policy:Policy"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
LOAD_BALANCERS = ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer")
LISTENERS = ("aws:lb/listener:Listener", "aws:alb/listener:Listener")
LISTENER_RULES = ("aws:lb/listenerRule:ListenerRule", "aws:alb/listenerRule:ListenerRule")
TARGET_GROUPS = ("aws:lb/targetGroup:TargetGroup", "aws:alb/targetGroup:TargetGroup")
DISTRIBUTION = "aws:cloudfront/distribution:Distribution"
KMS_KEY = "aws:kms/key:Key"
METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
BUCKET_LOGGING = "aws:s3/bucketLogging:BucketLogging"
LOG_DELIVERY_SOURCE = "aws:cloudwatch/logDeliverySource:LogDeliverySource"
LOG_DELIVERY = "aws:cloudwatch/logDelivery:LogDelivery"
SNS_TOPIC = "aws:sns/topic:Topic"
VAULT_NOTIFICATIONS = "aws:backup/vaultNotifications:VaultNotifications"
WEB_ACL = "aws:wafv2/webAcl:WebAcl"
WEB_ACL_ASSOCIATION = "aws:wafv2/webAclAssociation:WebAclAssociation"
WEB_ACL_LOGGING = "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration"
BACKUP_PLAN = "aws:backup/plan:Plan"
BACKUP_SELECTION = "aws:backup/selection:Selection"
BACKUP_VAULT = "aws:backup/vault:Vault"
MAINTENANCE_WINDOW = "aws:ssm/maintenanceWindow:MaintenanceWindow"
SSM_ASSOCIATION = "aws:ssm/association:Association"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
SSM_DOCUMENT = "aws:ssm/document:Document"
SSM_PARAMETER = "aws:ssm/parameter:Parameter"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
MAINTENANCE_WINDOW_TASK = "aws:ssm/maintenanceWindowTask:MaintenanceWindowTask"
RESTORE_TESTING_PLAN = "aws:backup/restoreTestingPlan:RestoreTestingPlan"
RESTORE_TESTING_SELECTION = "aws:backup/restoreTestingSelection:RestoreTestingSelection"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
FLEET_COMPONENT = "registry-fleet:index:RegistryFleet"
LOAD_BALANCER_COMPONENT = "registry-fleet:index:RegistryLoadBalancer"
WAIVERS = "registry-fleet:index:PolicyWaivers"

REGISTRY_CONFIG_PATH = CONFIG_PATH  # the registry config file cloud-init writes (the host contract)


# --- linking resources ------------------------------------------------------------------------


def physical_id(res: Res) -> str | None:
    return known_str(res.id) or known_str(res.outputs.get("id")) or known_str(prop(res, "id"))


def bucket_name(bucket: Res) -> str | None:
    """The bucket's physical name: its id (recording engine) or its `bucket` property (CrossGuard outputs)."""
    return known_str(bucket.id) or known_str(bucket.outputs.get("bucket")) or known_str(prop(bucket, "bucket"))


def arn_of(res: Res) -> str | None:
    """The resource's ARN, when known (an output in the recording engine, a property in CrossGuard)."""
    return known_str(unwrap(res.outputs.get("arn"))) or known_str(prop(res, "arn"))


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


def cache_behaviors(distribution: Res) -> list[tuple[str, Mapping[str, Any]]]:
    """A CloudFront distribution's cache behaviors, each with where it is (the default one first)."""
    ordered = prop(distribution, "orderedCacheBehaviors")
    behaviors = [("defaultCacheBehavior", mapping(prop(distribution, "defaultCacheBehavior")))]
    if not is_unknown(ordered):
        behaviors += [(f"orderedCacheBehaviors[{i}]", mapping(b)) for i, b in enumerate(as_list(ordered))]
    return behaviors


# --- load balancer routes ---------------------------------------------------------------------


def path_patterns(listener_rule: Res, kind: str = "values") -> list[str]:
    """The path-pattern condition values of a listener rule: its wildcard patterns (`values`) or its
    regular expressions (`regexValues`)."""
    conditions = prop(listener_rule, "conditions")
    if is_unknown(conditions):
        return []
    return [
        str(value)
        for condition in as_list(conditions)
        for value in as_list(mapping(mapping(condition).get("pathPattern")).get(kind))
    ]


def forward_targets(listener_rule: Res) -> list[Any]:
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


# --- the hosts' user-data ---------------------------------------------------------------------


# The text of a base64 user-data, gzipped (as the fleet sends it; cloud-init unpacks it) or not: the host
# contract's own reader. Raises binascii.Error, OSError (bad gzip) or UnicodeDecodeError when it is neither.
user_data_text = decode_user_data


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
    """Each registry host's launch template (every template but the scanner workers', is_scanner_template) with
    its cloud-init and its registry config: a dict, a str saying why it is unreadable, or None when userData is
    not known yet (preview).

    The parsed documents are shared between rules: read them, never change them.
    """
    for lt in of_type(resources, LAUNCH_TEMPLATE):
        raw = prop(lt, "userData")
        scanner = is_scanner_template(lt)
        if is_unknown(raw):
            if not scanner:
                yield lt, None, None
        elif not isinstance(raw, str) or not raw:
            yield lt, "userData is not set", "userData is not set"
        else:
            doc, config = _parse_user_data(raw)
            if scanner and not isinstance(config, dict):
                continue  # a scanner worker (no registry config): not a registry host
            yield lt, doc, config


def is_scanner_template(lt: Res) -> bool:
    """A launch template tagged as a scanner worker's (components/scanning.py). host_boot still counts it as a
    registry host when its user-data writes the registry's config."""
    return bool(prop(lt, "tags", ROLE_TAG) == SCANNER_WORKER_ROLE)


def registry_groups(resources: Sequence[Res]) -> list[Res]:
    """The registry hosts' Auto Scaling groups: every group but the scanner workers' (whose launch template is a
    scanner template or, where templates' ids are not known (CrossGuard), whose tags say so; a group whose
    template is known to be a registry host's counts as a registry group whatever its tags say)."""
    scanner_ids = {i for lt in scanner_templates(resources) if (i := physical_id(lt))}
    host_ids = {i for lt, _, _ in host_boot(resources) if (i := physical_id(lt))}
    out = []
    for group in of_type(resources, AUTOSCALING_GROUP):
        template = known_str(prop(group, "launchTemplate", "id"))
        tagged = any(
            mapping(t).get("key") == ROLE_TAG and mapping(t).get("value") == SCANNER_WORKER_ROLE
            for t in as_list(prop(group, "tags"))
        )
        if template in scanner_ids or (tagged and template not in host_ids):
            continue
        out.append(group)
    return out


def scanner_groups(resources: Sequence[Res]) -> list[Res]:
    """The scanner workers' Auto Scaling groups (every group registry_groups leaves out)."""
    registry = {g.urn for g in registry_groups(resources)}
    return [g for g in of_type(resources, AUTOSCALING_GROUP) if g.urn not in registry]


def scanner_templates(resources: Sequence[Res]) -> list[Res]:
    """The scanner workers' launch templates: tagged as such, and not registry hosts."""
    hosts = {lt.urn for lt, _, _ in host_boot(resources)}
    return [lt for lt in of_type(resources, LAUNCH_TEMPLATE) if is_scanner_template(lt) and lt.urn not in hosts]


def cloud_inits(resources: Sequence[Res]) -> Iterator[tuple[Res, dict[str, Any] | str]]:
    """Each launch template with its cloud-init document, or a str saying why it is unreadable
    (templates whose userData is not known yet are left out)."""
    return ((lt, doc) for lt, doc, _ in host_boot(resources) if doc is not None)


def registry_configs(resources: Sequence[Res]) -> Iterator[tuple[Res, dict[str, Any] | str]]:
    """Each launch template with the registry config its cloud-init writes, or a str saying why it is
    unreadable (templates whose userData is not known yet are left out)."""
    return ((lt, config) for lt, _, config in host_boot(resources) if config is not None)


def runcmd_commands(cloud_init: Mapping[str, Any]) -> list[list[str]]:
    """Each command of runcmd as words, in the order the host runs them: an entry (a list or a string,
    also `sh -c '...'`) is split into its commands at `;`, `&`, `|` and newlines."""
    commands = []
    for cmd in as_list(cloud_init.get("runcmd")):
        text = " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd)
        for segment in re.split(r"[;&|\n]", text):
            words = [w.strip("'\"") for w in segment.split()]
            if words:
                commands.append(words)
    return commands


def systemctl_verb(words: Sequence[str]) -> tuple[str, list[str]] | None:
    """(verb, units) of a `systemctl` command (options dropped, `.service` removed); None for any other."""
    if "systemctl" not in words:
        return None
    args = [w for w in words[list(words).index("systemctl") + 1 :] if not w.startswith("-")]
    return (args[0], [a.removesuffix(".service") for a in args[1:]]) if args else None


def enabled_services(cloud_init: Mapping[str, Any]) -> list[str]:
    """The units `systemctl enable` names anywhere in runcmd (also inside `sh -c '...'`)."""
    found = []
    for words in runcmd_commands(cloud_init):
        call = systemctl_verb(words)
        if call is not None and call[0] == "enable":
            found += call[1]
    return found
