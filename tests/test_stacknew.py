"""`stack new`: a team's stack file from a template, in a copy of stacks/ (the real one is never touched)."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path
from typing import Any

import pytest

from fleet.stacknew import StackNewError, new_stack
from infra.settings import (
    available_stacks,
    deep_merge,
    load_stack_settings,
    project_defaults,
    stack_overrides,
)

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILE = REPO / "Pulumi.yaml"


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO / "stacks", tmp_path / "stacks"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def effective_cidr(stack: str, stacks_dir: Path) -> str:
    return load_stack_settings(stack, stacks_dir=stacks_dir).network.cidr


@pytest.mark.parametrize(
    ("team", "env", "template", "domain"),
    [
        ("search", "dev", None, "search.dev.example.com"),
        ("search", "staging", None, "search.staging.example.com"),
        ("search", "prod", None, "search.example.com"),
        ("billing", "staging", "payments-prod", "billing.staging.example.com"),
        ("platform", "staging", "staging", "platform.staging.example.com"),
    ],
)
def test_new_stack_validates_and_round_trips(
    stacks: Path, team: str, env: str, template: str | None, domain: str
) -> None:
    before = {p.name for p in stacks.iterdir()}
    path, commands = new_stack(team, env, template, stacks, PROJECT_FILE)

    name = f"{team}-{env}"
    assert path == stacks / f"Pulumi.{name}.yaml" and path.is_file()
    settings = load_stack_settings(name, stacks_dir=stacks, project_file=PROJECT_FILE)
    assert (settings.stack, settings.team, settings.environment, settings.domain) == (name, team, env, domain)
    assert name in available_stacks(stacks)
    assert commands == [
        f"pulumi stack init {name}",
        f"pulumi config set --stack {name} --secret cloudflare:apiToken"
        "   # prompts for a Cloudflare API token with DNS edit rights on the zone example.com",
        f"python -m fleet validate {name}",
        f"python -m fleet plan {name}",
    ]
    # Nothing but the new file appeared (the temporary file is gone).
    assert {p.name for p in stacks.iterdir()} == before | {path.name}


def test_everything_else_comes_from_the_template(stacks: Path) -> None:
    new_stack("search", "prod", None, stacks, PROJECT_FILE)
    new = load_stack_settings("search-prod", stacks_dir=stacks).model_dump()
    old = load_stack_settings("prod", stacks_dir=stacks).model_dump()
    # Waivers are granted to one stack and are not copied (the new file says so).
    for key in ("stack", "team", "domain", "waivers"):
        del new[key], old[key]
    assert new["network"].pop("cidr") != old["network"].pop("cidr")
    assert new == old


def test_default_template_is_prod_for_prod_and_dev_otherwise(stacks: Path) -> None:
    new_stack("search", "staging", None, stacks, PROJECT_FILE)
    s = load_stack_settings("search-staging", stacks_dir=stacks)
    assert s.fleet.instance_type == "t4g.medium" and s.network.nat_gateways == "single"  # dev's choices
    new_stack("search", "prod", None, stacks, PROJECT_FILE)
    assert load_stack_settings("search-prod", stacks_dir=stacks).storage.object_lock.mode == "COMPLIANCE"  # prod's


@pytest.mark.parametrize(("team", "env", "template"), [("search", "dev", None), ("billing", "prod", "payments-prod")])
def test_new_file_holds_only_what_differs_from_the_defaults(
    stacks: Path, team: str, env: str, template: str | None
) -> None:
    path, _ = new_stack(team, env, template, stacks, PROJECT_FILE)
    defaults = project_defaults(PROJECT_FILE)

    def repeated(over: dict[str, Any], base: dict[str, Any], prefix: str) -> list[str]:
        out = []
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                out += repeated(value, base[key], f"{prefix}{key}.")
            elif key in base and base[key] == value:
                out.append(f"{prefix}{key}")
        return out

    overrides = stack_overrides(path)
    assert repeated(overrides, defaults, "") == []
    assert overrides["team"] == team and overrides["environment"] == env


def test_owner_is_marked_to_do(stacks: Path) -> None:
    path, _ = new_stack("search", "dev", None, stacks, PROJECT_FILE)
    assert "# TODO: set the owner" in path.read_text()
    path, _ = new_stack("billing", "prod", "payments-prod", stacks, PROJECT_FILE)
    text = path.read_text()
    assert "  # TODO: set the owner (who answers for this stack); copied from the stack payments-prod.\n" in text
    assert load_stack_settings("billing-prod", stacks_dir=stacks).owner == "payments-platform@example.com"


def test_the_templates_signer_roles_are_marked_to_do(stacks: Path) -> None:
    path, _ = new_stack("billing", "prod", "payments-prod", stacks, PROJECT_FILE)
    text = path.read_text()
    todo = "  # TODO: name the team's own signer role (its CI's, through OIDC); these are the stack payments-prod's.\n"
    assert todo in text and text.index(todo) < text.index("registry-fleet:signing:")
    roles = load_stack_settings("billing-prod", stacks_dir=stacks).signing.signer_roles
    assert roles == load_stack_settings("payments-prod").signing.signer_roles


def test_template_account_and_own_vpc_range_are_not_copied(stacks: Path) -> None:
    path, _ = new_stack("billing", "prod", "payments-prod", stacks, PROJECT_FILE)
    s = load_stack_settings("billing-prod", stacks_dir=stacks)
    assert s.account_id is None  # payments' account is not billing's
    assert "# TODO: pin the team's AWS account" in path.read_text()
    # payments-prod allows its own VPC and an office range; the new stack allows its own VPC instead.
    assert s.network.allowed_cidrs == (s.network.cidr, "10.8.0.0/16")
    assert s.network.cidr != "10.60.0.0/16"


def test_cidr_differs_from_every_other_stack(stacks: Path) -> None:
    existing = {stack: effective_cidr(stack, stacks) for stack in available_stacks(stacks)}
    default = project_defaults(PROJECT_FILE)["network"]["cidr"]

    new_stack("search", "dev", None, stacks, PROJECT_FILE)
    new_stack("search", "prod", None, stacks, PROJECT_FILE)

    first, second = effective_cidr("search-dev", stacks), effective_cidr("search-prod", stacks)
    # The repo's stacks use 10.40 (the default, dev), .41, .42 and .60: the next free /16 is 10.43.
    assert (first, second) == ("10.43.0.0/16", "10.44.0.0/16")
    for cidr in (first, second):
        net = ipaddress.IPv4Network(cidr)
        for other in [*existing.values(), default]:
            assert not net.overlaps(ipaddress.IPv4Network(other)), (cidr, other)
    assert not ipaddress.IPv4Network(first).overlaps(ipaddress.IPv4Network(second))


def test_cidr_avoids_ranges_that_overlap_without_being_equal(stacks: Path) -> None:
    (stacks / "Pulumi.edge.yaml").write_text(
        (stacks / "Pulumi.staging.yaml").read_text().replace("10.41.0.0/16", "10.43.128.0/20")
    )
    new_stack("search", "dev", None, stacks, PROJECT_FILE)
    assert effective_cidr("search-dev", stacks) == "10.44.0.0/16"


def test_refuses_to_overwrite(stacks: Path) -> None:
    path, _ = new_stack("search", "dev", None, stacks, PROJECT_FILE)
    path.write_text(path.read_text() + "# edited by the team\n")
    before = snapshot(stacks)

    with pytest.raises(
        StackNewError, match=r"stack search-dev: .*Pulumi\.search-dev\.yaml exists; refusing to overwrite"
    ):
        new_stack("search", "dev", "prod", stacks, PROJECT_FILE)
    with pytest.raises(StackNewError, match="refusing to overwrite"):
        new_stack("payments", "prod", None, stacks, PROJECT_FILE)  # a hand-written stack file
    assert snapshot(stacks) == before


@pytest.mark.parametrize(
    ("team", "env", "template", "message"),
    [
        ("Search", "dev", None, "team 'Search': a team is a lowercase slug"),
        ("s", "dev", None, "team 's': a team is a lowercase slug"),
        ("search_team", "dev", None, "team 'search_team': a team is a lowercase slug"),
        ("search-", "dev", None, "team 'search-': a team is a lowercase slug"),
        ("search", "production", None, "env 'production': one of dev, staging, prod"),
        ("search", "Dev", None, "env 'Dev': one of dev, staging, prod"),
        (
            "observability",
            "staging",
            None,
            "team 'observability': the stack name observability-staging has 21 characters, over 18",
        ),
        ("search", "dev", "nope", "--from 'nope': no stack file"),
        ("dev", "prod", None, "team 'dev': the domain dev.example.com is already the domain of stack dev"),
        ("search", "prod", "dev", "stack search-prod from template dev would not be valid"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(
    stacks: Path, team: str, env: str, template: str | None, message: str
) -> None:
    before = snapshot(stacks)
    with pytest.raises(StackNewError) as err:
        new_stack(team, env, template, stacks, PROJECT_FILE)
    assert str(err.value).startswith(message), str(err.value)
    assert snapshot(stacks) == before


def test_too_long_name_says_how_long_the_team_may_be(stacks: Path) -> None:
    with pytest.raises(StackNewError, match="for a staging stack the team name can have at most 10"):
        new_stack("observability", "staging", None, stacks, PROJECT_FILE)
    path, _ = new_stack("observabil", "staging", None, stacks, PROJECT_FILE)  # exactly 18
    assert load_stack_settings("observabil-staging", stacks_dir=stacks).stack == "observabil-staging"
    assert path.exists()


def test_invalid_result_lists_the_problems(stacks: Path) -> None:
    """dev's shape is not allowed in prod: the settings loader's problems are passed on, nothing written."""
    with pytest.raises(StackNewError) as err:
        new_stack("search", "prod", "dev", stacks, PROJECT_FILE)
    text = str(err.value)
    assert "network.azCount: 2 is below 3: prod runs in three zones" in text
    assert 'network.natGateways: "single": prod needs per-az' in text
    assert not (stacks / "Pulumi.search-prod.yaml").exists()


def test_merged_result_equals_the_written_file(stacks: Path) -> None:
    """What was validated is what was written: loading the file merges to the same config."""
    path, _ = new_stack("search", "dev", None, stacks, PROJECT_FILE)
    merged = deep_merge(project_defaults(PROJECT_FILE), stack_overrides(path))
    assert merged["team"] == "search" and merged["network"]["cidr"] == "10.43.0.0/16"
    assert merged["cloudflare"] == {"zone": "example.com", "zoneId": "0123456789abcdef0123456789abcdef"}
