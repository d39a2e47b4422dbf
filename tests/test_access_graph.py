"""Token-mode access over every stack's recorded graph (practices 3 and 4), and htpasswd as a mode.

What is proven here: the registry's `auth.token`, the token service's config and the stack outputs
name one realm, service and issuer; the load balancer routes the realm path to the service's own
target group (HTTPS health on /healthz) in which the hosts register; security groups open exactly the
service's port and the directory's; no secret value (generated passwords, the stack's secret inputs,
private keys) reaches a plain input, user-data or a plain output; every robot has its own secret; the
service's code in the bucket is byte-for-byte `build_artifact()`. Secret inputs are checked, by key
and never by value, before anything is registered.

What mocks cannot prove: that AWS accepts these inputs, that hosts boot, that the service answers
(the lab and tests/test_auth_* run the service for real).
"""

from __future__ import annotations

import ast
import base64
import copy
import datetime
import functools
import itertools
import json
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from auth.local import robot_token_hash
from auth.shared_lockout import TABLE_ACTIONS
from components.access import SIGNING_CERT_VALIDITY_HOURS
from components.errors import ComponentInputError
from components.fleet import TOKEN_CONFIG_VERSION_TAG, TOKEN_SIGNING_KEY_VERSION_TAG
from components.network import subnet_plan
from fleet.audit import score
from fleet.engine import ACCOUNT_ID as ACCOUNT
from fleet.engine import Recording, RecordingMocks, RecordingMonitor, fake_secret, record
from host.artifact import build_artifact
from host.contract import (
    GATE_PORT,
    SYSTEM_CA_BUNDLE,
    TOKEN_HEALTH_PATH,
    TOKEN_PATH,
    TOKEN_SERVICE_PORT,
    TOKEN_SIGNING_CERT_FILE,
    TOKEN_SIGNING_KEY_FILE,
    TOKEN_TRUST_BUNDLE_FILE,
)
from host.scan_config import SCAN_ROBOTS
from infra.program import build, name_prefix
from infra.secrets import (
    LDAP_PASSWORD_KEY,
    USER_HASHES_KEY,
    AccessSecrets,
    check_access_secrets,
    placeholder_access_secrets,
    placeholder_bcrypt_hash,
)
from infra.settings import (
    PROJECT,
    Settings,
    SettingsError,
    TokenAccess,
    load_stack_settings,
    protected_namespaces,
    settings_from_config,
    stack_overrides,
)
from infra.token_service import token_service_spec
from policy.graph import Res, as_list, is_secret, unwrap, user_data_text
from policy.rules import RULES
from tests.helpers import STACKS, recording, stack_config

SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
SECRET = "aws:secretsmanager/secret:Secret"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
LISTENER_RULE = "aws:lb/listenerRule:ListenerRule"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
HTPASSWD_ACCESS = {"mode": "htpasswd"}  # the whole block: teams, robots, ldap... are token mode only
AUDIT_DAY = datetime.date(2026, 11, 28)  # before the stacks' waivers expire


def settings(rec: Recording) -> Settings:
    return load_stack_settings(rec.stack)


def cloud_init(rec: Recording) -> dict[str, Any]:
    raw = rec.named("fleet-lt").inputs["userData"]
    assert not is_secret(raw), "fleet-lt: user-data is a secret: a secret value flowed into it"
    doc = yaml.safe_load(user_data_text(raw))
    assert isinstance(doc, dict)
    return doc


def host_files(rec: Recording) -> dict[str, str]:
    return {f["path"]: f["content"] for f in cloud_init(rec)["write_files"]}


def registry_config(rec: Recording) -> dict[str, Any]:
    doc = yaml.safe_load(host_files(rec)["/etc/docker/registry/config.yml"])
    assert isinstance(doc, dict)
    return doc


def token_config(rec: Recording) -> dict[str, Any]:
    value = rec.named("access-token-config-value").inputs["secretString"]
    assert is_secret(value), "access-token-config-value: secretString is not a secret"
    doc = json.loads(unwrap(value))
    assert isinstance(doc, dict)
    return doc


def arn(rec: Recording, name: str) -> str:
    return str(rec.named(name).outputs["arn"])


def htpasswd_settings() -> Settings:
    """dev with access mode htpasswd (the whole access block replaced: merging cannot empty teams)."""
    return settings_from_config("dev", {**stack_config("dev"), "access": HTPASSWD_ACCESS})


@functools.cache
def htpasswd_recording() -> Recording:
    return record(htpasswd_settings())


# --- one realm, one service, one issuer ------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_registry_config_outputs_and_token_config_name_one_realm_service_and_issuer(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    auth = registry_config(rec)["auth"]
    assert set(auth) == {"token"}, f"{stack}: fleet-lt registry auth is {sorted(auth)}"
    token = auth["token"]
    assert token["realm"] == rec.outputs["tokenRealm"] == f"https://{s.registry_host}{TOKEN_PATH}"
    assert token["service"] == rec.outputs["tokenService"] == s.registry_host
    assert token["issuer"] == rec.outputs["tokenIssuer"] == s.token_issuer
    assert token["rootcertbundle"] == TOKEN_TRUST_BUNDLE_FILE
    service = token_config(rec)
    assert (service["issuer"], service["service"]) == (token["issuer"], token["service"])
    assert (service["signing_key"], service["signing_cert"]) == (TOKEN_SIGNING_KEY_FILE, TOKEN_SIGNING_CERT_FILE)
    assert service["token_lifetime_seconds"] == s.access.token_lifetime_seconds
    assert rec.outputs["accessMode"] == "token"


@pytest.mark.parametrize("stack", STACKS)
def test_the_registry_trusts_the_certificate_of_the_key_the_service_signs_with(stack: str) -> None:
    rec = recording(stack)
    key, cert = rec.named("access-signing-key"), rec.named("access-signing-cert")
    assert (key.inputs["algorithm"], key.inputs["rsaBits"]) == ("RSA", 2048)
    assert unwrap(cert.inputs["privateKeyPem"]) == key.outputs["privateKeyPem"]
    assert cert.inputs["allowedUses"] == ["digital_signature"]
    assert stack in cert.inputs["subject"]["commonName"]
    assert cert.inputs["validityPeriodHours"] == SIGNING_CERT_VALIDITY_HOURS >= 5 * 365 * 24
    assert "earlyRenewalHours" not in cert.inputs, "rotation is deliberate (two steps), never automatic"
    # One generation: the service's certificate and the registry's bundle (user-data: public) are both it.
    assert signing_resources(rec) == (["access-signing-key"], ["access-signing-cert"])
    assert host_files(rec)[TOKEN_SIGNING_CERT_FILE] == cert.outputs["certPem"]
    assert host_files(rec)[TOKEN_TRUST_BUNDLE_FILE] == cert.outputs["certPem"]
    version = rec.named("access-token-signing-key-value").inputs["secretString"]
    assert is_secret(version) and unwrap(version) == key.outputs["privateKeyPem"]


@pytest.mark.parametrize("stack", STACKS)
def test_token_config_holds_the_users_robots_directory_and_proxies(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    placeholders = placeholder_access_secrets(s)
    config = token_config(rec)
    assert config["users"] == {u: {"password_hash": placeholders.user_hashes[u]} for u in s.access.users}
    hashes = {r: config["policy"]["robots"][r]["token_hash"] for r in s.access.robots}
    # The fast form: SHA-256 of the generated token (auth/local.py), never the token, never bcrypt.
    tokens = {r: rec.named(f"access-robot-{r}-random").outputs["result"] for r in s.access.robots}
    assert hashes == {r: robot_token_hash(t) for r, t in tokens.items()}
    assert all(h.startswith("sha256:") and tokens[r] not in json.dumps(config) for r, h in hashes.items())
    assert s.access.ldap is not None
    assert config["ldap"]["bind_password"] == placeholders.ldap_bind_password
    assert config["ldap"]["ca_file"] == SYSTEM_CA_BUNDLE, "no CA in the stack: Debian's bundle"
    # Internal load balancer: its nodes are in the private subnets, and add X-Forwarded-For.
    assert config["trusted_proxies"] == subnet_plan(s.network.cidr, s.network.az_count)[1]


def test_an_internet_facing_load_balancer_is_trusted_from_the_public_subnets(
    record_variant: Callable[..., Recording],
) -> None:
    rec = record_variant(
        "staging", {"network": {"loadBalancerScheme": "internet-facing", "allowedCidrs": ["0.0.0.0/0"]}}
    )
    public = sorted(r.inputs["cidrBlock"] for r in rec.of_type("aws:ec2/subnet:Subnet") if "public" in r.name)
    assert sorted(token_config(rec)["trusted_proxies"]) == public


# --- the load balancer routes the realm to the service ---------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_token_target_group_reaches_the_service_over_https_and_checks_its_health(stack: str) -> None:
    tg = recording(stack).named("lb-token-tg").inputs
    assert (tg["port"], tg["protocol"], tg["targetType"]) == (TOKEN_SERVICE_PORT, "HTTPS", "instance")
    check = tg["healthCheck"]
    assert (check["protocol"], check["path"], check["matcher"]) == ("HTTPS", TOKEN_HEALTH_PATH, "200")
    assert check["port"] == "traffic-port" and check["enabled"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_https_listener_sends_exactly_the_realm_path_to_the_token_target_group(stack: str) -> None:
    rec = recording(stack)
    (route,) = [r for r in rec.of_type(LISTENER_RULE) if not r.name.startswith("lb-gate-")]  # the gate's: test_signing
    assert route.name == "lb-token-route"
    assert route.inputs["listenerArn"] == arn(rec, "lb-https")
    assert route.inputs["conditions"] == [{"pathPattern": {"values": [TOKEN_PATH]}}]
    assert route.inputs["actions"] == [{"type": "forward", "targetGroupArn": arn(rec, "lb-token-tg")}]


@pytest.mark.parametrize("stack", STACKS)
def test_hosts_register_in_the_registry_token_and_gate_target_groups(stack: str) -> None:
    rec = recording(stack)
    groups = rec.named("fleet-asg").inputs["targetGroupArns"]
    gate = [arn(rec, "lb-gate-tg")] if protected_namespaces(settings(rec)) else []
    assert groups == [arn(rec, "lb-tg"), arn(rec, "lb-token-tg"), *gate]


def ports(rule: Res) -> tuple[Any, Any]:
    return rule.inputs.get("fromPort"), rule.inputs.get("toPort")


@pytest.mark.parametrize("stack", STACKS)
def test_security_groups_open_the_service_port_between_load_balancer_and_hosts_only(stack: str) -> None:
    rec = recording(stack)
    lb_sg, host_sg = rec.named("lb-sg").id, rec.named("fleet-sg").id
    host_cidrs = subnet_plan(settings(rec).network.cidr, settings(rec).network.az_count)[1]
    out = [r for r in rec.of_type(EGRESS) if r.inputs["securityGroupId"] == lb_sg]
    to_service = sorted(r.inputs["cidrIpv4"] for r in out if ports(r) == (TOKEN_SERVICE_PORT, TOKEN_SERVICE_PORT))
    assert to_service == sorted(host_cidrs)
    into_hosts = [r for r in rec.of_type(INGRESS) if r.inputs["securityGroupId"] == host_sg]
    service = [r for r in into_hosts if ports(r) == (TOKEN_SERVICE_PORT, TOKEN_SERVICE_PORT)]
    assert [(r.name, r.inputs.get("referencedSecurityGroupId"), r.inputs.get("cidrIpv4")) for r in service] == [
        ("fleet-in-token-from-lb", lb_sg, None)
    ]
    gate = [(GATE_PORT, GATE_PORT)] if protected_namespaces(settings(rec)) else []
    assert sorted(ports(r) for r in into_hosts) == [(5000, 5000), (TOKEN_SERVICE_PORT, TOKEN_SERVICE_PORT), *gate]


@pytest.mark.parametrize("stack", STACKS)
def test_hosts_reach_the_directory_only_on_its_port_and_ranges(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    assert s.access.ldap is not None
    host_sg = rec.named("fleet-sg").id
    out = [r for r in rec.of_type(EGRESS) if r.inputs["securityGroupId"] == host_sg]
    ldap = sorted((r.inputs["cidrIpv4"], *ports(r)) for r in out if r.name.startswith("fleet-out-ldap-"))
    assert ldap == sorted((c, s.access.ldap.port, s.access.ldap.port) for c in s.access.ldap.cidrs)
    assert s.access.ldap.port == 636  # ldaps://
    others = {(r.inputs["cidrIpv4"], *ports(r)) for r in out if not r.name.startswith("fleet-out-ldap-")}
    assert others == {("0.0.0.0/0", 443, 443)}


# --- secrets: stored as secrets, shown nowhere ----------------------------------------------------


def secret_values(rec: Recording, s: Settings) -> dict[str, str]:
    """Every secret value of the recording, named by where it comes from."""
    placeholders = placeholder_access_secrets(s)
    values = {f"{u} hash": h for u, h in placeholders.user_hashes.items()}
    if placeholders.ldap_bind_password:
        values["ldap password"] = placeholders.ldap_bind_password
    for pw in rec.of_type(RANDOM_PASSWORD):
        values[pw.name] = fake_secret(pw.name)
        values[f"{pw.name} hash"] = pw.outputs["bcryptHash"]
    for key in rec.of_type("tls:index/privateKey:PrivateKey"):
        values[key.name] = key.outputs["privateKeyPem"]
    values["a private key"] = "PRIVATE KEY"
    return values


def plain_strings(value: Any) -> Iterator[str]:
    if is_secret(value):
        return
    if isinstance(value, dict):
        for v in value.values():
            yield from plain_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from plain_strings(v)
    elif isinstance(value, str):
        yield value


def leaks(rec: Recording, s: Settings) -> list[str]:
    values = secret_values(rec, s)
    out = []
    for r in rec.resources:
        texts = list(plain_strings(r.inputs))
        if r.type == "aws:ec2/launchTemplate:LaunchTemplate":
            texts.append(user_data_text(r.inputs["userData"]))
        out += [f"{r.name}: {what}" for what, v in values.items() if any(v in t for t in texts)]
    for key, value in rec.outputs.items():
        if key not in rec.secret_outputs:
            out += [f"output {key}: {what}" for what, v in values.items() if v in json.dumps(value)]
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_value_in_a_plain_input_user_data_or_output(stack: str) -> None:
    rec = recording(stack)
    assert len(secret_values(rec, settings(rec))) > 8  # the check searches for something
    assert leaks(rec, settings(rec)) == []


def test_the_leak_check_catches_an_unwrapped_config() -> None:
    rec = copy.deepcopy(recording("dev"))
    version = rec.named("access-token-config-value")
    version.inputs["secretString"] = unwrap(version.inputs["secretString"])
    found = leaks(rec, settings(rec))
    assert (
        "access-token-config-value: ldap password" in found
        and "access-token-config-value: registry-admin hash" in found
    )


@pytest.mark.parametrize("stack", STACKS)
def test_every_access_secret_is_a_kms_encrypted_secret_of_the_stack(stack: str) -> None:
    rec = recording(stack)
    key = rec.named("storage-key").outputs["arn"]
    mine = [r for r in rec.of_type(SECRET) if r.name.startswith("access-")]
    assert {r.name for r in mine} >= {"access-token-config", "access-token-signing-key"}
    for secret in mine:
        assert secret.inputs["kmsKeyId"] == key, secret.name
        assert secret.inputs["namePrefix"].startswith(f"{name_prefix(settings(rec))}/"), secret.name
        version = rec.named(f"{secret.name}-value")
        assert version.inputs["secretId"] == secret.id and is_secret(version.inputs["secretString"]), version.name


@pytest.mark.parametrize("stack", STACKS)
def test_each_robot_has_a_generated_token_in_its_own_secret(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    prefix = name_prefix(s)
    assert rec.outputs["robotTokenSecretArns"] == {r: arn(rec, f"access-robot-{r}") for r in s.access.robots}
    for robot, robot_settings in s.access.robots.items():
        password = rec.named(f"access-robot-{robot}-random").inputs
        assert password["length"] >= 40 and password["special"] is False
        assert password["keepers"] == {"rotation": str(robot_settings.rotation)}
        assert rec.named(f"access-robot-{robot}").inputs["namePrefix"] == f"{prefix}/robots/{robot}-"
        value = rec.named(f"access-robot-{robot}-value").inputs["secretString"]
        assert is_secret(value) and unwrap(value) == rec.named(f"access-robot-{robot}-random").outputs["result"]
        assert str(unwrap(value)).startswith(fake_secret(f"access-robot-{robot}-random"))
    robots = [r for r in rec.of_type(RANDOM_PASSWORD) if r.name.startswith("access-robot-")]
    # The stack's robots, and the scanner's two (not an output: no CI reads their tokens).
    assert len(robots) == len(s.access.robots) + len(SCAN_ROBOTS)


@pytest.mark.parametrize("stack", STACKS)
def test_hosts_may_read_the_service_secrets_but_no_robot_token(stack: str) -> None:
    rec = recording(stack)
    policy = json.loads(rec.named("fleet-role-policy").inputs["policy"])
    (own,) = [st for st in policy["Statement"] if st["Sid"] == "OwnSecrets"]
    readable = set(own["Resource"])
    assert {
        arn(rec, "access-token-config"),
        arn(rec, "access-token-signing-key"),
        arn(rec, "fleet-tls-key"),
    } <= readable
    assert not {a for a in rec.outputs["robotTokenSecretArns"].values()} & readable
    assert readable <= {r.outputs["arn"] for r in rec.of_type(SECRET)}
    # The artifact: the hosts' object read on the registry bucket covers it.
    (objects,) = [st for st in policy["Statement"] if st["Sid"] == "RegistryObjects"]
    assert "s3:GetObject" in objects["Action"] and objects["Resource"] == f"{arn(rec, 'storage-primary')}/*"


def test_logical_names_of_keys_tokens_and_secrets_are_pinned() -> None:
    """A rename replaces: a new signing key (hosts mid-roll would refuse each other's tokens), new robot
    tokens (every CI job fails until it reads its new secret), new secret ARNs. Rename only with an alias."""
    rec = recording("staging")
    pinned = {
        "access": "registry-fleet:index:RegistryAccess",
        "access-signing-key": "tls:index/privateKey:PrivateKey",
        "access-signing-cert": "tls:index/selfSignedCert:SelfSignedCert",
        "access-token-signing-key": SECRET,
        "access-token-config": SECRET,
        "access-robot-ci-team-a": SECRET,
        "access-robot-ci-team-a-random": RANDOM_PASSWORD,
        "access-token-service-artifact": "aws:s3/bucketObjectv2:BucketObjectv2",
        "lb-token-tg": TARGET_GROUP,
        "lb-token-route": LISTENER_RULE,
    }
    assert {name: rec.named(name).type for name in pinned} == pinned


# --- the service's code ----------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_artifact_in_the_bucket_is_build_artifact_encrypted_with_the_registry_key(stack: str) -> None:
    rec, artifact = recording(stack), build_artifact()
    obj = rec.named("access-token-service-artifact").inputs
    assert base64.b64decode(obj["contentBase64"]) == artifact.content
    assert obj["key"] == artifact.key and artifact.sha256 in obj["key"]
    assert obj["bucket"] == rec.named("storage-primary").id
    assert (obj["serverSideEncryption"], obj["kmsKeyId"]) == ("aws:kms", rec.named("storage-key").outputs["arn"])
    assert set(obj["tags"]) >= {"environment", "team", "owner", "stack", "managed-by"}
    assert rec.named("access-token-service-artifact").retain_on_delete, "a rolled-back refresh still needs it"
    # Hosts install exactly that object and check its hash (the install script is in user-data).
    text = user_data_text(rec.named("fleet-lt").inputs["userData"])
    assert artifact.key in text and artifact.sha256 in text


# --- a new config rolls the fleet -----------------------------------------------------------------


def instance_tags(rec: Recording) -> dict[str, str]:
    (spec,) = [t for t in rec.named("fleet-lt").inputs["tagSpecifications"] if t["resourceType"] == "instance"]
    return dict(spec["tags"])


def test_hosts_are_tagged_with_the_config_version_they_booted_with() -> None:
    rec = recording("dev")
    assert instance_tags(rec)[TOKEN_CONFIG_VERSION_TAG] == rec.named("access-token-config-value").outputs["versionId"]


def test_rotating_a_robot_token_changes_the_config_and_so_rolls_the_fleet(
    record_variant: Callable[..., Recording],
) -> None:
    rotated = record_variant("dev", {"access": {"robots": {"ci-team-a": {"rotation": 2}}}})
    before = recording("dev")
    assert rotated.named("access-robot-ci-team-a-random").inputs["keepers"] == {"rotation": "2"}
    assert (
        token_config(rotated)["policy"]["robots"]["ci-team-a"] != token_config(before)["policy"]["robots"]["ci-team-a"]
    )
    assert instance_tags(rotated)[TOKEN_CONFIG_VERSION_TAG] != instance_tags(before)[TOKEN_CONFIG_VERSION_TAG]


# --- rotating the signing key: three runs, each rolling the fleet, no token refused -----------------

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
# access.tokenSigning per phase; "before" is the dev stack as it is (the Pulumi.yaml default).
PHASES: dict[str, dict[str, Any] | None] = {
    "before": None,
    "a-trust-both": {"generations": [1, 2], "current": 1},
    "b-sign-with-2": {"generations": [1, 2], "current": 2},
    "c-drop-1": {"generations": [2], "current": 2},
}
_phase_recordings: dict[str, Recording] = {}


def phase(name: str, record_variant: Callable[..., Recording]) -> Recording:
    """dev recorded in a rotation phase, once per session (as tests/helpers.py's `recording` does for stacks)."""
    if name not in _phase_recordings:
        signing = PHASES[name]
        rec = recording("dev") if signing is None else record_variant("dev", {"access": {"tokenSigning": signing}})
        _phase_recordings[name] = rec
    return _phase_recordings[name]


def signing_resources(rec: Recording) -> tuple[list[str], list[str]]:
    """The token signing keys and certificates (children of the access component), sorted by name:
    the engine registers them in no fixed order."""
    mine = [r for r in rec.resources if r.parent == rec.named("access").urn]
    return sorted(r.name for r in mine if r.type == PRIVATE_KEY), sorted(
        r.name for r in mine if r.type == SELF_SIGNED_CERT
    )


def cert_pem(rec: Recording, generation: int) -> str:
    name = "access-signing-cert" if generation == 1 else f"access-signing-cert-g{generation}"
    return str(rec.named(name).outputs["certPem"])


BOTH_KEYS, BOTH_CERTS = (
    ["access-signing-key", "access-signing-key-g2"],
    ["access-signing-cert", "access-signing-cert-g2"],
)


@pytest.mark.parametrize(
    ("name", "keys", "certs"),
    [
        ("before", ["access-signing-key"], ["access-signing-cert"]),
        ("a-trust-both", BOTH_KEYS, BOTH_CERTS),
        ("b-sign-with-2", BOTH_KEYS, BOTH_CERTS),
        ("c-drop-1", ["access-signing-key-g2"], ["access-signing-cert-g2"]),
    ],
)
def test_each_live_generation_has_its_key_and_certificate_and_generation_1_keeps_its_names(
    name: str, keys: list[str], certs: list[str], record_variant: Callable[..., Recording]
) -> None:
    rec = phase(name, record_variant)
    assert signing_resources(rec) == (keys, certs), f"{name}: access signing keys and certificates"
    for key_name, cert_name in zip(keys, certs, strict=True):
        key, cert = rec.named(key_name), rec.named(cert_name)
        assert (key.inputs["algorithm"], key.inputs["rsaBits"]) == ("RSA", 2048), key_name
        assert unwrap(cert.inputs["privateKeyPem"]) == key.outputs["privateKeyPem"], f"{cert_name} is not {key_name}'s"
        assert cert.inputs["validityPeriodHours"] == SIGNING_CERT_VALIDITY_HOURS, cert_name
        assert "earlyRenewalHours" not in cert.inputs, cert_name
    if "access-signing-cert" in certs:  # generation 1 keeps every input it had: nothing is re-issued
        assert rec.named("access-signing-cert").inputs == recording("dev").named("access-signing-cert").inputs
    assert len({rec.named(c).inputs["subject"]["commonName"] for c in certs}) == len(certs), "one subject each"


def key_secret(generation: int) -> str:
    return "access-token-signing-key" if generation == 1 else f"access-token-signing-key-g{generation}"


@pytest.mark.parametrize(
    ("name", "current", "live"),
    [("before", 1, [1]), ("a-trust-both", 1, [1, 2]), ("b-sign-with-2", 2, [1, 2]), ("c-drop-1", 2, [2])],
)
def test_each_generation_keeps_its_key_in_its_own_secret_and_hosts_read_the_current_one(
    name: str, current: int, live: list[int], record_variant: Callable[..., Recording]
) -> None:
    rec = phase(name, record_variant)
    assert sorted(r.name for r in rec.of_type(SECRET) if "signing" in r.name) == sorted(key_secret(g) for g in live)
    for generation in live:
        key = rec.named("access-signing-key" if generation == 1 else f"access-signing-key-g{generation}")
        version = rec.named(f"{key_secret(generation)}-value").inputs["secretString"]
        assert is_secret(version), f"{key_secret(generation)}-value: secretString is not a secret"
        assert unwrap(version) == key.outputs["privateKeyPem"], f"{name}: {key_secret(generation)} is not {key.name}'s"
    # The user-data names the current generation's secret: a host's key always matches the
    # certificate its own template wrote, whatever restarts or rollbacks happen mid-rotation.
    fetch = host_files(rec)["/usr/local/sbin/registry-fleet-fetch-secrets"]
    token_lines = [
        line for line in fetch.splitlines() if line.endswith(f"{TOKEN_SIGNING_KEY_FILE} 0640 root registry-token")
    ]
    assert token_lines == [
        f"write_secret {arn(rec, key_secret(current))} {TOKEN_SIGNING_KEY_FILE} 0640 root registry-token"
    ]
    # The hosts' role may read every live generation (hosts from the previous template read theirs).
    policy = json.loads(rec.named("fleet-role-policy").inputs["policy"])
    (own,) = [st for st in policy["Statement"] if st["Sid"] == "OwnSecrets"]
    assert {arn(rec, key_secret(g)) for g in live} <= set(own["Resource"]), name


@pytest.mark.parametrize(
    ("name", "current", "trusted"),
    [("before", 1, [1]), ("a-trust-both", 1, [1, 2]), ("b-sign-with-2", 2, [1, 2]), ("c-drop-1", 2, [2])],
)
def test_hosts_sign_with_the_current_certificate_and_trust_every_live_one(
    name: str, current: int, trusted: list[int], record_variant: Callable[..., Recording]
) -> None:
    rec = phase(name, record_variant)
    files = host_files(rec)
    assert files[TOKEN_SIGNING_CERT_FILE] == cert_pem(rec, current), f"{name}: the service's signing_cert"
    assert files[TOKEN_TRUST_BUNDLE_FILE] == "".join(cert_pem(rec, g) for g in trusted), f"{name}: the bundle"
    assert registry_config(rec)["auth"]["token"]["rootcertbundle"] == TOKEN_TRUST_BUNDLE_FILE
    service = token_config(rec)
    assert (service["signing_key"], service["signing_cert"]) == (TOKEN_SIGNING_KEY_FILE, TOKEN_SIGNING_CERT_FILE)
    assert leaks(rec, settings(rec)) == [], f"{name}: a secret in plain text"


def test_every_rotation_phase_rolls_the_fleet_and_only_the_switch_changes_the_key(
    record_variant: Callable[..., Recording],
) -> None:
    order = list(PHASES)
    for before, after in itertools.pairwise(order):
        old, new = phase(before, record_variant), phase(after, record_variant)
        assert old.named("fleet-lt").inputs["userData"] != new.named("fleet-lt").inputs["userData"], (
            f"{before} -> {after}: fleet-lt user-data is unchanged, so no instance refresh would run"
        )
        # The service's config is untouched (it names the files, not their content): no new config version.
        assert token_config(old) == token_config(new), f"{before} -> {after}"
        assert instance_tags(old)[TOKEN_CONFIG_VERSION_TAG] == instance_tags(new)[TOKEN_CONFIG_VERSION_TAG]
        # The current key changes only at the switch (another secret); the template then waits for its version.
        key_changed = arn(old, key_secret(2 if before in ("b-sign-with-2", "c-drop-1") else 1)) != arn(
            new, key_secret(2 if after in ("b-sign-with-2", "c-drop-1") else 1)
        )
        tag_changed = (
            instance_tags(old)[TOKEN_SIGNING_KEY_VERSION_TAG] != instance_tags(new)[TOKEN_SIGNING_KEY_VERSION_TAG]
        )
        assert key_changed == tag_changed == (after == "b-sign-with-2"), f"{before} -> {after}"


def test_hosts_are_tagged_with_the_signing_key_version_they_booted_with() -> None:
    rec = recording("dev")
    version = rec.named("access-token-signing-key-value").outputs["versionId"]
    assert instance_tags(rec)[TOKEN_SIGNING_KEY_VERSION_TAG] == version


# --- the lockout's shared table -----------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_lockout_table_is_named_in_the_config_and_reachable_by_the_hosts_only(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    table = rec.named("access-lockout-table")
    inputs = table.inputs
    assert inputs["name"] == f"{name_prefix(s)}-token-lockout"
    assert inputs["billingMode"] == "PAY_PER_REQUEST" and inputs["hashKey"] == "pk"
    assert inputs["attributes"] == [{"name": "pk", "type": "S"}]
    assert inputs["ttl"] == {"enabled": True, "attributeName": "expires_at"}
    assert inputs["pointInTimeRecovery"] == {"enabled": True}
    assert inputs["serverSideEncryption"] == {"enabled": False}, "an AWS-owned key (components/access.py)"
    assert token_config(rec)["lockout"] == {"table": inputs["name"], "region": s.region}
    # The hosts' role: the four item calls the service makes (auth/shared_lockout.py), on that table.
    policy = json.loads(rec.named("fleet-role-policy").inputs["policy"])
    (grant,) = [st for st in policy["Statement"] if any(a.startswith("dynamodb:") for a in as_list(st["Action"]))]
    assert sorted(grant["Action"]) == sorted(TABLE_ACTIONS) and grant["Resource"] == table.outputs["arn"]
    # Reached through a gateway endpoint on the private route tables, which admits that table only.
    endpoint = rec.named("network-dynamodb-endpoint")
    assert endpoint.inputs["serviceName"] == f"com.amazonaws.{s.region}.dynamodb"
    assert endpoint.inputs["vpcEndpointType"] == "Gateway"
    private_tables = [r.id for r in rec.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name]
    assert sorted(endpoint.inputs["routeTableIds"]) == sorted(private_tables)
    (statement,) = json.loads(endpoint.inputs["policy"])["Statement"]
    assert statement["Resource"] == [f"arn:aws:dynamodb:{s.region}:{ACCOUNT}:table/{inputs['name']}"]
    assert sorted(statement["Action"]) == sorted(TABLE_ACTIONS)


def test_htpasswd_mode_has_no_lockout_table_nor_endpoint() -> None:
    rec = htpasswd_recording()
    assert not rec.of_type("aws:dynamodb/table:Table")
    assert "network-dynamodb-endpoint" not in {r.name for r in rec.resources}
    assert "dynamodb" not in rec.named("fleet-role-policy").inputs["policy"]


# --- htpasswd stays a mode --------------------------------------------------------------------------


def test_htpasswd_mode_has_no_token_resources() -> None:
    rec = htpasswd_recording()
    assert not [
        r.name for r in rec.resources if r.name.startswith(("access", "lb-token", "fleet-in-token", "alarms-token"))
    ]
    assert "alarms-registry-5xx" in {r.name for r in rec.resources}
    assert not rec.of_type(LISTENER_RULE) and not rec.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    assert [r.name for r in rec.of_type(TARGET_GROUP)] == ["lb-tg"]
    assert not [r.name for r in rec.resources if TOKEN_SERVICE_PORT in ports(r)]
    assert rec.named("fleet-asg").inputs["targetGroupArns"] == [arn(rec, "lb-tg")]
    assert list(registry_config(rec)["auth"]) == ["htpasswd"]
    assert not {TOKEN_SIGNING_CERT_FILE, TOKEN_TRUST_BUNDLE_FILE} & set(host_files(rec))
    assert "registry-token" not in json.dumps(cloud_init(rec))


def test_htpasswd_mode_exports_the_admin_password_as_a_secret_and_no_token_outputs() -> None:
    rec = htpasswd_recording()
    assert rec.outputs["accessMode"] == "htpasswd" and rec.outputs["adminUser"] == "admin"
    assert "adminPassword" in rec.secret_outputs
    assert rec.outputs["adminPassword"] == fake_secret("fleet-admin-password-random")
    assert not {"tokenRealm", "tokenService", "tokenIssuer", "robotTokenSecretArns"} & set(rec.outputs)
    htpasswd = rec.named("fleet-htpasswd-value").inputs["secretString"]
    assert is_secret(htpasswd) and unwrap(htpasswd).startswith("admin:$2a$10$")
    assert leaks(rec, htpasswd_settings()) == []


def test_token_mode_has_no_htpasswd_secret_and_no_admin_password() -> None:
    rec = recording("dev")
    names = {r.name for r in rec.resources}
    assert not {"fleet-htpasswd", "fleet-htpasswd-value", "fleet-admin-password-random"} & names
    assert not {"adminUser", "adminPassword"} & set(rec.outputs)


def test_htpasswd_fails_practice_4_unless_waived() -> None:
    resources = htpasswd_recording().in_urn_order()
    card = score("dev", resources, AUDIT_DAY)
    (practice,) = [p for p in card.practices if p.id == 4]
    assert practice.status == "fail"
    (failing,) = [e for e in practice.evidence if e["result"] == "fail"]
    assert failing["rule"] == "registry-auth-trusted" and "every htpasswd user may push and delete" in failing["detail"]
    waived = settings_from_config(
        "dev",
        {
            **stack_config("dev"),
            "access": HTPASSWD_ACCESS,
            "waivers": [
                {
                    "rule": "registry-auth-trusted",
                    "reason": "two-person sandbox; token mode once it has teams",
                    "expires": "2027-01-31",
                },
                # Scanning needs token mode (the workers pull with a read-only robot of the token service).
                *[
                    {
                        "rule": r.id,
                        "reason": "htpasswd mode runs no scanner; token mode once it has teams",
                        "expires": "2027-01-31",
                    }
                    for r in RULES
                    if r.practice == 5
                ],
            ],
        },
    )
    card = score("dev", record(waived).in_urn_order(), AUDIT_DAY)
    assert card.passed and {p.id: p.status for p in card.practices}[4] == "waived"


# --- the token service's spec: built once from settings + secrets -----------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_token_service_spec_is_built_from_the_settings_and_the_secret_inputs(stack: str) -> None:
    s = load_stack_settings(stack)
    access, secrets = s.access, placeholder_access_secrets(s)
    assert isinstance(access, TokenAccess) and access.ldap is not None
    spec = token_service_spec(s, secrets, ["10.40.8.0/24"])
    assert spec is not None
    assert (spec.issuer, spec.service, spec.trusted_proxies) == (s.token_issuer, s.registry_host, ("10.40.8.0/24",))
    assert spec.user_hashes == secrets.user_hashes and set(spec.robots) == {*access.robots, *SCAN_ROBOTS}
    assert (spec.signing_generations, spec.signing_generation) == (
        access.token_signing.generations,
        access.token_signing.current,
    )
    assert spec.ldap is not None and spec.ldap.bind_password.get_secret_value() == secrets.ldap_bind_password
    assert spec.ldap.ca_file == Path(SYSTEM_CA_BUNDLE), "no caCertificate: the hosts' system CA bundle"
    assert (spec.ldap_cidrs, spec.ldap_ca_pem) == (access.ldap.cidrs, None)
    shown = repr(spec)
    assert secrets.ldap_bind_password not in shown
    assert not any(h in shown for h in secrets.user_hashes.values()), "the spec's repr shows a user hash"


def test_an_htpasswd_stack_has_no_token_service_spec() -> None:
    s = htpasswd_settings()
    assert token_service_spec(s, placeholder_access_secrets(s), ["10.40.8.0/24"]) is None


def test_a_directory_without_its_bind_password_is_refused_by_the_spec() -> None:
    s = load_stack_settings("dev")
    secrets = AccessSecrets(user_hashes={"registry-admin": GOOD_HASH})
    with pytest.raises(ComponentInputError, match="the directory's bind password is not"):
        token_service_spec(s, secrets, ["10.40.8.0/24"])


def test_components_import_nothing_from_infra() -> None:
    """The dependency runs one way: infra builds specs from settings, components take them."""
    offending = []
    for folder in ("components", "host"):
        for path in sorted(Path(folder).glob("**/*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offending += [f"{path}: imports {n}" for n in names if n == "infra" or n.startswith("infra.")]
    assert offending == []


# --- secret inputs: checked by key, never shown -----------------------------------------------------

GOOD_HASH = placeholder_bcrypt_hash("registry-admin")
LOW_COST = "$2b$04$" + GOOD_HASH[7:]
PASSWORD = "correct-horse-battery-staple"


@pytest.mark.parametrize(
    ("hashes", "ldap_password", "key", "says"),
    [
        ({}, PASSWORD, f"{USER_HASHES_KEY}.registry-admin", "missing: access.users lists registry-admin"),
        ({"registry-admin": PASSWORD}, PASSWORD, f"{USER_HASHES_KEY}.registry-admin", "is not a bcrypt hash"),
        ({"registry-admin": LOW_COST}, PASSWORD, f"{USER_HASHES_KEY}.registry-admin", "has bcrypt cost 4; at least 10"),
        (
            {"registry-admin": GOOD_HASH, "mallory": GOOD_HASH},
            PASSWORD,
            f"{USER_HASHES_KEY}.mallory",
            "is not in access.users",
        ),
        ({"registry-admin": GOOD_HASH}, None, LDAP_PASSWORD_KEY, "access.ldap needs the service account's password"),
        ('{"registry-admin": ', PASSWORD, USER_HASHES_KEY, "is not a JSON object"),
    ],
    ids=["missing-hash", "not-bcrypt", "low-cost", "extra-user", "missing-ldap-password", "not-json"],
)
def test_bad_secret_inputs_are_named_by_key_and_never_shown(
    hashes: Any, ldap_password: Any, key: str, says: str
) -> None:
    s = load_stack_settings("dev")
    with pytest.raises(SettingsError) as info:
        check_access_secrets(s, hashes if isinstance(hashes, str) else json.dumps(hashes), ldap_password)
    problems = [p for p in info.value.problems if p.path == key]
    assert problems and says in problems[0].message, info.value.problems
    text = str(info.value)
    assert PASSWORD not in text and GOOD_HASH not in text and LOW_COST not in text


def test_good_secret_inputs_pass() -> None:
    s = load_stack_settings("dev")
    secrets = check_access_secrets(s, json.dumps({"registry-admin": GOOD_HASH}), PASSWORD)
    assert secrets == AccessSecrets({"registry-admin": GOOD_HASH}, PASSWORD)
    assert PASSWORD not in repr(secrets) and GOOD_HASH not in repr(secrets)


# --- the Pulumi entry point ------------------------------------------------------------------------


def run_main(stack: str, secrets: dict[str, str], monitor: RecordingMonitor) -> None:
    """Run infra/__main__.py as `pulumi up` would: engine config (stack file + secrets), mocks."""
    pulumi.runtime.set_mocks(monitor.recording_mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    engine = {
        f"{PROJECT}:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in stack_overrides(Path("stacks") / f"Pulumi.{stack}.yaml").items()
    }
    engine |= {f"{PROJECT}:{key}": value for key, value in secrets.items()}
    pulumi.runtime.set_all_config(engine)

    def program() -> None:
        runpy.run_path("infra/__main__.py")  # its globals are not an output: return nothing

    try:
        pulumi.runtime.test(program)()
    finally:
        pulumi.runtime.set_all_config({})


def monitor_for(stack: str) -> RecordingMonitor:
    return RecordingMonitor(RecordingMocks(load_stack_settings(stack).region))


def test_main_refuses_bad_secrets_with_exit_2_before_registering_anything(caplog: pytest.LogCaptureFixture) -> None:
    monitor = monitor_for("dev")
    with pytest.raises(SystemExit) as exit_info:
        run_main("dev", {USER_HASHES_KEY: json.dumps({"registry-admin": PASSWORD})}, monitor)
    assert exit_info.value.code == 2
    assert monitor.recorded == []
    assert f"{USER_HASHES_KEY}.registry-admin" in caplog.text and LDAP_PASSWORD_KEY in caplog.text
    assert PASSWORD not in caplog.text


def test_main_builds_the_stack_from_engine_config_and_secrets() -> None:
    monitor = monitor_for("dev")
    run_main("dev", {USER_HASHES_KEY: json.dumps({"registry-admin": GOOD_HASH}), LDAP_PASSWORD_KEY: PASSWORD}, monitor)
    names = {r.name for r in monitor.recorded}
    assert {"access", "access-token-config-value", "lb-token-route", "fleet-asg"} <= names
    (version,) = [r for r in monitor.recorded if r.name == "access-token-config-value"]
    config = json.loads(unwrap(version.inputs["secretString"]))
    assert (
        config["ldap"]["bind_password"] == PASSWORD and config["users"]["registry-admin"]["password_hash"] == GOOD_HASH
    )


def test_a_config_the_service_would_refuse_stops_the_program_before_any_resource() -> None:
    monitor = monitor_for("dev")
    pulumi.runtime.set_mocks(monitor.recording_mocks, project=PROJECT, stack="dev", preview=False, monitor=monitor)

    def program() -> None:
        build(load_stack_settings("dev"), AccessSecrets(ldap_bind_password=PASSWORD))  # no user hash

    with pytest.raises(ComponentInputError, match="no hash for registry-admin"):
        pulumi.runtime.test(program)()
    assert monitor.recorded == []
