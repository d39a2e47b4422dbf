"""The operator CLI: validate and plan, their exit codes and what they print."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from fleet import cli
from fleet.engine import fake_secret
from infra.secrets import placeholder_access_secrets
from infra.settings import load_stack_settings
from tests.helpers import stacks_with_unprotected_dev


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def prod_plan() -> dict[str, object]:
    code, out, err = run("plan", "prod", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def test_validate_accepts_a_good_stack(tmp_path: Path) -> None:
    code, out, _ = run("validate", "prod")
    assert code == 0 and "stack prod: valid" in out
    assert "access: token mode, 3 team(s), 1 local user(s), 2 robot(s), ldaps://ldap.example.com" in out
    assert "registry-fleet:accessUserHashes and registry-fleet:ldapBindPassword are checked by pulumi" in out
    assert "  signing: 1 signer role(s), a break-glass role; pulls need a signature in: base\n" in out
    code, out, _ = run("validate", "dev")
    assert code == 0 and "  signing: 1 signer role(s); pulls need a signature in: team-a/release\n" in out
    out_io = io.StringIO()
    code = cli.main(
        ["validate", "dev"], out=out_io, err=io.StringIO(), stacks_dir=stacks_with_unprotected_dev(tmp_path)
    )
    assert code == 0 and "  signing: 1 signer role(s); pulls need a signature in: none (no gate)\n" in out_io.getvalue()


def test_validate_rejects_a_broken_stack_with_exit_2_naming_the_key(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    shutil.copytree("stacks", stacks)
    broken = stacks / "Pulumi.dev.yaml"
    broken.write_text(
        broken.read_text().replace("instanceType: t4g.medium", "instanceType: t4g.medium\n    minSize: 1")
    )
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["validate", "dev"], out=out, err=err, stacks_dir=stacks)
    assert code == 2
    assert "fleet.minSize: 1 is below 2: a registry fleet needs two hosts in two zones" in err.getvalue()
    assert "Traceback" not in err.getvalue() and out.getvalue() == ""


def test_unknown_stack_exits_2() -> None:
    code, _, err = run("validate", "nope")
    assert code == 2 and "known stacks:" in err


def test_bad_arguments_exit_2_without_traceback() -> None:
    code, _, err = run("plan")
    assert code == 2 and "Traceback" not in err and "stack" in err


def test_plan_json_lists_every_resource_with_type_name_parent_provider_inputs(prod_plan: dict[str, object]) -> None:
    resources = prod_plan["resources"]
    assert isinstance(resources, list) and len(resources) > 100
    assert all(set(r) == {"type", "name", "parent", "provider", "inputs"} for r in resources)
    assert prod_plan["stack"] == "prod"


def test_plan_json_covers_every_component_of_the_issue(prod_plan: dict[str, object]) -> None:
    types = {r["type"] for r in prod_plan["resources"]}  # type: ignore[attr-defined]
    for component in (
        "RegistryNetwork",
        "RegistryStorage",
        "RegistryFleet",
        "InternalTls",
        "RegistryLoadBalancer",
        "BlobCdn",
        "RegistryDns",
        "DnsValidatedCertificate",
    ):
        assert f"registry-fleet:index:{component}" in types, component


def test_plan_json_shows_no_secret_value(prod_plan: dict[str, object]) -> None:
    text = json.dumps(prod_plan)
    placeholders = placeholder_access_secrets(load_stack_settings("prod"))
    assert fake_secret("fleet-http-secret-random") not in text
    assert fake_secret("access-robot-ci-team-a-random") not in text
    assert placeholders.ldap_bind_password and placeholders.ldap_bind_password not in text
    assert placeholders.user_hashes and not [h for h in placeholders.user_hashes.values() if h in text]
    assert "PRIVATE KEY" not in text
    assert '"[secret]"' in text  # secrets are shown, redacted


def test_plan_json_outputs_name_the_token_service_and_no_admin_password(prod_plan: dict[str, object]) -> None:
    outputs = prod_plan["outputs"]
    assert isinstance(outputs, dict)
    assert outputs["registryUrl"] == "https://registry.example.com"
    assert outputs["accessMode"] == "token" and outputs["tokenRealm"] == "https://registry.example.com/auth"
    assert set(outputs["robotTokenSecretArns"]) == {"ci-team-a", "ci-team-b"}
    assert "adminPassword" not in outputs and "adminUser" not in outputs


def test_plan_json_redacts_the_htpasswd_admin_password(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    shutil.copytree("stacks", stacks)
    dev = stacks / "Pulumi.dev.yaml"
    config = yaml.safe_load(dev.read_text())
    config["config"]["registry-fleet:access"] = {"mode": "htpasswd"}
    dev.write_text(yaml.safe_dump(config))
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["plan", "dev", "--json"], out=out, err=err, stacks_dir=stacks) == 0, err.getvalue()
    outputs = json.loads(out.getvalue())["outputs"]
    assert outputs["accessMode"] == "htpasswd" and outputs["adminUser"] == "admin"
    assert outputs["adminPassword"] == "[secret]"
    assert fake_secret("fleet-admin-password-random") not in out.getvalue()


def test_plan_text_groups_by_component_with_counts() -> None:
    code, out, _ = run("plan", "dev")
    assert code == 0
    assert out.startswith("stack dev: pulumi up would create ")
    assert "RegistryStorage 'storage':" in out and "aws:s3/bucket:Bucket" in out


def test_lab_status_without_a_lab_exits_2_with_what_to_do(tmp_path: Path) -> None:
    code, _, err = run("lab", "status", "dev", "--state-dir", str(tmp_path / "none"))
    assert code == 2 and "no lab running" in err and "lab up" in err


def test_lab_down_without_a_lab_exits_2(tmp_path: Path) -> None:
    code, _, err = run("lab", "down", "--state-dir", str(tmp_path / "none"))
    assert code == 2 and "no lab running" in err


def test_stack_new_writes_a_valid_team_stack_and_refuses_to_overwrite(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    shutil.copytree("stacks", stacks)
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["stack", "new", "search", "staging"], out=out, err=err, stacks_dir=stacks) == 0, err.getvalue()
    assert (stacks / "Pulumi.search-staging.yaml").exists() and "pulumi stack init" in out.getvalue()
    assert cli.main(["validate", "search-staging"], out=io.StringIO(), err=err, stacks_dir=stacks) == 0
    before = (stacks / "Pulumi.search-staging.yaml").read_text()
    err = io.StringIO()
    assert cli.main(["stack", "new", "search", "staging"], out=io.StringIO(), err=err, stacks_dir=stacks) == 2
    assert "exists" in err.getvalue() and (stacks / "Pulumi.search-staging.yaml").read_text() == before


def test_bootstrap_refuses_a_bad_bucket_name_before_any_call() -> None:
    err = io.StringIO()
    assert cli.main(["bootstrap", "--region", "eu-west-1", "--name", "Bad_Name"], out=io.StringIO(), err=err) == 2
    assert "Traceback" not in err.getvalue() and "name" in err.getvalue()
