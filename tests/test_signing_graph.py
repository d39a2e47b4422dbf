"""The image signing key and the signature gate in every stack's recorded graph (practice 6).

The program runs once per stack under the recording engine (tests/helpers.recording). What this proves:
the resources and inputs the program sends (the key's spec and policy, the gate's routes, ports and
user-data). What it cannot: that AWS accepts the key policy (its lockout check, the principals existing),
or that the load balancer matches paths as documented; docs/signing.md says so.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import json
import re
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from components.errors import ComponentInputError
from components.loadbalancer import ODD_PATH_REGEX, gate_routes, gate_rule_priority
from components.signing import ADMIN_ACTIONS, signing_key_policy
from fleet.engine import ACCOUNT_ID, Recording, record
from host.contract import GATE_CONFIG_FILE, GATE_HEALTH_PATH, GATE_PORT, GATE_UNIT
from infra.gate_spec import gate_policies
from infra.settings import (
    PROJECT,
    Settings,
    load_stack_settings,
    protected_namespaces,
    settings_from_config,
    signed_namespaces,
)
from policy.graph import Res, unwrap, user_data_text
from policy.rules.signing import sign_policy_problems
from tests.helpers import STACKS, recording, stack_config

KEY = "aws:kms/key:Key"
LISTENER_RULE = "aws:lb/listenerRule:ListenerRule"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
GATED = [s for s in STACKS if protected_namespaces(load_stack_settings(s))]


def dev_with_pull_policies(policies: dict[str, Any]) -> Settings:
    """The dev stack with `access.pullPolicies` replaced (not merged): {} protects nothing."""
    config = stack_config("dev")
    return settings_from_config("dev", {**config, "access": {**config["access"], "pullPolicies": policies}})


@functools.cache
def ungated_dev() -> Recording:
    return record(dev_with_pull_policies({}))


def arn(rec: Recording, name: str) -> Any:
    return rec.named(name).outputs["arn"]


def policy(res: Res, key: str = "policy") -> list[dict[str, Any]]:
    return list(json.loads(unwrap(res.inputs[key]))["Statement"])


def cloud_init(rec: Recording) -> dict[str, Any]:
    doc = yaml.safe_load(user_data_text(rec.named("fleet-lt").inputs["userData"]))
    assert isinstance(doc, dict)
    return doc


def written(rec: Recording) -> dict[str, str]:
    return {f["path"]: f["content"] for f in cloud_init(rec)["write_files"]}


def test_the_stacks_cover_both_cases() -> None:
    # dev protects team-a/release (the lab shows it); a stack that protects nothing is dev without it.
    assert set(GATED) >= {"dev", "prod", "payments-prod"}
    assert protected_namespaces(dev_with_pull_policies({})) == ()


# --- the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_each_stack_has_one_ecc_p256_signing_key_with_the_longest_deletion_window(stack: str) -> None:
    rec = recording(stack)
    keys = [k for k in rec.of_type(KEY) if k.inputs.get("keyUsage") == "SIGN_VERIFY"]
    assert [k.name for k in keys] == ["signing-key"]
    inputs = keys[0].inputs
    assert (inputs["customerMasterKeySpec"], inputs["deletionWindowInDays"]) == ("ECC_NIST_P256", 30)
    assert "enableKeyRotation" not in inputs  # AWS refuses rotation of asymmetric keys
    assert inputs["tags"]["stack"] == stack


@pytest.mark.parametrize("stack", STACKS)
def test_the_signing_keys_logical_name_is_pinned(stack: str) -> None:
    """A new name or parent would replace the key: every signature made with it would stop verifying."""
    chain = "registry-fleet:index:ImageSigningKey$aws:kms/key:Key"
    assert recording(stack).named("signing-key").urn == f"urn:pulumi:{stack}::{PROJECT}::{chain}::signing-key"


@pytest.mark.parametrize("stack", STACKS)
def test_the_key_policy_lets_only_the_signer_roles_sign(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    admin, signers, deny = policy(rec.named("signing-key"))
    assert admin["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}
    assert admin["Action"] == list(ADMIN_ACTIONS)
    assert not [a for a in admin["Action"] if "*" in a or a in ("kms:Sign", "kms:CreateGrant")]
    assert signers["Principal"] == {"AWS": list(s.signing.roles)}
    assert signers["Action"] == ["kms:Sign", "kms:GetPublicKey", "kms:DescribeKey"]
    assert (deny["Effect"], deny["Action"]) == ("Deny", "kms:Sign")
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": list(s.signing.roles)}}
    assert sign_policy_problems(rec.named("signing-key").inputs["policy"]) == []


def test_the_break_glass_role_signs_too() -> None:
    s = load_stack_settings("prod")
    assert s.signing.break_glass_role is not None
    assert s.signing.roles == (*s.signing.signer_roles, s.signing.break_glass_role)
    assert policy(recording("prod").named("signing-key"))[1]["Principal"]["AWS"][-1] == s.signing.break_glass_role


def test_a_key_policy_without_signers_is_refused() -> None:
    with pytest.raises(ComponentInputError, match="no signer role"):
        signing_key_policy(ACCOUNT_ID, [])


@pytest.mark.parametrize("stack", STACKS)
def test_the_alias_names_the_stack_and_targets_the_key(stack: str) -> None:
    rec = recording(stack)
    alias = rec.named("signing-alias").inputs
    assert alias["name"] == f"alias/registry-fleet-{stack}-signing"
    assert alias["targetKeyId"] == rec.named("signing-key").outputs["keyId"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_stack_exports_the_public_key_the_key_arn_and_alias(stack: str) -> None:
    rec = recording(stack)
    pem = rec.outputs["signingPublicKeyPem"]
    key = load_pem_public_key(pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert rec.outputs["signingKeyArn"] == arn(rec, "signing-key")
    assert rec.outputs["signingKeyAlias"] == f"alias/registry-fleet-{stack}-signing"
    assert rec.outputs["protectedNamespaces"] == list(protected_namespaces(load_stack_settings(stack)))
    assert "signingPublicKeyPem" not in rec.secret_outputs  # a public key, shown as it is


@pytest.mark.parametrize("stack", STACKS)
def test_the_hosts_may_read_the_public_key_and_never_sign(stack: str) -> None:
    rec = recording(stack)
    statements = policy(rec.named("fleet-role-policy"))
    (read,) = [st for st in statements if st.get("Sid") == "SigningPublicKey"]
    assert read == {
        "Sid": "SigningPublicKey",
        "Effect": "Allow",
        "Action": ["kms:GetPublicKey", "kms:DescribeKey"],
        "Resource": arn(rec, "signing-key"),
    }
    actions = [a for st in statements for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])]
    assert "kms:Sign" not in actions and not [a for a in actions if a.endswith("*")]


# --- the gate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", GATED)
def test_the_hosts_gate_config_holds_the_stacks_public_key_and_protected_namespaces(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    config = yaml.safe_load(written(rec)[GATE_CONFIG_FILE])
    assert config["public_keys"] == [rec.outputs["signingPublicKeyPem"]]
    assert config["namespaces"] == {ns: p.entry() for ns, p in gate_policies(s).items()}
    assert set(config["namespaces"]) == set(protected_namespaces(s))
    signed = {ns for ns, entry in config["namespaces"].items() if entry.get("require_signed")}
    assert signed == set(signed_namespaces(s))
    assert config["upstream"] == "https://127.0.0.1:5000"
    assert ["systemctl", "enable", "--now", GATE_UNIT] in cloud_init(rec)["runcmd"]


def test_a_stack_that_protects_nothing_runs_no_gate() -> None:
    rec = ungated_dev()
    assert GATE_CONFIG_FILE not in written(rec)
    assert GATE_UNIT not in user_data_text(rec.named("fleet-lt").inputs["userData"])
    assert not [r.name for r in rec.resources if "gate" in r.name]


def gated_dev() -> Recording:
    return record(dev_with_pull_policies({"team-a": {"requireSigned": True}}))


def test_protecting_a_namespace_in_dev_adds_the_gate() -> None:
    rec = gated_dev()
    assert yaml.safe_load(written(rec)[GATE_CONFIG_FILE])["namespaces"] == {"team-a": {"require_signed": True}}
    assert {r.name for r in rec.of_type(LISTENER_RULE)} == {
        "lb-token-route",
        "lb-gate-odd-paths",
        "lb-gate-team-a-manifests",
    }


def test_an_htpasswd_stack_has_a_signing_key_and_no_gate() -> None:
    rec = record(settings_from_config("dev", {**stack_config("dev"), "access": {"mode": "htpasswd"}}))
    assert rec.named("signing-key").inputs["keyUsage"] == "SIGN_VERIFY"
    assert not [r.name for r in rec.resources if "gate" in r.name]


@pytest.mark.parametrize("stack", GATED)
def test_the_gate_target_group_is_https_on_the_gate_port_and_health_checked_on_healthz(stack: str) -> None:
    tg = recording(stack).named("lb-gate-tg").inputs
    assert (tg["port"], tg["protocol"], tg["targetType"]) == (GATE_PORT, "HTTPS", "instance")
    assert (tg["healthCheck"]["protocol"], tg["healthCheck"]["path"]) == ("HTTPS", GATE_HEALTH_PATH)


@pytest.mark.parametrize("stack", GATED)
def test_the_listener_sends_manifest_reads_of_each_protected_namespace_to_the_gate(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    rules = {r.name: r.inputs for r in rec.of_type(LISTENER_RULE) if r.name.startswith("lb-gate-")}
    forward = [{"type": "forward", "targetGroupArn": arn(rec, "lb-gate-tg")}]
    methods = {"httpRequestMethod": {"values": ["GET", "HEAD"]}}
    expected: dict[str, Any] = {
        "lb-gate-odd-paths": {
            "listenerArn": arn(rec, "lb-https"),
            "priority": 20,
            "conditions": [methods, {"pathPattern": {"regexValues": [ODD_PATH_REGEX]}}],
            "actions": forward,
        }
    }
    for ns in protected_namespaces(s):
        expected[f"lb-gate-{ns}-manifests"] = {
            "listenerArn": arn(rec, "lb-https"),
            "priority": gate_rule_priority(ns),
            "conditions": [methods, {"pathPattern": {"values": [f"/v2/{ns}/*/manifests/*", f"/v2/{ns}/manifests/*"]}}],
            "actions": forward,
        }
    assert {name: {k: v for k, v in r.items() if k != "tags"} for name, r in rules.items()} == expected


@pytest.mark.parametrize("stack", GATED)
def test_only_the_load_balancer_reaches_the_gate_port(stack: str) -> None:
    rec = recording(stack)
    lb_sg, host_sg = rec.named("lb-sg").id, rec.named("fleet-sg").id
    into = [r for r in rec.of_type(INGRESS) if r.inputs["fromPort"] == GATE_PORT]
    assert [(r.name, r.inputs["securityGroupId"], r.inputs.get("referencedSecurityGroupId"), r.inputs.get("cidrIpv4"))
            for r in into] == [("fleet-in-gate-from-lb", host_sg, lb_sg, None)]  # fmt: skip
    out = [r for r in rec.of_type(EGRESS) if r.inputs["fromPort"] == GATE_PORT]
    assert {r.inputs["securityGroupId"] for r in out} == {lb_sg}
    assert sorted(r.inputs["cidrIpv4"] for r in out) == sorted(
        r.inputs["cidrIpv4"]
        for r in rec.of_type(EGRESS)
        if r.name.startswith("lb-out-hosts-") and r.inputs["fromPort"] == 5000
    )


# --- the routes, without AWS --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v2/base/app/%6Danifests/1",  # the registry decodes it into base/app's manifest
        "/v2/base%2Fapp/manifests/1",
        "/v2/%62ase/app/manifests/1",
        "/v2//base/app/manifests/1",  # the registry's router cleans these (a redirect)
        "/v2/other/../base/app/manifests/1",
        "/v2/base/./app/manifests/1",
        "/v2/base/app/manifests/..",
    ],
)
def test_the_odd_path_route_catches_what_the_registry_would_read_as_another_path(path: str) -> None:
    odd, _ = gate_routes(["base"])
    assert re.search(odd.path_regex[0], path), path


@pytest.mark.parametrize(
    "path",
    ["/v2/base/app/manifests/1", "/v2/base/app/blobs/sha256:" + "a" * 64, "/v2/team.a/app..x/manifests/v1.2", "/v2/"],
)
def test_ordinary_paths_keep_their_route(path: str) -> None:
    odd, _ = gate_routes(["base"])
    assert not re.search(odd.path_regex[0], path), path


def test_the_manifest_route_covers_the_namespace_and_every_repository_under_it() -> None:
    _, manifests = gate_routes(["base"])
    for path in ("/v2/base/manifests/1", "/v2/base/app/manifests/1", "/v2/base/a/b/manifests/sha256:ab"):
        assert any(fnmatch.fnmatchcase(path, p) for p in manifests.path_values), path
    for path in ("/v2/baseline/app/manifests/1", "/v2/base/app/blobs/sha256:ab", "/v2/team-a/manifests/1"):
        assert not any(fnmatch.fnmatchcase(path, p) for p in manifests.path_values), path


def test_each_rule_stays_within_the_alb_limits() -> None:
    assert gate_routes([]) == []
    for route in gate_routes(["base", "payments/app", "a" * 40]):
        values = [*route.path_values, *route.path_regex]
        assert 1 <= len(values) <= 3  # match evaluations per condition
        assert len(values) + 2 <= 5  # per rule, GET and HEAD included
        assert sum(v.count("*") for v in route.path_values) <= 5  # wildcards per rule
        assert all(len(v) <= 128 for v in values)


def test_a_namespace_too_long_for_a_path_pattern_is_refused() -> None:
    with pytest.raises(ComponentInputError, match="too long for an ALB path pattern"):
        gate_routes(["a" * 120])


def test_rule_priorities_depend_on_the_namespace_alone_and_a_collision_is_refused() -> None:
    assert [r.priority for r in gate_routes(["base"])][1:] == [r.priority for r in gate_routes(["aaa", "base"])][2:]
    assert len({r.priority for r in gate_routes(["aaa", "base", "team-a"])}) == 4
    names = (f"ns{i}" for i in itertools.count())
    seen: dict[int, str] = {}
    for name in names:
        priority = gate_rule_priority(name)
        if priority in seen:
            pair = [seen[priority], name]
            break
        seen[priority] = name
    with pytest.raises(ComponentInputError, match="map to the same listener rule priority"):
        gate_routes(pair)
