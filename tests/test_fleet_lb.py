"""The fleet, the load balancer, tags and names, over every stack's recorded graph.

Each guard is a function returning the violations it finds (naming the resource); each has a
test over every stack that finds none, and a test that breaks it (a settings variant or a
transform of the recorded inputs) and checks that the guard catches it.

What a compliance rule checks (dedicated hosts, IMDSv2, no public IP or SSH key, ingress only from
the load balancer, TLS listeners and target groups, two hosts in two zones on ELB health, no plain
secrets) is not checked again here: the rules in policy/rules/ and their broken twins in
tests/test_policy_rules.py are the test. The guards here check what no rule does: encrypted disks,
the instance profile and role, the zone count per environment, rolling updates, tags, names, parents.
What mocks cannot prove (that AWS accepts these inputs, that hosts boot) is not claimed here.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from components.fleet import HOST_SECRET_VERSION_TAG, TOKEN_CONFIG_VERSION_TAG, TOKEN_SIGNING_KEY_VERSION_TAG
from fleet.engine import Recording, debian_ami_id, record
from host.contract import DEBIAN_SUITES, GATE_HEALTH_PATH, REGISTRY_HEALTH_CODES, TOKEN_HEALTH_PATH
from infra.settings import load_stack_settings, protected_namespaces
from policy.graph import Res, host_boot, is_secret, unwrap
from policy.rules import rule_by_id
from tests.helpers import STACKS, recording

REQUIRED_TAGS = {"environment", "team", "owner", "stack", "managed-by"}


# The registry hosts' launch template and group (the scanner workers have their own: tests/test_scanning_graph.py).
FLEET_DEFAULTS = {"aws:ec2/launchTemplate:LaunchTemplate": "fleet-lt", "aws:autoscaling/group:Group": "fleet-asg"}


def one(rec: Recording, type_: str, name: str | None = None) -> Res:
    name = name or FLEET_DEFAULTS.get(type_)
    found = [r for r in rec.of_type(type_) if name is None or r.name == name]
    assert len(found) == 1, f"{rec.stack}: expected one {type_} {name or ''}, found {[r.name for r in found]}"
    return found[0]


def registry_config(rec: Recording) -> dict[str, Any]:
    """The registry config.yml in the launch template's user-data (read by the policy's graph reader)."""
    ((lt, _, config),) = host_boot(rec.resources)
    assert not is_secret(lt.inputs["userData"]), "user-data is a secret output: a secret value flowed into it"
    assert isinstance(config, dict), f"{lt.name}: {config}"
    return config


def transformed(rec: Recording, name: str, change: Callable[[dict[str, Any]], None]) -> Recording:
    """A copy of the recording with one resource's inputs changed (a broken variant)."""
    inputs = copy.deepcopy(dict(rec.named(name).inputs))
    change(inputs)
    return rec.replaced(name, inputs=inputs)


# --- guards ---------------------------------------------------------------------------------


def launch_template_violations(rec: Recording) -> list[str]:
    """Encrypted disks and an instance profile (IMDSv2, public IPs and SSH keys: rule hosts-private)."""
    lt = one(rec, "aws:ec2/launchTemplate:LaunchTemplate")
    i = unwrap(lt.inputs)
    out = []
    for bdm in i.get("blockDeviceMappings", []):
        if str(bdm.get("ebs", {}).get("encrypted")).lower() != "true":
            out.append(f"{lt.name}: volume {bdm.get('deviceName')} not encrypted")
    if not i.get("blockDeviceMappings"):
        out.append(f"{lt.name}: root volume not declared (so not known to be encrypted)")
    if not i.get("iamInstanceProfile"):
        out.append(f"{lt.name}: no instance profile (SSM needs one)")
    return out


def asg_violations(rec: Recording) -> list[str]:
    """Three zones in prod, private subnets, refresh on template change, hosts in every target group
    (two hosts in two zones on ELB health: rule fleet-replicated)."""
    settings = load_stack_settings(rec.stack)
    asg = one(rec, "aws:autoscaling/group:Group")
    lt = one(rec, "aws:ec2/launchTemplate:LaunchTemplate")
    i = asg.inputs
    out = []
    private = {r.id for r in rec.of_type("aws:ec2/subnet:Subnet") if "private" in r.name}
    subnets = set(i.get("vpcZoneIdentifiers", []))
    zones_needed = 3 if settings.environment == "prod" else 2
    if len(subnets) < zones_needed:
        out.append(f"{asg.name}: spans {len(subnets)} subnets, needs {zones_needed} zones")
    if not subnets <= private:
        out.append(f"{asg.name}: uses subnets that are not private")
    version = i.get("launchTemplate", {}).get("version")
    if version in ("$Latest", "$Default") or version != str(lt.outputs.get("latestVersion")):
        out.append(f"{asg.name}: launch template version {version!r} is not the template's latest_version")
    if not i.get("instanceRefresh"):
        out.append(f"{asg.name}: no instance refresh")
    registered = set(i.get("targetGroupArns") or [])
    groups = {tg.name: tg.outputs["arn"] for tg in rec.of_type("aws:lb/targetGroup:TargetGroup")}
    for name, arn in sorted(groups.items()):
        if arn not in registered:
            out.append(f"{asg.name}: hosts not registered in target group {name}")
    if not registered:
        out.append(f"{asg.name}: not registered with the load balancer")
    return out


def instance_policy_violations(rec: Recording) -> list[str]:
    """Practice 7: the host role touches only its bucket, its key and its own secrets."""
    policy = json.loads(one(rec, "aws:iam/rolePolicy:RolePolicy", "fleet-role-policy").inputs["policy"])
    bucket = one(rec, "aws:s3/bucket:Bucket", "storage-primary").outputs["arn"]
    secrets = {r.outputs["arn"] for r in rec.of_type("aws:secretsmanager/secret:Secret")}
    tables = {r.outputs["arn"] for r in rec.of_type("aws:dynamodb/table:Table")}
    out = []
    for st in policy["Statement"]:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for res in resources:
            if res == "*" or res.endswith(":*"):
                out.append(f"fleet-role-policy: {st.get('Sid')} on every resource")
            if any(a.startswith("s3:") for a in actions) and res not in (bucket, f"{bucket}/*"):
                out.append(f"fleet-role-policy: S3 access to {res}")
            if any(a.startswith("secretsmanager:") for a in actions) and res not in secrets:
                out.append(f"fleet-role-policy: secret {res} is not the fleet's")
            if any(a.startswith("dynamodb:") for a in actions) and res not in tables:
                out.append(f"fleet-role-policy: DynamoDB access to {res}")
        if any(a.endswith("*") for a in actions):
            out.append(f"fleet-role-policy: wildcard action in {st.get('Sid')}")
    return out


def load_balancer_violations(rec: Recording) -> list[str]:
    """The validated certificate, the registry's health check, invalid headers dropped, access logs
    (HTTPS listeners, the HTTP redirect and HTTPS to the hosts: rules tls-listeners and tls-to-hosts)."""
    out = []
    https = one(rec, "aws:lb/listener:Listener", "lb-https").inputs
    validation = one(rec, "aws:acm/certificateValidation:CertificateValidation", "registry-cert-validation")
    if https.get("certificateArn") != validation.outputs.get("certificateArn"):
        out.append("lb-https: certificate is not the DNS-validated one")
    tg = one(rec, "aws:lb/targetGroup:TargetGroup", "lb-tg").inputs
    if tg.get("healthCheck", {}).get("path") != "/":
        out.append("lb-tg: health check is not the registry's /")
    alb = one(rec, "aws:lb/loadBalancer:LoadBalancer").inputs
    if not alb.get("dropInvalidHeaderFields"):
        out.append("lb-alb: keeps invalid headers")
    if not alb.get("accessLogs", {}).get("enabled"):
        out.append("lb-alb: no access logs")
    return out


def tag_violations(rec: Recording) -> list[str]:
    out = []
    for r in rec.resources:
        if not r.custom or not taggable(r.type):
            continue
        tags = r.inputs.get("tags")
        if r.type == "aws:autoscaling/group:Group":
            keys = {t["key"] for t in tags or [] if t.get("propagateAtLaunch")}
        else:
            keys = set(tags or {})
        if not keys >= REQUIRED_TAGS:
            out.append(f"{r.name} ({r.type}): missing tags {sorted(REQUIRED_TAGS - keys)}")
    return out


@functools.cache
def taggable(type_: str) -> bool:
    """Whether the provider's resource accepts `tags` (read from the SDK, not a hand list)."""
    package, module_path, _ = type_.split(":")
    if package != "aws":
        return False
    module, cls = module_path.split("/")
    try:
        resource = getattr(importlib.import_module(f"pulumi_aws.{module.replace('-', '_')}"), cls[0].upper() + cls[1:])
    except (ImportError, AttributeError):
        return False
    return "tags" in inspect.signature(resource._internal_init).parameters


def name_violations(rec: Recording) -> list[str]:
    counts = Counter(r.name for r in rec.resources)
    return [f"{name}: used by {n} resources" for name, n in counts.items() if n > 1]


def parent_violations(rec: Recording) -> list[str]:
    """Every resource below a component except providers (parent=self everywhere)."""
    out = []
    for r in rec.resources:
        if r.type.startswith("pulumi:providers:") or (r.type.startswith("registry-fleet:") and r.parent is None):
            continue
        parent = rec.by_urn(r.parent) if r.parent else None
        if parent is None or not parent.type.startswith("registry-fleet:"):
            out.append(f"{r.name}: not a child of a registry-fleet component")
    return out


GUARDS: dict[str, Callable[[Recording], list[str]]] = {
    "launch template": launch_template_violations,
    "auto scaling group": asg_violations,
    "instance policy": instance_policy_violations,
    "load balancer": load_balancer_violations,
    "tags": tag_violations,
    "unique names": name_violations,
    "parents": parent_violations,
}


# --- every stack passes every guard ---------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("guard", list(GUARDS))
def test_stack_passes_guard(stack: str, guard: str) -> None:
    assert GUARDS[guard](recording(stack)) == []


# --- each guard catches its broken variant --------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda i: i["blockDeviceMappings"][0]["ebs"].update(encrypted="false"), "not encrypted"),
        (lambda i: i.pop("blockDeviceMappings"), "root volume not declared"),
        (lambda i: i.pop("iamInstanceProfile"), "no instance profile"),
    ],
)
def test_launch_template_weakness_is_caught(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    found = launch_template_violations(transformed(recording("dev"), "fleet-lt", change))
    assert any(expected in v and v.startswith("fleet-lt") for v in found), found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda i: i["launchTemplate"].update(version="$Latest"), "not the template's latest_version"),
        (lambda i: i.pop("instanceRefresh"), "no instance refresh"),
        (lambda i: i.update(targetGroupArns=i["targetGroupArns"][1:]), "hosts not registered in target group lb-tg"),
    ],
)
def test_fleet_weakness_is_caught(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    found = asg_violations(transformed(recording("dev"), "fleet-asg", change))
    assert any(expected in v and v.startswith("fleet-asg") for v in found), found


def test_prod_fleet_needs_three_zones() -> None:
    def two_zones(i: dict[str, Any]) -> None:
        i["vpcZoneIdentifiers"] = i["vpcZoneIdentifiers"][:2]

    assert any("needs 3 zones" in v for v in asg_violations(transformed(recording("prod"), "fleet-asg", two_zones)))


def test_broad_instance_policy_is_caught() -> None:
    def widen(i: dict[str, Any]) -> None:
        policy = json.loads(i["policy"])
        policy["Statement"][1]["Resource"] = "arn:aws:s3:::*/*"
        i["policy"] = json.dumps(policy)

    found = instance_policy_violations(transformed(recording("dev"), "fleet-role-policy", widen))
    assert found == ["fleet-role-policy: S3 access to arn:aws:s3:::*/*"]


def test_secret_values_are_wrapped_as_secrets_in_secrets_manager() -> None:
    versions = recording("prod").of_type("aws:secretsmanager/secretVersion:SecretVersion")
    assert {v.name for v in versions} >= {
        "fleet-http-secret-value",
        "fleet-tls-key-value",
        "fleet-cloudfront-key-value",
        "access-token-config-value",
        "access-token-signing-key-value",
    }
    assert all(is_secret(v.inputs["secretString"]) for v in versions)


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("lb-tg", lambda i: i["healthCheck"].update(path="/v2/"), "lb-tg: health check"),
        ("lb-alb", lambda i: i.update(dropInvalidHeaderFields=False), "lb-alb: keeps invalid headers"),
        ("lb-https", lambda i: i.update(certificateArn="arn:aws:acm:x"), "lb-https: certificate is not"),
    ],
)
def test_load_balancer_weakness_is_caught(name: str, change: Callable[[dict[str, Any]], None], expected: str) -> None:
    found = load_balancer_violations(transformed(recording("dev"), name, change))
    assert any(v.startswith(expected) for v in found), found


def test_missing_tags_are_caught() -> None:
    found = tag_violations(transformed(recording("dev"), "storage-key", lambda i: i["tags"].pop("team")))
    assert found == ["storage-key (aws:kms/key:Key): missing tags ['team']"]


def test_taggable_is_read_from_the_sdk() -> None:
    assert taggable("aws:s3/bucket:Bucket") and taggable("aws:kms/key:Key")
    assert not taggable("aws:s3/bucketPolicy:BucketPolicy") and not taggable("tls:index/privateKey:PrivateKey")


def test_duplicate_names_are_caught() -> None:
    rec = copy.deepcopy(recording("dev"))
    rec.resources.append(rec.named("storage-key"))
    assert name_violations(rec) == ["storage-key: used by 2 resources"]


def test_orphan_resource_is_caught() -> None:
    rec = recording("dev").replaced("fleet-sg", parent=None)
    assert parent_violations(rec) == ["fleet-sg: not a child of a registry-fleet component"]


# --- properties read straight off the graph ---------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_providers_target_the_configured_regions(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    regions = {r.name: r.inputs.get("region") for r in rec.of_type("pulumi:providers:aws")}
    assert regions["aws-primary"] == s.region and regions["aws-replica"] == s.replica_region


@pytest.mark.parametrize("stack", STACKS)
def test_registry_config_has_s3_tls_and_health(stack: str) -> None:
    config = registry_config(recording(stack))
    s3 = config["storage"]["s3"]
    assert s3["encrypt"] is True and s3["keyid"].startswith("arn:aws:kms:") and "accesskey" not in s3
    assert config["http"]["tls"]["certificate"] and config["http"]["tls"]["key"]
    assert "secret" not in config["http"]
    assert config["health"] == {"storagedriver": {"enabled": True, "interval": "5s", "threshold": 3}}
    assert config["http"]["host"] == f"https://{load_stack_settings(stack).registry_host}"


def test_registry_config_gets_the_cloudfront_middleware_from_the_cdn() -> None:
    rec = recording("prod")
    (middleware,) = registry_config(rec)["middleware"]["storage"]
    assert middleware["name"] == "cloudfront"
    options = middleware["options"]
    assert options["keypairid"] == one(rec, "aws:cloudfront/publicKey:PublicKey").id
    assert options["baseurl"] == "https://blobs.example.com/"
    assert options["duration"] == f"{load_stack_settings('prod').cdn.signed_url_seconds}s"
    assert not options["privatekey"].startswith("-----"), "the key is a file path, never the PEM"


def test_internet_facing_variant_uses_public_subnets(record_variant: Callable[..., Recording]) -> None:
    rec = record_variant(
        "staging", {"network": {"loadBalancerScheme": "internet-facing", "allowedCidrs": ["0.0.0.0/0"]}}
    )
    alb = one(rec, "aws:lb/loadBalancer:LoadBalancer").inputs
    public = {r.id for r in rec.of_type("aws:ec2/subnet:Subnet") if "public" in r.name}
    assert alb["internal"] is False and set(alb["subnets"]) == public
    assert rule_by_id("hosts-ingress-from-lb-only").check(rec.resources) == [], "hosts stay behind the load balancer"


@pytest.mark.parametrize("stack", STACKS)
def test_load_balancer_admits_only_allowed_cidrs(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    lb_sg = one(rec, "aws:ec2/securityGroup:SecurityGroup", "lb-sg").id
    rules = [r for r in rec.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")]
    admitted = {r.inputs.get("cidrIpv4") for r in rules if r.inputs["securityGroupId"] == lb_sg}
    # Besides the ranges, only the scanner's workers and database mirror (by security group, on 443).
    groups = [r for r in rules if r.inputs["securityGroupId"] == lb_sg and "cidrIpv4" not in r.inputs]
    scanners = {one(rec, "aws:ec2/securityGroup:SecurityGroup", f"scanning-{n}-sg").id for n in ("worker", "mirror")}
    assert admitted - {None} == set(s.network.allowed_cidrs)
    assert {r.inputs["referencedSecurityGroupId"] for r in groups} == scanners
    assert {(r.inputs["fromPort"], r.inputs["toPort"]) for r in groups} == {(443, 443)}


@pytest.mark.parametrize("stack", STACKS)
def test_stateful_resources_are_protected_outside_dev(stack: str) -> None:
    alb = one(recording(stack), "aws:lb/loadBalancer:LoadBalancer").inputs
    assert alb["enableDeletionProtection"] is (load_stack_settings(stack).environment != "dev")


def test_an_empty_program_fails_instead_of_passing_silently() -> None:
    with pytest.raises(RuntimeError, match="registered no resource"):
        record(load_stack_settings("dev"), build=lambda _s: {})


def test_a_stack_pinned_to_an_account_refuses_other_credentials() -> None:
    pinned = {
        r.name: r.inputs.get("allowedAccountIds") for r in recording("payments-prod").of_type("pulumi:providers:aws")
    }
    # Provider configuration reaches the engine JSON-encoded.
    assert pinned and all(json.loads(ids) == ["111122223333"] for ids in pinned.values()), pinned
    free = [r.inputs.get("allowedAccountIds") for r in recording("dev").of_type("pulumi:providers:aws")]
    assert free and all(ids is None for ids in free), free


def test_a_pinned_image_is_used_as_is(record_variant: Callable[..., Recording]) -> None:
    rec = record_variant("dev", {"fleet": {"imageId": "ami-0123456789abcdef0"}})
    assert one(rec, "aws:ec2/launchTemplate:LaunchTemplate").inputs["imageId"] == "ami-0123456789abcdef0"


@pytest.mark.parametrize("stack", STACKS)
def test_without_a_pin_the_newest_debian_13_image_for_the_architecture_is_used(stack: str) -> None:
    """The mock answers an AMI lookup only for Debian's account and one `debian-<release>-<arch>-*` name."""
    s = load_stack_settings(stack)
    assert s.fleet.debian_release == 13 == max(DEBIAN_SUITES)
    image = one(recording(stack), "aws:ec2/launchTemplate:LaunchTemplate").inputs["imageId"]
    assert image == debian_ami_id(s.region, 13, s.fleet.architecture)


def test_debian_12_stays_a_stack_setting(record_variant: Callable[..., Recording]) -> None:
    rec = record_variant("staging", {"fleet": {"debianRelease": 12}})
    image = one(rec, "aws:ec2/launchTemplate:LaunchTemplate").inputs["imageId"]
    assert image == debian_ami_id("eu-west-1", 12, "arm64") != debian_ami_id("eu-west-1", 13, "arm64")


# --- rotating a secret rolls the fleet ----------------------------------------------------------


def instance_tags(rec: Recording) -> dict[str, Any]:
    lt = one(rec, "aws:ec2/launchTemplate:LaunchTemplate")
    (spec,) = [t for t in lt.inputs["tagSpecifications"] if t["resourceType"] == "instance"]
    return dict(spec["tags"])


@pytest.mark.parametrize("stack", STACKS)
def test_every_secret_a_host_reads_is_tagged_on_its_instances_by_version(stack: str) -> None:
    """A host reads its secrets at each registry start: the version tags put each one into the launch
    template, so a new version is a new template version, which starts an instance refresh."""
    rec = recording(stack)
    tags = instance_tags(rec)
    settings = load_stack_settings(stack)
    fleet = rec.named("fleet").urn
    secrets = [s.name for s in rec.of_type("aws:secretsmanager/secret:Secret") if s.parent == fleet]
    labels = sorted(name.removeprefix("fleet-") for name in secrets)
    assert labels == sorted(["http-secret", "tls-key", *(["cloudfront-key"] if settings.cdn.enabled else [])])
    for label in labels:
        version = rec.named(f"fleet-{label}-value").outputs["versionId"]
        assert tags[HOST_SECRET_VERSION_TAG.format(label=label)] == version, label
    # Token mode: the service's config and its signing key's current generation.
    assert tags[TOKEN_CONFIG_VERSION_TAG] == rec.named("access-token-config-value").outputs["versionId"]
    assert TOKEN_SIGNING_KEY_VERSION_TAG in tags
    assert not [v for v in tags.values() if "mocksecret" in str(v)], "a tag holds a secret value"


def test_rotating_the_http_secret_changes_the_launch_template(record_variant: Callable[..., Recording]) -> None:
    before, after = recording("dev"), record_variant("dev", {"fleet": {"httpSecretRotation": 2}})
    # Rotation 1 has no keepers: a stack made before the setting keeps its value (no replacement on upgrade).
    assert "keepers" not in before.named("fleet-http-secret-random").inputs
    assert after.named("fleet-http-secret-random").inputs["keepers"] == {"rotation": "2"}
    key = HOST_SECRET_VERSION_TAG.format(label="http-secret")
    assert instance_tags(after)[key] != instance_tags(before)[key]
    assert (
        instance_tags(after)[HOST_SECRET_VERSION_TAG.format(label="tls-key")]
        == instance_tags(before)[HOST_SECRET_VERSION_TAG.format(label="tls-key")]
    )
    lt_before = one(before, "aws:ec2/launchTemplate:LaunchTemplate").inputs
    lt_after = one(after, "aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert lt_after["tagSpecifications"] != lt_before["tagSpecifications"]
    # The group follows the template's latest version, not $Latest: a new version starts a refresh.
    asg = one(after, "aws:autoscaling/group:Group").inputs
    assert asg["launchTemplate"]["version"] != "$Latest" and asg["instanceRefresh"]["strategy"] == "Rolling"


def test_a_new_token_signing_generation_changes_the_launch_template(
    record_variant: Callable[..., Recording],
) -> None:
    before = instance_tags(recording("dev"))[TOKEN_SIGNING_KEY_VERSION_TAG]
    rotated = record_variant("dev", {"access": {"tokenSigning": {"generations": [1, 2], "current": 2}}})
    assert instance_tags(rotated)[TOKEN_SIGNING_KEY_VERSION_TAG] != before


# --- health: what replaces a host ----------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_hosts_are_replaced_on_their_own_health_only(stack: str) -> None:
    """The group replaces a host that fails a load balancer check (ELB health) in any of its target groups:
    the registry's `/` and the token service's /healthz (answered by the service itself). Neither fails on
    S3, KMS or the directory, which every host shares: the registry's storage check answers 503, which its
    target group counts as alive."""
    rec = recording(stack)
    asg = one(rec, "aws:autoscaling/group:Group").inputs
    groups = {tg.name: tg for tg in rec.of_type("aws:lb/targetGroup:TargetGroup")}
    assert asg["healthCheckType"] == "ELB"
    assert sorted(asg["targetGroupArns"]) == sorted(tg.outputs["arn"] for tg in groups.values())
    gate = {"lb-gate-tg": GATE_HEALTH_PATH} if protected_namespaces(load_stack_settings(stack)) else {}
    assert {name: tg.inputs["healthCheck"]["path"] for name, tg in groups.items()} == {
        "lb-tg": "/",
        "lb-token-tg": TOKEN_HEALTH_PATH,
        **gate,  # the gate answers /healthz itself, like the token service
    }
    assert registry_config(rec)["health"]["storagedriver"]["enabled"] is True
    matchers = {name: tg.inputs["healthCheck"]["matcher"] for name, tg in groups.items()}
    assert matchers.pop("lb-tg") == REGISTRY_HEALTH_CODES  # the registry's storage check answers 503
    assert set(matchers.values()) == {"200"}, matchers  # the token service and the gate: 200 only
    assert REGISTRY_HEALTH_CODES == "200,503"
