"""The policy pack (policy/): its rules over every stack's recorded graph, the CrossGuard policies, waivers.

- Every stack passes every rule, practice 5's (scanning) included, with no waiver.
- For every rule, a broken variant of a recorded stack (one resource's inputs changed, or one
  resource dropped or added) makes exactly that rule fail, naming the resource and the bad value.
- Each CrossGuard policy from `policies()` is called with hand-built `StackValidationArgs` shaped
  like CrossGuard's (final outputs as props, secrets unwrapped, no physical ids), passing and failing;
  the whole pack also runs through pulumi-policy's own analyzer service, after an update and in a
  preview where every computed value is unknown.
- `apply_waivers` with a fixed date: valid, expired and unknown waivers.
"""

from __future__ import annotations

import ast
import base64
import copy
import dataclasses
import datetime
import functools
import importlib
import inspect
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import struct_pb2  # type: ignore[import-untyped]
from pulumi.runtime import proto
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy import proxy as policy_proxy
from pulumi_policy.policy import _PolicyAnalyzerServicer

from policy.crossguard import policies, to_res
from policy.graph import (
    LAUNCH_TEMPLATE,
    REGISTRY_CONFIG_PATH,
    SECRET_SIG,
    SECRET_VALUE_SIG,
    UNKNOWN_VALUES,
    WAIVERS,
    Res,
    cloud_inits,
    unwrap,
    user_data_text,
)
from policy.registry import PRACTICES, STACK, Violation
from policy.rules import PRACTICE_MODULES, RULES, evaluate, rule_by_id
from policy.rules.hosts import HOST_PACKAGES
from policy.waivers import apply_waivers, waivers_in
from tests.helpers import STACKS, recording

# What a distribution without an alias had (and what CloudFront serves TLS 1.0 with, whatever it says).
DEFAULT_CLOUDFRONT_CERTIFICATE = {"cloudfrontDefaultCertificate": True, "minimumProtocolVersion": "TLSv1.2_2021"}
TODAY = datetime.date(2026, 6, 1)
UNKNOWN = policy_proxy.UNKNOWN_STRING_VALUE
Change = Callable[[list[Res]], list[Res]]


@functools.cache
def stack_resources(stack: str) -> tuple[Res, ...]:
    return tuple(recording(stack).in_urn_order())


def named(resources: Sequence[Res], name: str) -> Res:
    (found,) = [r for r in resources if r.name == name]
    return found


# --- the rule set --------------------------------------------------------------------------------


def test_rules_cover_every_practice_with_stable_kebab_case_ids() -> None:
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", i) for i in ids), ids
    assert {r.practice for r in RULES} == {n for n, _ in PRACTICES} == set(range(1, 11))
    assert all(r.mandatory for r in RULES)
    assert all(r.description.endswith(".") and r.description.count(". ") == 0 for r in RULES)


def test_rule_lookup_names_the_known_ids() -> None:
    assert rule_by_id("hosts-dedicated").practice == 1
    with pytest.raises(KeyError, match="known rules: hosts-dedicated, hosts-service-accounts, tls-listeners"):
        rule_by_id("no-such-rule")


# What the rules may import: the CrossGuard pack and `python -m fleet audit` share them, so no
# module but the adapter (crossguard.py) and the pack (__main__.py) may import pulumi or pulumi_policy.
ENGINE_MODULES = sorted(p for p in Path("policy").rglob("*.py") if p.name != "__main__.py" and p.stem != "crossguard")


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    return modules + [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=str)
def test_rule_engine_imports_neither_pulumi_nor_pulumi_policy(path: Path) -> None:
    modules = imported_modules(path)
    assert not [m for m in modules if m.split(".")[0] in ("pulumi", "pulumi_policy") or m == "policy.crossguard"]
    assert not [m for m in modules if m.split(".")[0] in ("fleet", "infra", "components")], "the graph stands alone"


def declarations(path: Path) -> list[tuple[str, int, str]]:
    """(rule id, practice, name of the function right below) of every `@rule(...)` in a module."""
    found = []
    for node in ast.parse(path.read_text()).body:
        for deco in getattr(node, "decorator_list", []):
            if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "rule":
                rule_id, practice = (ast.literal_eval(a) for a in deco.args[:2])
                found.append((rule_id, practice, node.name))  # type: ignore[attr-defined]
    return found


def test_each_practice_module_declares_exactly_its_practices_rules() -> None:
    """policy/rules/ holds one module per practice, in practice order, each declaring only its practice's rules."""
    modules = sorted(p.stem for p in Path("policy/rules").glob("*.py") if p.name != "__init__.py")
    assert sorted(m.__name__.rsplit(".", 1)[-1] for m in PRACTICE_MODULES) == modules
    declared: list[str] = []
    for number, module in enumerate(PRACTICE_MODULES, start=1):
        found = declarations(Path(str(module.__file__)))
        assert found and {practice for _, practice, _ in found} == {number}, (module.__name__, found)
        assert all(name == f"find_{rule_id.replace('-', '_')}" for rule_id, _, name in found), found
        declared += [rule_id for rule_id, _, _ in found]
    assert declared == [r.id for r in RULES]


def test_unknown_sentinels_are_the_policy_sdks() -> None:
    sdk = {v for k, v in vars(policy_proxy).items() if k.startswith("UNKNOWN_") and k.endswith("_VALUE")}
    assert sdk == UNKNOWN_VALUES


# --- every stack ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_passes_every_rule(stack: str) -> None:
    found = evaluate(stack_resources(stack))
    assert found == [], found


@pytest.mark.parametrize("stack", STACKS)
def test_hosts_install_every_package_the_rule_allows(stack: str) -> None:
    """The rule's list is the hosts' list, not a looser one: a token-mode host installs all of it."""
    ((_, doc),) = cloud_inits(stack_resources(stack))
    assert isinstance(doc, dict) and set(doc["packages"]) == HOST_PACKAGES


# --- broken variants -----------------------------------------------------------------------------


def edit(name: str, change: Callable[[dict[str, Any]], Any]) -> Change:
    """Change the inputs of resource `name` (on a copy); its outputs follow, as the engine's would."""

    def run(resources: list[Res]) -> list[Res]:
        target = named(resources, name)
        props = copy.deepcopy(dict(target.inputs))
        change(props)
        computed = {k: v for k, v in target.outputs.items() if k not in target.inputs}
        changed = dataclasses.replace(target, inputs=props, outputs={**computed, **props})
        return [changed if r is target else r for r in resources]

    return run


def drop(name: str) -> Change:
    def run(resources: list[Res]) -> list[Res]:
        named(resources, name)
        return [r for r in resources if r.name != name]

    return run


def add(make: Callable[[list[Res]], Res]) -> Change:
    return lambda resources: [*resources, make(resources)]


def same_provider_as(name: str, other: str) -> Change:
    def run(resources: list[Res]) -> list[Res]:
        moved = dataclasses.replace(named(resources, name), provider=named(resources, other).provider)
        return [moved if r.name == name else r for r in resources]

    return run


def user_data(change: Callable[[dict[str, Any]], Any], template: str = "fleet-lt") -> Change:
    """Change a launch template's cloud-init document (the registry hosts' by default)."""

    def rewrite(props: dict[str, Any]) -> None:
        doc = yaml.safe_load(user_data_text(props["userData"]))
        change(doc)
        text = "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)
        props["userData"] = base64.b64encode(text.encode()).decode()

    return edit(template, rewrite)


def agent_document(change: Callable[[dict[str, Any]], Any]) -> Change:
    """Change the CloudWatch agent's association document (components/host_metrics.py)."""

    def rewrite(props: dict[str, Any]) -> None:
        doc = json.loads(props["content"])
        change(doc)
        props["content"] = json.dumps(doc)

    return edit("host-metrics-agent-document", rewrite)


def rescrape(document: dict[str, Any], old: str, new: str) -> None:
    """The scrape config the document writes, one target moved."""
    commands = document["mainSteps"][0]["inputs"]["runCommand"]
    document["mainSteps"][0]["inputs"]["runCommand"] = [c.replace(old, new) for c in commands]


def registry_config(change: Callable[[dict[str, Any]], Any]) -> Change:
    """Change the registry config.yml inside the launch template's cloud-init."""

    def rewrite(doc: dict[str, Any]) -> None:
        (entry,) = [f for f in doc["write_files"] if f["path"] == REGISTRY_CONFIG_PATH]
        config = yaml.safe_load(entry["content"])
        change(config)
        entry["content"] = yaml.safe_dump(config, sort_keys=False)

    return user_data(rewrite)


def edit_policy(name: str, change: Callable[[list[dict[str, Any]]], Any]) -> Change:
    def rewrite(props: dict[str, Any]) -> None:
        doc = json.loads(props["policy"])
        change(doc["Statement"])
        props["policy"] = json.dumps(doc)

    return edit(name, rewrite)


def password(resources: list[Res]) -> str:
    return str(named(resources, "fleet-http-secret-random").outputs["result"])


def leak_password_in_tags(resources: list[Res]) -> list[Res]:
    value = password(resources)
    return edit("storage-key", lambda p: p["tags"].update(note=value))(resources)


def leak_password_in_user_data(resources: list[Res]) -> list[Res]:
    value = password(resources)
    return user_data(lambda d: d.update(bootcmd=[["echo", value]]))(resources)


def host_rule_from_anywhere(resources: list[Res]) -> Res:
    fleet, sg = named(resources, "fleet"), named(resources, "fleet-sg")
    return Res(
        type="aws:ec2/securityGroupRule:SecurityGroupRule",
        name="fleet-in-ssh",
        urn=f"{sg.urn}-in-ssh",
        inputs={"type": "ingress", "securityGroupId": sg.id, "cidrBlocks": ["0.0.0.0/0"], "fromPort": 22.0},
        parent=fleet.urn,
        provider=sg.provider,
    )


def forwarder_endpoint(change: Callable[[dict[str, Any]], Any]) -> Change:
    """Change the registry's notification endpoint to the scan events forwarder."""
    return registry_config(lambda c: change(c["notifications"]["endpoints"][0]))


def worker_config(change: Callable[[dict[str, Any]], Any]) -> Change:
    """Change the scanner worker's config inside its launch template's cloud-init."""

    def rewrite(doc: dict[str, Any]) -> None:
        (entry,) = [f for f in doc["write_files"] if f["path"] == "/etc/registry-fleet/scanner.yml"]
        config = yaml.safe_load(entry["content"])
        change(config)
        entry["content"] = yaml.safe_dump(config, sort_keys=False)

    return user_data(rewrite, "scanning-worker-lt")


def worker_with_the_hosts_profile(resources: list[Res]) -> list[Res]:
    arn = named(resources, "fleet-profile").outputs["arn"]
    return edit("scanning-worker-lt", lambda p: p.update(iamInstanceProfile={"arn": arn}))(resources)


def worker_ingress(resources: list[Res]) -> Res:
    parent, sg = named(resources, "scanning"), named(resources, "scanning-worker-sg")
    return Res(
        type="aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        name="scanning-worker-in-ssh",
        urn=f"{sg.urn}-in-ssh",
        inputs={"securityGroupId": sg.id, "cidrIpv4": "10.0.0.0/8", "fromPort": 22.0, "toPort": 22.0},
        parent=parent.urn,
        provider=sg.provider,
    )


def without_tls_only(statements: list[dict[str, Any]]) -> None:
    statements[:] = [s for s in statements if s.get("Sid") != "DenyInsecureTransport"]


def public_read(statements: list[dict[str, Any]]) -> None:
    statements.append({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:GetObject", "Resource": "*"})


def replicate_to_itself(resources: list[Res]) -> list[Res]:
    arn = named(resources, "storage-primary").outputs["arn"]
    return edit("storage-replication", lambda p: p["rules"][0]["destination"].update(bucket=arn))(resources)


def back_up_the_replica_only(resources: list[Res]) -> list[Res]:
    arn = named(resources, "storage-replica").outputs["arn"]
    return edit("storage-backup-selection", lambda p: p.update(resources=[arn]))(resources)


def restore_test_the_replica(resources: list[Res]) -> list[Res]:
    arn = named(resources, "storage-replica").outputs["arn"]
    return edit("storage-restore-testing-selection", lambda p: p.update(protectedResourceArns=[arn]))(resources)


def delete_untagged(resources: list[Res]) -> list[Res]:
    def change(p: dict[str, Any]) -> None:
        values = p["taskInvocationParameters"]["runCommandParameters"]["parameters"][0]["values"]
        values.append("docker-registry garbage-collect --delete-untagged /etc/docker/registry/config.yml")

    return edit("maintenance-gc-gc", change)(resources)


def ingress_from_itself(resources: list[Res]) -> list[Res]:
    own = named(resources, "fleet-sg").id
    return edit("fleet-in-from-lb", lambda p: p.update(referencedSecurityGroupId=own))(resources)


def open_ingress(props: dict[str, Any]) -> None:
    props.pop("referencedSecurityGroupId")
    props["cidrIpv4"] = "0.0.0.0/0"


SIGN_FOR_ANYONE = {"Sid": "AnyoneSigns", "Effect": "Allow", "Principal": "*", "Action": "kms:Sign*", "Resource": "*"}
GATE_CONFIG = "/etc/registry-fleet/gate.yml"


def gate_config(change: Callable[[dict[str, Any]], Any]) -> Change:
    """Change the gate's config inside the launch template's cloud-init."""

    def rewrite(doc: dict[str, Any]) -> None:
        (entry,) = [f for f in doc["write_files"] if f["path"] == GATE_CONFIG]
        config = yaml.safe_load(entry["content"])
        change(config)
        entry["content"] = yaml.safe_dump(config, sort_keys=False)

    return user_data(rewrite)


PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
SILLY = {"silly": {"realm": "registry", "service": "registry"}}
HTPASSWD = {"htpasswd": {"realm": "registry", "path": "/etc/docker/registry/htpasswd"}}


def route_from_plain_http(resources: list[Res]) -> list[Res]:
    """The token route hangs off the HTTP listener (which only redirects)."""
    arn = named(resources, "lb-http").outputs["arn"]
    return edit("lb-token-route", lambda p: p.update(listenerArn=arn))(resources)


def route_to_the_registry(resources: list[Res]) -> list[Res]:
    """The realm path goes to the registry's target group, health-checked on the registry's `/`."""
    arn = named(resources, "lb-tg").outputs["arn"]
    return edit("lb-token-route", lambda p: p["actions"][0].update(targetGroupArn=arn))(resources)


# (rule id, stack, change, resource the violation names, what its message says)
VARIANTS: list[tuple[str, str, Change, str, str]] = [
    ("hosts-dedicated", "dev", user_data(lambda d: d["packages"].append("postgresql")), "fleet-lt", "['postgresql']"),
    (
        "hosts-dedicated",
        "staging",
        user_data(lambda d: d["runcmd"].append(["sh", "-c", "systemctl enable --now nginx"])),
        "fleet-lt",
        "enables 'nginx'",
    ),
    (
        "hosts-service-accounts",
        "dev",
        user_data(lambda d: d["runcmd"].remove(["systemd-sysusers", "/etc/sysusers.d/registry-token.conf"])),
        "fleet-lt",
        "sets User=registry-token; /etc/sysusers.d/registry-token.conf declares it, but runcmd runs no systemd-sys",
    ),
    (
        "hosts-service-accounts",
        "prod",
        user_data(lambda d: d["runcmd"].insert(0, ["systemctl", "start", "registry-token"])),
        "fleet-lt",
        "runcmd starts registry-token before systemd-sysusers creates the account",
    ),
    (
        "tls-listeners",
        "dev",
        edit("lb-https", lambda p: p.update(sslPolicy="ELBSecurityPolicy-2016-08")),
        "lb-https",
        "sslPolicy is 'ELBSecurityPolicy-2016-08'",
    ),
    (
        "tls-listeners",
        "staging",
        edit("lb-http", lambda p: p["defaultActions"][0]["redirect"].update(statusCode="HTTP_302")),
        "lb-http",
        "'HTTP_302'",
    ),
    (
        "tls-listeners",
        "prod",
        edit("lb-http", lambda p: p.update(defaultActions=[{"type": "forward", "targetGroupArn": "arn:tg"}])),
        "lb-http",
        "('forward', None, None)",
    ),
    ("tls-to-hosts", "dev", edit("lb-tg", lambda p: p.update(protocol="HTTP")), "lb-tg", "protocol is 'HTTP'"),
    (
        "tls-to-hosts",
        "prod",
        edit("lb-tg", lambda p: p["healthCheck"].update(protocol="HTTP")),
        "lb-tg",
        "healthCheck.protocol is 'HTTP'",
    ),
    (
        "tls-cdn-viewers",
        "dev",
        edit("cdn-distribution", lambda p: p["defaultCacheBehavior"].update(viewerProtocolPolicy="redirect-to-https")),
        "cdn-distribution",
        "viewerProtocolPolicy is 'redirect-to-https'",
    ),
    (
        "tls-cdn-viewers",
        "prod",
        edit("cdn-distribution", lambda p: p["viewerCertificate"].update(minimumProtocolVersion="TLSv1.2_2019")),
        "cdn-distribution",
        "minimumProtocolVersion is 'TLSv1.2_2019'",
    ),
    (
        "tls-cdn-viewers",
        "dev",
        edit("cdn-distribution", lambda p: p.update(aliases=None, viewerCertificate=DEFAULT_CLOUDFRONT_CERTIFICATE)),
        "cdn-distribution",
        "the default *.cloudfront.net certificate",
    ),
    (
        "tls-only-buckets",
        "prod",
        edit_policy("lb-access-logs-policy", lambda st: st.pop(0)),
        "lb-access-logs-policy",
        "aws:SecureTransport 'false'",
    ),
    ("tls-only-buckets", "dev", drop("storage-replica-policy"), "storage-replica", "no aws:s3/bucketPolicy"),
    ("registry-auth-required", "dev", registry_config(lambda c: c.pop("auth")), "fleet-lt", "auth is None"),
    ("registry-auth-trusted", "dev", registry_config(lambda c: c.update(auth=SILLY)), "fleet-lt", "['silly']"),
    (
        "registry-auth-trusted",
        "prod",
        registry_config(lambda c: c["auth"]["token"].pop("issuer")),
        "fleet-lt",
        "auth.token has no ['issuer']",
    ),
    (
        "registry-auth-trusted",
        "staging",
        registry_config(lambda c: c["auth"].update(HTPASSWD)),
        "fleet-lt",
        "['htpasswd', 'token']",
    ),
    (
        "registry-auth-trusted",
        "dev",
        registry_config(lambda c: c.update(auth=HTPASSWD)),
        "fleet-lt",
        "auth is htpasswd: every htpasswd user may push and delete everywhere; use token mode, or waive",
    ),
    (
        "registry-auth-trusted",
        "payments-prod",
        registry_config(lambda c: c["auth"]["token"].update(realm="https://auth.example.net/auth")),
        "fleet-lt",
        "auth.token.realm is 'https://auth.example.net/auth', expected https://registry.payments.example.com/auth",
    ),
    (
        "registry-auth-trusted",
        "prod",
        registry_config(lambda c: c["auth"]["token"].update(realm="http://registry.example.com/auth")),
        "fleet-lt",
        "auth.token.realm is 'http://registry.example.com/auth'",
    ),
    (
        "registry-auth-trusted",
        "staging",
        registry_config(lambda c: c["auth"]["token"].update(rootcertbundle="token-signing.crt")),
        "fleet-lt",
        "rootcertbundle is 'token-signing.crt', expected an absolute path",
    ),
    ("token-service-routed", "dev", drop("lb-token-route"), STACK, "matching the realm path '/auth'"),
    (
        "token-service-routed",
        "staging",
        edit("lb-token-route", lambda p: p["conditions"][0]["pathPattern"].update(values=["/token"])),
        STACK,
        "matching the realm path '/auth'",
    ),
    (
        "token-service-routed",
        "prod",
        edit("lb-token-tg", lambda p: p["healthCheck"].update(path="/")),
        "lb-token-tg",
        "healthCheck (protocol, path) is ('HTTPS', '/'), expected ('HTTPS', '/healthz')",
    ),
    (
        "token-service-routed",
        "payments-prod",
        edit("fleet-asg", lambda p: p["targetGroupArns"].pop(1)),
        "fleet-asg",
        "targetGroupArns does not include lb-token-tg",
    ),
    ("token-service-routed", "dev", route_from_plain_http, "lb-token-route", "not an HTTPS listener of this stack"),
    (
        "token-service-routed",
        "staging",
        route_to_the_registry,
        "lb-tg",
        "healthCheck (protocol, path) is ('HTTPS', '/')",
    ),
    (
        "hosts-private",
        "dev",
        edit("fleet-lt", lambda p: p["networkInterfaces"][0].update(associatePublicIpAddress="true")),
        "fleet-lt",
        "associatePublicIpAddress is 'true'",
    ),
    (
        "hosts-private",
        "prod",
        edit("fleet-lt", lambda p: p["metadataOptions"].update(httpTokens="optional")),
        "fleet-lt",
        "httpTokens is 'optional'",
    ),
    (
        "hosts-private",
        "staging",
        edit("fleet-lt", lambda p: p["metadataOptions"].update(httpPutResponseHopLimit=2.0)),
        "fleet-lt",
        "httpPutResponseHopLimit is 2.0",
    ),
    ("hosts-private", "dev", edit("fleet-lt", lambda p: p.update(keyName="ops")), "fleet-lt", "keyName is 'ops'"),
    (
        "hosts-ingress-from-lb-only",
        "dev",
        edit("fleet-in-from-lb", open_ingress),
        "fleet-in-from-lb",
        "{'cidrIpv4': '0.0.0.0/0'}",
    ),
    (
        "hosts-ingress-from-lb-only",
        "staging",
        ingress_from_itself,
        "fleet-in-from-lb",
        "not the load balancer's security group",
    ),
    ("hosts-ingress-from-lb-only", "prod", add(host_rule_from_anywhere), "fleet-in-ssh", "['0.0.0.0/0']"),
    (
        "buckets-block-public-access",
        "staging",
        edit("lb-access-logs-public-access", lambda p: p.update(restrictPublicBuckets=False)),
        "lb-access-logs-public-access",
        "{'restrictPublicBuckets': False}",
    ),
    (
        "buckets-block-public-access",
        "prod",
        edit("storage-primary-public-access", lambda p: p.update(blockPublicAcls=False)),
        "storage-primary-public-access",
        "{'blockPublicAcls': False}",
    ),
    (
        "buckets-block-public-access",
        "dev",
        edit("storage-replica-public-access", lambda p: p.update(blockPublicPolicy=False)),
        "storage-replica-public-access",
        "{'blockPublicPolicy': False}",
    ),
    (
        "buckets-block-public-access",
        "payments-prod",
        edit("lb-access-logs-public-access", lambda p: p.update(ignorePublicAcls=False)),
        "lb-access-logs-public-access",
        "{'ignorePublicAcls': False}",
    ),
    (
        "buckets-block-public-access",
        "dev",
        drop("storage-replica-public-access"),
        "storage-replica",
        "no aws:s3/bucketPublicAccessBlock",
    ),
    (
        "bucket-policies-not-public",
        "prod",
        edit_policy("storage-replica-policy", public_read),
        "storage-replica-policy",
        "allows Principal {'AWS': '*'} with no Condition",
    ),
    ("no-plain-secrets", "dev", leak_password_in_tags, "storage-key", "tags.note holds the result of fleet-http"),
    ("no-plain-secrets", "prod", leak_password_in_user_data, "fleet-lt", "userData (decoded) holds the result"),
    (
        "no-plain-secrets",
        "staging",
        user_data(lambda d: d["write_files"].append({"path": "/root/key.pem", "content": PEM})),
        "fleet-lt",
        "userData (decoded) holds a PEM private key",
    ),
    (
        "no-plain-secrets",
        "dev",
        edit("fleet-http-secret-value", lambda p: p.update(secretString=unwrap(p["secretString"]))),
        "fleet-http-secret-value",
        "secretString holds the result of fleet-http-secret-random",
    ),
    ("fleet-replicated", "dev", edit("fleet-asg", lambda p: p.update(minSize=1.0)), "fleet-asg", "minSize is 1.0"),
    (
        "fleet-replicated",
        "staging",
        edit("fleet-asg", lambda p: p.update(vpcZoneIdentifiers=p["vpcZoneIdentifiers"][:1])),
        "fleet-asg",
        "vpcZoneIdentifiers has 1 subnets",
    ),
    (
        "fleet-replicated",
        "prod",
        edit("fleet-asg", lambda p: p.update(healthCheckType="EC2")),
        "fleet-asg",
        "healthCheckType is 'EC2'",
    ),
    (
        "fleet-replicated",
        "payments-prod",
        edit("lb-tg", lambda p: p["healthCheck"].update(matcher="200")),
        "lb-tg",
        "healthCheck.matcher is '200' while the registry runs a storage health check",
    ),
    ("edge-firewall", "prod", drop("waf-association"), "lb-alb", "no aws:wafv2/webAclAssociation"),
    (
        "edge-firewall",
        "staging",
        edit(
            "waf-acl", lambda p: p.update(rules=[r for r in p["rules"] if "rateBasedStatement" not in r["statement"]])
        ),
        "waf-acl",
        "no rate-based rule per client IP scoped to the token path '/auth'",
    ),
    (
        "edge-firewall",
        "dev",
        edit("waf-acl", lambda p: p["rules"][1]["statement"]["managedRuleGroupStatement"].update(name="Other")),
        "waf-acl",
        "lack the AWS managed rule group(s) ['AWSManagedRulesKnownBadInputsRuleSet']",
    ),
    (
        "edge-firewall",
        "payments-prod",
        edit("waf-logging", lambda p: p.update(redactedFields=[])),
        "waf-logging",
        "does not redact the authorization header",
    ),
    ("edge-firewall", "prod", drop("waf-logging"), "waf-acl", "no aws:wafv2/webAclLoggingConfiguration"),
    ("alarms-notify", "prod", drop("alarms-token-5xx"), "lb-token-tg", "no alarm on HTTPCode_Target_5XX_Count"),
    ("alarms-notify", "dev", drop("alarms-lb-5xx"), "lb-alb", "no alarm on HTTPCode_ELB_5XX_Count"),
    (
        "alarms-notify",
        "staging",
        edit("alarms-replication-latency", lambda p: p.update(alarmActions=[])),
        "alarms-replication-latency",
        "notify no SNS topic of the stack",
    ),
    (
        "alarms-notify",
        "payments-prod",
        drop("alarms-replication-failed"),
        "storage-replication",
        "no alarm on OperationsFailedReplication",
    ),
    (
        "alarms-notify",
        "prod",
        edit("alarms-backup-notifications", lambda p: p.update(backupVaultEvents=["BACKUP_JOB_FAILED"])),
        STACK,
        "sends ['BACKUP_JOB_FAILED', 'COPY_JOB_FAILED'] to the stack's topic",
    ),
    (
        "host-metrics-collected",
        "dev",
        drop("host-metrics-agent"),
        "fleet-asg",
        "no aws:ssm/association:Association targets its instances",
    ),
    (
        "host-metrics-collected",
        "prod",
        agent_document(lambda d: d["mainSteps"].reverse()),
        "host-metrics-agent",
        "installs the agent (AWS-ConfigureAWSPackage) and then configures it",
    ),
    (
        "host-metrics-collected",
        "staging",
        agent_document(lambda d: rescrape(d, "127.0.0.1:5002", "127.0.0.1:9102")),
        "host-metrics-agent-document",
        "reads 'token-service' at '127.0.0.1:9102', not the token service at 127.0.0.1:5002",
    ),
    (
        "host-metrics-collected",
        "payments-prod",
        agent_document(lambda d: rescrape(d, "127.0.0.1:5001", "0.0.0.0:5000")),
        "host-metrics-agent-document",
        "not the registry's debug listener at 127.0.0.1:5001",
    ),
    (
        "host-metrics-collected",
        "dev",
        drop("host-metrics-agent-policy"),
        "host-metrics-agent-config",
        "no role policy lets the hosts write the agent's log group '/registry-fleet/reg-dev/prometheus'",
    ),
    ("access-logs", "prod", drop("request-logs-registry-bucket"), "storage-primary", "no aws:s3/bucketLogging"),
    (
        "access-logs",
        "dev",
        edit("request-logs-registry-bucket", lambda p: p.update(targetBucket="someone-elses-bucket")),
        "storage-primary",
        "its access logs go to 'someone-elses-bucket', not a bucket of this stack",
    ),
    (
        "access-logs",
        "staging",
        drop("request-logs-cdn-source"),
        "cdn-distribution",
        "no aws:cloudwatch/logDeliverySource",
    ),
    (
        "access-logs",
        "payments-prod",
        drop("request-logs-cdn-delivery"),
        "request-logs-cdn-source",
        "no aws:cloudwatch/logDelivery:LogDelivery sends it anywhere",
    ),
    (
        "lockout-table",
        "dev",
        edit("access-lockout-table", lambda p: p["ttl"].update(enabled=False)),
        "access-lockout-table",
        "ttl.enabled is False",
    ),
    (
        "lockout-table",
        "prod",
        edit("access-lockout-table", lambda p: p.update(pointInTimeRecovery={"enabled": False})),
        "access-lockout-table",
        "pointInTimeRecovery.enabled is False",
    ),
    (
        "lockout-table",
        "staging",
        edit_policy(
            "storage-replication-policy",
            lambda st: st.append({"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}),
        ),
        "storage-replication-policy",
        "on the lockout table 'reg-staging-token-lockout': not the fleet's role",
    ),
    ("bucket-replicated", "dev", drop("storage-replication"), STACK, "no aws:s3/bucketReplicationConfig"),
    (
        "bucket-replicated",
        "staging",
        edit("storage-replication", lambda p: p["rules"][0]["deleteMarkerReplication"].update(status="Disabled")),
        "storage-replication",
        "deleteMarkerReplication.status is 'Disabled'",
    ),
    (
        "bucket-replicated",
        "prod",
        same_provider_as("storage-replica", "storage-primary"),
        "storage-replication",
        "is storage-replica, through the source's provider",
    ),
    ("bucket-replicated", "payments-prod", replicate_to_itself, "storage-replication", "is storage-primary"),
    (
        "bucket-replicated",
        "dev",
        edit("storage-replication", lambda p: p["rules"][0].update(status="Disabled")),
        "storage-replication",
        "rules[0].status is 'Disabled', expected 'Enabled'",
    ),
    (
        "cdn-signed-urls",
        "dev",
        edit("cdn-distribution", lambda p: p["defaultCacheBehavior"].update(trustedKeyGroups=[])),
        "cdn-distribution",
        "defaultCacheBehavior.trustedKeyGroups is []",
    ),
    (
        "cdn-origin-access-control",
        "prod",
        edit("cdn-distribution", lambda p: p["origins"][0].pop("originAccessControlId")),
        "cdn-distribution",
        "origins[0].originAccessControlId is None",
    ),
    (
        "cdn-origin-access-control",
        "dev",
        edit("cdn-distribution", lambda p: p["origins"][0].update(originPath="/docker/registry/v2")),
        "cdn-distribution",
        "originPath is '/docker/registry/v2'",
    ),
    (
        "cdn-read-only",
        "payments-prod",
        edit("cdn-distribution", lambda p: p["defaultCacheBehavior"].update(allowedMethods=["GET", "HEAD", "PUT"])),
        "cdn-distribution",
        "allowedMethods is ['GET', 'HEAD', 'PUT']",
    ),
    (
        "buckets-versioned",
        "prod",
        edit("storage-replica-versioning", lambda p: p["versioningConfiguration"].update(status="Suspended")),
        "storage-replica-versioning",
        "status is 'Suspended'",
    ),
    ("buckets-versioned", "dev", drop("storage-primary-versioning"), "storage-primary", "no aws:s3/bucketVersioning"),
    (
        "noncurrent-versions-expire",
        "prod",
        edit("storage-primary-lifecycle", lambda p: p.update(rules=p["rules"][1:])),
        "storage-primary-lifecycle",
        "noncurrentVersionExpiration",
    ),
    (
        "noncurrent-versions-expire",
        "dev",
        drop("storage-replica-lifecycle"),
        "storage-replica",
        "no aws:s3/bucketLifecycleConfiguration",
    ),
    ("backup-plan", "dev", drop("storage-backup-plan"), STACK, "no aws:backup/plan:Plan"),
    ("backup-plan", "prod", back_up_the_replica_only, "storage-backup-selection", "without storage-primary"),
    ("restore-testing", "dev", drop("storage-restore-testing-plan"), STACK, "no aws:backup/restoreTestingPlan"),
    (
        "restore-testing",
        "prod",
        restore_test_the_replica,
        "storage-restore-testing-selection",
        "without storage-primary",
    ),
    (
        "restore-testing",
        "dev",
        edit("storage-restore-testing-plan", lambda p: p["recoveryPointSelection"].update(includeVaults=[])),
        "storage-restore-testing-plan",
        "includeVaults is []",
    ),
    ("gc-window", "dev", drop("maintenance-gc-window"), STACK, "no enabled aws:ssm/maintenanceWindow"),
    (
        "gc-window",
        "prod",
        edit("maintenance-gc-gc", lambda p: p.update(priority=0.0)),
        "maintenance-gc-window",
        "garbage-collect must run after read-only",
    ),
    (
        "gc-window",
        "dev",
        edit("maintenance-gc-gc", lambda p: p.update(maxErrors="1")),
        "maintenance-gc-gc",
        "maxErrors",
    ),
    ("gc-window", "prod", delete_untagged, "maintenance-gc-gc", "--delete-untagged"),
    (
        "backup-vaults-encrypted",
        "prod",
        edit("storage-replica-vault", lambda p: p.pop("kmsKeyArn")),
        "storage-replica-vault",
        "kmsKeyArn is None",
    ),
    (
        "signing-key",
        "dev",
        edit("signing-key", lambda p: p.update(customerMasterKeySpec="ECC_SECG_P256K1")),
        "signing-key",
        "customerMasterKeySpec is 'ECC_SECG_P256K1'",
    ),
    (
        "signing-key",
        "prod",
        edit("signing-key", lambda p: p.update(keyUsage="ENCRYPT_DECRYPT")),
        STACK,
        "signing-key (keyUsage ENCRYPT_DECRYPT, customerMasterKeySpec ECC_NIST_P256)",
    ),
    (
        "signing-key",
        "staging",
        edit("signing-key", lambda p: p.pop("customerMasterKeySpec")),
        STACK,
        "customerMasterKeySpec SYMMETRIC_DEFAULT (default)",
    ),
    (
        "signing-key-policy",
        "prod",
        edit_policy("signing-key", lambda st: st[0].update(Action="kms:*")),
        "signing-key",
        "allows kms:Sign to the account root 'arn:aws:iam::123456789012:root'",
    ),
    (
        "signing-key-policy",
        "dev",
        edit_policy("signing-key", lambda st: st.append(SIGN_FOR_ANYONE)),
        "signing-key",
        "(AnyoneSigns) allows kms:Sign to Principal '*'",
    ),
    (
        "signing-key-policy",
        "staging",
        edit_policy("signing-key", lambda st: st[1].update(Principal={"AWS": "arn:aws:iam::123456789012:user/ci"})),
        "signing-key",
        "to 'arn:aws:iam::123456789012:user/ci', which is not an IAM role ARN",
    ),
    (
        "signing-key-policy",
        "payments-prod",
        edit_policy("signing-key", lambda st: st[0].update(NotAction=["kms:Decrypt"], Action=None)),
        "signing-key",
        "(AccountAdministersWithoutSigning) allows kms:Sign to the account root",
    ),
    ("signing-key-policy", "dev", edit("signing-key", lambda p: p.pop("policy")), "signing-key", "policy is not set"),
    (
        "signatures-required-in-prod",
        "prod",
        user_data(lambda d: d["write_files"].remove(next(f for f in d["write_files"] if f["path"] == GATE_CONFIG))),
        "fleet-lt",
        f"userData writes no {GATE_CONFIG} (the gate's config): a prod stack requires signatures",
    ),
    (
        "signatures-required-in-prod",
        "payments-prod",
        gate_config(lambda c: c.update(namespaces={"payments": {"require_signed": False}})),
        "fleet-lt",
        "protects no namespace",
    ),
    (
        "signatures-required-in-prod",
        "prod",
        user_data(lambda d: d["runcmd"].remove(["systemctl", "enable", "--now", "registry-gate"])),
        "fleet-lt",
        "runcmd does not enable registry-gate",
    ),
    (
        "signatures-required-in-prod",
        "payments-prod",
        drop("lb-gate-payments-manifests"),
        STACK,
        "no listener rule forwards /v2/payments/app/manifests/latest",
    ),
    (
        "signatures-required-in-prod",
        "payments-prod",
        drop("lb-gate-odd-paths"),
        STACK,
        "no listener rule forwards /v2/payments%2Fapp/manifests/latest",
    ),
    (
        "signatures-required-in-prod",
        "prod",
        edit("fleet-asg", lambda p: p.update(targetGroupArns=p["targetGroupArns"][:2])),
        STACK,
        "the gate's target group for 'base' is in no Auto Scaling group's targetGroupArns",
    ),
    (
        "scan-notifications",
        "dev",
        registry_config(lambda c: c.pop("notifications")),
        "fleet-lt",
        "notifications.endpoints urls are []",
    ),
    (
        "scan-notifications",
        "prod",
        forwarder_endpoint(lambda e: e.update(url="http://127.0.0.1:5004/events")),
        "fleet-lt",
        "urls are ['http://127.0.0.1:5004/events']",
    ),
    (
        "scan-notifications",
        "staging",
        forwarder_endpoint(lambda e: e["ignore"]["actions"].append("push")),
        "fleet-lt",
        "ignores push events",
    ),
    (
        "scan-notifications",
        "payments-prod",
        user_data(lambda d: d["runcmd"].remove(["systemctl", "enable", "--now", "registry-scan-events"])),
        "fleet-lt",
        "runcmd does not enable registry-scan-events",
    ),
    (
        "scan-queue",
        "dev",
        edit("scan-queue-queue", lambda p: p.pop("redrivePolicy")),
        "scan-queue-dlq",  # without the redrive the dead-letter queue is a scan queue of its own, with none
        "no dead-letter queue of the stack",
    ),
    (
        "scan-queue",
        "prod",
        edit("scan-queue-queue", lambda p: p.update(kmsMasterKeyId="alias/aws/sqs")),
        "scan-queue-queue",
        "kmsMasterKeyId is 'alias/aws/sqs'",
    ),
    (
        "scan-queue",
        "staging",
        drop("scanning-dlq-alarm"),
        "scan-queue-dlq",
        "no alarm on ApproximateNumberOfMessagesVisible",
    ),
    (
        "scan-queue",
        "dev",
        edit_policy("scanning-queue-policy", without_tls_only),
        "scan-queue-queue",
        "aws:SecureTransport",
    ),
    (
        "scan-queue",
        "payments-prod",
        edit(
            "scan-queue-queue",
            lambda p: p.update(
                redrivePolicy=p["redrivePolicy"].replace('"maxReceiveCount": 5', '"maxReceiveCount": 0')
            ),
        ),
        "scan-queue-queue",
        "maxReceiveCount is 0",
    ),
    (
        "scan-workers",
        "dev",
        worker_with_the_hosts_profile,
        "scanning-worker-lt",
        "is the registry hosts'",
    ),
    ("scan-workers", "prod", add(worker_ingress), "scanning-worker-lt", "admits ['scanning-worker-in-ssh']"),
    (
        "scan-workers",
        "staging",
        edit("scanning-worker-asg", lambda p: p.update(targetGroupArns=["arn:aws:elasticloadbalancing:tg"])),
        "scanning-worker-asg",
        "targetGroupArns is set",
    ),
    (
        "scan-workers",
        "dev",
        user_data(
            lambda d: d["runcmd"].remove(["systemctl", "enable", "--now", "registry-scanner"]), "scanning-worker-lt"
        ),
        "scanning-worker-lt",
        "does not enable registry-scanner",
    ),
    ("scan-workers", "payments-prod", drop("scanning-worker-lt"), STACK, "no scanner workers"),
    ("scan-nightly", "dev", drop("scanning-rescan-target"), STACK, "to the scan queue on a schedule"),
    (
        "scan-nightly",
        "prod",
        edit("scanning-rescan-rule", lambda p: p.update(scheduleExpression="cron(0 2 ? * SUN *)")),
        "scanning-rescan-target",
        "must run every day",
    ),
    (
        "scan-nightly",
        "staging",
        edit("scanning-rescan-target", lambda p: p.update(input='{"kind": "scan"}')),
        STACK,
        "rescan-all",
    ),
    ("scan-db-mirror", "dev", drop("scanning-mirror"), STACK, "no function mirrors the Trivy database"),
    ("scan-db-mirror", "prod", drop("scanning-mirror-target"), "scanning-mirror", "runs the mirror every day"),
    (
        "scan-db-mirror",
        "staging",
        edit("scanning-mirror", lambda p: p.pop("vpcConfig")),
        "scanning-mirror",
        "vpcConfig has no subnets",
    ),
    (
        "scan-db-mirror",
        "payments-prod",
        worker_config(lambda c: c.update(db_repository="ghcr.io/aquasecurity/trivy-db:2")),
        "scanning-worker-lt",
        "db_repository is 'ghcr.io/aquasecurity/trivy-db:2'",
    ),
]


def variant_ids(variants: Sequence[tuple[str, str, Change, str, str]]) -> list[str]:
    """rule-stack-resource, numbered where a rule has several variants."""
    return [f"{v[0]}-{sum(w[0] == v[0] for w in variants[:i]) + 1}-{v[1]}" for i, v in enumerate(variants)]


def test_every_rule_has_a_broken_variant() -> None:
    assert {v[0] for v in VARIANTS} == {r.id for r in RULES}


@pytest.mark.parametrize(("rule_id", "stack", "change", "resource", "says"), VARIANTS, ids=variant_ids(VARIANTS))
def test_broken_variant_fails_exactly_its_rule(
    rule_id: str, stack: str, change: Change, resource: str, says: str
) -> None:
    found = evaluate(change(list(stack_resources(stack))))
    assert {v.rule for v in found} == {rule_id}, found
    mine = [v for v in found if v.rule == rule_id]
    assert any(v.resource == resource and says in v.message for v in mine), mine


# --- what a preview sees: computed values not known yet -------------------------------------------


def decoded(text: str) -> str:
    """The text a base64 value (user-data) stands for; '' for anything else."""
    try:
        return user_data_text(text) if len(text) > 100 else ""
    except (ValueError, OSError, EOFError, UnicodeDecodeError):
        return ""


def preview_of(resources: Sequence[Res]) -> list[Res]:
    """The stack as a first preview sees it: no ids or outputs; every input derived from one is unknown."""
    computed = {r.id for r in resources} | {
        v for r in resources for k, v in r.outputs.items() if isinstance(v, str) and k not in r.inputs
    }
    computed = {c for c in computed if len(c) >= 8}

    def derived(text: str) -> bool:
        return any(c in text for c in computed)

    def blank(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: blank(v) for k, v in value.items()}
        if isinstance(value, list):
            return [blank(v) for v in value]
        if isinstance(value, str) and (derived(value) or derived(decoded(value))):
            return UNKNOWN
        return value

    return [dataclasses.replace(r, inputs=blank(r.inputs), id="", outputs={}) for r in resources]


@pytest.mark.parametrize("stack", STACKS)
def test_in_a_preview_rules_skip_what_is_unknown_and_report_nothing_new(stack: str) -> None:
    preview = preview_of(stack_resources(stack))
    assert named(preview, "fleet-lt").inputs["userData"] == UNKNOWN  # the shape this test is about
    assert {v.rule for v in evaluate(preview)} == set()


# --- the CrossGuard policies -----------------------------------------------------------------------

# The outputs each provider declares secret (additional_secret_outputs in its SDK): the engine keeps
# them in the resource's options and CrossGuard passes them in PolicyResource.opts.
SECRET_OUTPUTS = {
    "random:index/randomPassword:RandomPassword": ["bcryptHash", "result"],
    "aws:secretsmanager/secretVersion:SecretVersion": ["secretBinary", "secretString", "secretStringWo"],
    "tls:index/privateKey:PrivateKey": ["privateKeyOpenssh", "privateKeyPem", "privateKeyPemPkcs8"],
    "tls:index/selfSignedCert:SelfSignedCert": ["privateKeyPem", "privateKeyPemWo"],
    "tls:index/certRequest:CertRequest": ["privateKeyPem", "privateKeyPemWo"],
    "tls:index/locallySignedCert:LocallySignedCert": ["caPrivateKeyPem", "caPrivateKeyPemWo"],
}


@pytest.mark.parametrize("type_", sorted(SECRET_OUTPUTS))
def test_secret_outputs_match_the_provider_sdks(type_: str) -> None:
    package, module, cls = re.fullmatch(r"(\w+):(\w+)/\w+:(\w+)", type_).groups()  # type: ignore[union-attr]
    path = f"pulumi_{package}" if module == "index" else f"pulumi_{package}.{module}"
    source = inspect.getsource(getattr(importlib.import_module(path), cls))
    declared = re.search(r"additional_secret_outputs=\[([^\]]*)\]", source)
    assert declared and sorted(re.findall(r'"(\w+)"', declared[1])) == sorted(SECRET_OUTPUTS[type_])


def crossguard_view(resources: Sequence[Res]) -> list[PolicyResource]:
    """What CrossGuard hands a stack policy after an update: the final outputs as props (secrets
    unwrapped, the provider's secret outputs named in opts), parent and provider as objects, no ids."""
    providers = {
        r.urn: PolicyProviderResource(r.type, unwrap({**r.inputs, **r.outputs}), r.urn, r.name)
        for r in resources
        if r.type.startswith("pulumi:providers:")
    }
    built: dict[str, PolicyResource] = {}
    for r in resources:
        opts = PolicyResourceOptions(
            False, [], None, [], PolicyCustomTimeouts(0, 0, 0), SECRET_OUTPUTS.get(r.type, []), r.parent
        )
        props = unwrap({**r.inputs, **r.outputs})
        provider = providers.get(r.provider) if r.provider else None
        built[r.urn] = PolicyResource(r.type, props, r.urn, r.name, opts, provider, None, [], {})
    for r in resources:
        built[r.urn].parent = built.get(r.parent) if r.parent else None
    return list(built.values())


def run_policy(policy: StackValidationPolicy, resources: list[PolicyResource]) -> list[tuple[str, str | None]]:
    calls: list[tuple[str, str | None]] = []

    def report_violation(message: str, urn: str | None = None) -> None:
        calls.append((message, urn))

    assert policy.validate(StackValidationArgs(resources), report_violation) is None
    return calls


@functools.cache
def policy_named(name: str) -> StackValidationPolicy:
    return {p.name: p for p in policies(today=lambda: TODAY)}[name]


def test_one_mandatory_policy_per_rule_then_waivers_valid() -> None:
    made = policies()
    assert [p.name for p in made] == [r.id for r in RULES] + ["waivers-valid"]
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in made)
    assert all(p.description.startswith(f"practice {r.practice}: ") for p, r in zip(made, RULES, strict=False))


def with_waivers(*waivers: dict[str, str]) -> Change:
    return edit("policy-waivers", lambda p: p.update(waivers=list(waivers)))


def waiver(rule_id: str, expires: str = "2026-12-31", reason: str = "scanning lands with issue 12") -> dict[str, str]:
    return {"rule": rule_id, "reason": reason, "expires": expires}


@functools.cache
def unwaived(stack: str) -> tuple[Res, ...]:
    """The stack without its waivers (a stack file may waive a rule)."""
    return tuple(with_waivers()(list(stack_resources(stack))))


def first_variant(rule_id: str) -> tuple[str, str, Change, str, str]:
    return next(v for v in VARIANTS if v[0] == rule_id)


def urn_in(resources: Sequence[Res], name: str) -> str | None:
    return None if name == STACK else named(resources, name).urn


@pytest.mark.parametrize("rule_id", [r.id for r in RULES])
def test_policy_passes_a_stack_and_reports_its_broken_variant(rule_id: str) -> None:
    _, stack, change, resource, says = first_variant(rule_id)
    policy = policy_named(rule_id)
    assert run_policy(policy, crossguard_view(unwaived(stack))) == []
    broken = change(list(unwaived(stack)))
    calls = run_policy(policy, crossguard_view(broken))
    assert (urn_in(broken, resource), True) in {(urn, says in message) for message, urn in calls}, calls


def test_policies_honour_valid_waivers() -> None:
    broken = edit("signing-key", lambda p: p.update(keyUsage="ENCRYPT_DECRYPT"))(list(unwaived("dev")))
    assert run_policy(policy_named("signing-key"), crossguard_view(broken))  # what the waiver below waives
    waived = with_waivers(waiver("scan-queue"), waiver("signing-key"))(broken)
    view = crossguard_view(waived)
    assert [p.name for p in policies() if run_policy(policy_named(p.name), view)] == []


def test_waivers_valid_policy_reports_expired_and_unknown_waivers() -> None:
    broken = edit("signing-key", lambda p: p.update(keyUsage="ENCRYPT_DECRYPT"))(list(stack_resources("dev")))
    resources = with_waivers(waiver("signing-key", "2026-01-01"), waiver("hosts-dedicate"))(broken)
    view = crossguard_view(resources)
    urn = named(resources, "policy-waivers").urn
    errors = run_policy(policy_named("waivers-valid"), view)
    assert len(errors) == 2, errors
    assert errors[0][0] == "waiver for signing-key expired on 2026-01-01"
    assert "waiver for unknown rule 'hosts-dedicate'" in errors[1][0]
    assert {u for _, u in errors} == {urn}
    # An expired waiver waives nothing.
    assert run_policy(policy_named("signing-key"), view)


def test_to_res_reads_crossguard_proxies_keeps_unknowns_and_rewraps_secret_outputs() -> None:
    stack = PolicyResource("pulumi:pulumi:Stack", {}, "urn:pulumi:dev::p::pulumi:pulumi:Stack::p-dev", "p-dev",
                           PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), []),
                           None, None, [], {})  # fmt: skip
    provider = PolicyProviderResource("pulumi:providers:aws", {}, "urn:pulumi:dev::p::pulumi:providers:aws::a", "a")
    props = policy_proxy.unknown_checking_proxy(
        {"userData": UNKNOWN, "secretString": "hunter22hunter22", "nested": {"list": [UNKNOWN, "x"]}}
    )
    with pytest.raises(policy_proxy.UnknownValueError):
        props["userData"]  # the proxy CrossGuard hands a policy raises on unknowns
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), ["secretString"], stack.urn)
    res = to_res(PolicyResource(LAUNCH_TEMPLATE, props, "urn:x", "fleet-lt", opts, provider, stack, [], {}))
    assert res.inputs == {
        "userData": UNKNOWN,
        "secretString": {SECRET_SIG: SECRET_VALUE_SIG, "value": "hunter22hunter22"},
        "nested": {"list": [UNKNOWN, "x"]},
    }
    assert (res.parent, res.provider, res.id, dict(res.outputs)) == (None, provider.urn, "", {})
    # Rules skip what is not known yet: an unknown user-data is no violation of the host rules.
    assert [v for r in ("hosts-dedicated", "registry-auth-required") for v in rule_by_id(r).check([res])] == []


# --- the whole pack through pulumi-policy's analyzer service ----------------------------------------


def engine_request(resources: Sequence[Res], preview: bool = False) -> Any:
    """An AnalyzeStackRequest as the engine sends one: final outputs (or, in a first preview, inputs
    with computed values unknown) with the providers' secret outputs wrapped as secrets."""
    shown = preview_of(resources) if preview else resources

    def properties(r: Res) -> Any:
        values = unwrap({**r.inputs, **r.outputs})
        for key in SECRET_OUTPUTS.get(r.type, []):
            if key in values:
                values[key] = {SECRET_SIG: SECRET_VALUE_SIG, "value": values[key]}
        struct = struct_pb2.Struct()
        struct.update(values)
        return struct

    by_urn = {r.urn: r for r in shown}
    return proto.AnalyzeStackRequest(
        resources=[
            proto.AnalyzerResource(
                type=r.type,
                properties=properties(r),
                urn=r.urn,
                name=r.name,
                options=proto.AnalyzerResourceOptions(additionalSecretOutputs=SECRET_OUTPUTS.get(r.type, [])),
                provider=(
                    proto.AnalyzerProviderResource(
                        type=by_urn[r.provider].type,
                        properties=properties(by_urn[r.provider]),
                        urn=r.provider,
                        name=by_urn[r.provider].name,
                    )
                    if r.provider
                    else None
                ),
                parent=r.parent or "",
            )
            for r in shown
        ]
    )


def analyze(resources: Sequence[Res], preview: bool = False) -> list[Any]:
    pack: list[Policy] = list(policies(lambda: TODAY))
    servicer = _PolicyAnalyzerServicer("registry-fleet", "0.1.0", pack, EnforcementLevel.MANDATORY)
    return list(servicer.AnalyzeStack(engine_request(resources, preview), None).diagnostics)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_pack_through_the_analyzer_service(stack: str) -> None:
    resources = unwaived(stack)
    found = analyze(resources)
    assert found == []
    broken = analyze(edit("signing-key", lambda p: p.update(keyUsage="ENCRYPT_DECRYPT"))(list(resources)))
    assert {d.policyName for d in broken} == {"signing-key"}
    assert {d.enforcementLevel for d in broken} == {proto.MANDATORY}
    preview = analyze(resources, preview=True)
    assert [d.policyName for d in preview] == [], [d.message for d in preview]


# --- waivers -------------------------------------------------------------------------------------

V = Violation("hosts-dedicated", "fleet-lt", "userData packages include ['postgresql']")
W = Violation("signing-key", STACK, "no signing key")


def test_a_valid_waiver_moves_its_rules_violations_to_waived() -> None:
    assert apply_waivers([V, W], [waiver("hosts-dedicated")], TODAY) == ([W], [V], [])


def test_a_waiver_holds_through_its_expiry_day() -> None:
    assert apply_waivers([V], [waiver("hosts-dedicated", TODAY.isoformat())], TODAY) == ([], [V], [])


def test_an_expired_waiver_is_an_error_and_waives_nothing() -> None:
    assert apply_waivers([V], [waiver("hosts-dedicated", "2026-01-01")], TODAY) == (
        [V],
        [],
        ["waiver for hosts-dedicated expired on 2026-01-01"],
    )


def test_a_waiver_for_an_unknown_rule_is_an_error() -> None:
    unwaived, waived, errors = apply_waivers([V], [waiver("hosts-dedicatd")], TODAY)
    assert (unwaived, waived) == ([V], [])
    assert len(errors) == 1 and errors[0].startswith("waiver for unknown rule 'hosts-dedicatd'; known rules: ")
    assert "hosts-dedicated" in errors[0]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"expires": "next year"}, "waiver for hosts-dedicated has expires 'next year', expected a date YYYY-MM-DD"),
        ({"reason": " "}, "waiver for hosts-dedicated gives no reason"),
    ],
)
def test_a_malformed_waiver_is_an_error(bad: dict[str, str], error: str) -> None:
    assert apply_waivers([V], [{**waiver("hosts-dedicated"), **bad}], TODAY) == ([V], [], [error])


def test_waivers_are_read_from_the_waivers_component() -> None:
    resources = list(stack_resources("dev"))
    assert [r.type for r in resources].count(WAIVERS) == 1
    assert waivers_in(resources) == unwrap(named(resources, "policy-waivers").inputs["waivers"])
    assert waivers_in(with_waivers()(resources)) == []
    assert waivers_in(with_waivers(waiver("signing-key"))(resources)) == [waiver("signing-key")]
    # CrossGuard shows a component's registered outputs: the waivers are read there too.
    only_outputs = dataclasses.replace(
        named(resources, "policy-waivers"), inputs={}, outputs={"waivers": [waiver("x")]}
    )
    assert waivers_in([only_outputs]) == [waiver("x")]


@pytest.mark.parametrize("stack", STACKS)
def test_stack_passes_the_pack_with_its_own_waivers(stack: str) -> None:
    resources = stack_resources(stack)
    assert apply_waivers(evaluate(resources), waivers_in(resources), TODAY)[::2] == ([], [])


# --- retention in the maintenance window (no stack file sets storage.retention: a recorded variant) -------

RETENTION = {"storage": {"retention": {"team-a": {"keepLast": 20, "untaggedAfterDays": 14, "protect": ["v*"]}}}}


@pytest.mark.parametrize(
    ("change", "resource", "says"),
    [
        (
            edit("maintenance-gc-retention", lambda p: p.update(priority=2.0)),
            "maintenance-gc-window",
            "retention must run before read-only and garbage-collect",
        ),
        (
            edit("maintenance-gc-retention", lambda p: p.update(priority=1.0)),
            "maintenance-gc-window",
            "retention must run before read-only",
        ),
        (edit("maintenance-gc-retention", lambda p: p.update(maxErrors="1")), "maintenance-gc-retention", "maxErrors"),
    ],
    ids=["after-gc", "with-read-only", "max-errors"],
)
def test_gc_window_runs_retention_before_the_read_only_window(
    record_variant: Callable[..., Any], change: Change, resource: str, says: str
) -> None:
    resources = list(record_variant("dev", RETENTION).in_urn_order())
    assert not rule_by_id("gc-window").check(resources), "the fleet's own window with retention fails the rule"
    found = rule_by_id("gc-window").check(change(resources))
    assert any(v.resource == resource and says in v.message for v in found), found
