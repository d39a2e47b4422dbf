"""Settings: every stack file is valid, and bad settings fail clearly before any resource exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infra.settings import (
    HtpasswdAccess,
    SettingsError,
    TokenAccess,
    available_stacks,
    deep_merge,
    load_stack_settings,
    merge_over_defaults,
    project_defaults,
    protected_namespaces,
    settings_from_config,
    signed_namespaces,
    stack_overrides,
)
from tests.helpers import STACKS, settings_with, stack_config


def problems(stack: str, overrides: dict[str, object]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        settings_from_config(stack, deep_merge(stack_config(stack), overrides))
    return [str(p) for p in info.value.problems]


def test_the_four_stacks_exist() -> None:
    assert set(available_stacks()) >= {"dev", "staging", "prod", "payments-prod"}


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_is_valid(stack: str) -> None:
    settings = load_stack_settings(stack)
    assert settings.stack == stack


@pytest.mark.parametrize("stack", STACKS)
def test_stack_files_hold_only_what_differs_from_the_defaults(stack: str) -> None:
    """A key a stack repeats with the default's value belongs in Pulumi.yaml only."""
    defaults = project_defaults()

    def repeated(over: dict[str, object], base: dict[str, object], path: str) -> list[str]:
        out = []
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                out += repeated(value, base[key], f"{path}{key}.")  # type: ignore[arg-type]
            elif key in base and base[key] == value:
                out.append(f"{path}{key}")
        return out

    assert repeated(stack_overrides(Path("stacks") / f"Pulumi.{stack}.yaml"), defaults, "") == []


def test_prod_runs_three_zones_and_three_hosts() -> None:
    for stack in ("prod", "payments-prod"):
        s = load_stack_settings(stack)
        assert s.network.az_count >= 3 and s.fleet.min_size >= 3, stack


def test_min_size_below_two_names_key_value_and_reason() -> None:
    assert "fleet.minSize: 1 is below 2: a registry fleet needs two hosts in two zones" in problems(
        "dev", {"fleet": {"minSize": 1}}
    )


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        "dev",
        {"fleet": {"minSize": 1}, "region": "mars", "network": {"cidr": "8.8.8.0/24"}, "cdn": {"priceClass": "x"}},
    )
    paths = {p.split(":")[0] for p in found}
    assert paths == {"fleet.minSize", "region", "network.cidr", "cdn.priceClass"}, found


def test_unknown_key_is_rejected_with_the_allowed_keys() -> None:
    (msg,) = problems("dev", {"fleet": {"minSzie": 3}})
    assert msg.startswith("fleet.minSzie: 3: unknown key; allowed here:") and "minSize" in msg


def test_missing_key_says_where_to_set_it() -> None:
    config = stack_config("dev")
    del config["domain"]
    with pytest.raises(SettingsError) as info:
        settings_from_config("dev", config)
    assert [str(p) for p in info.value.problems] == [
        "domain: (missing): required; set it in the stack file or as a default in Pulumi.yaml"
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"fleet": {"maxSize": 1}}, "fleet.maxSize: 1 is below fleet.minSize (2)"),
        ({"fleet": {"desiredCapacity": 9}}, "fleet.desiredCapacity: 9 must lie within"),
        ({"replicaRegion": "eu-west-1"}, 'replicaRegion: "eu-west-1" equals region'),
        ({"domain": "dev.example.org"}, 'domain: "dev.example.org" is not inside the Cloudflare zone'),
        ({"network": {"azCount": 1}}, "network.azCount: 1 is below 2"),
        ({"network": {"cidr": "10.0.0.0/8"}}, 'network.cidr: "10.0.0.0/8": prefix must be /16 to /22'),
        ({"network": {"allowedCidrs": []}}, "network.allowedCidrs: []: empty"),
        (
            {"network": {"allowedCidrs": ["10.0.0.1/8"]}},
            'network.allowedCidrs: ["10.0.0.1/8"]: not IPv4 CIDR ranges: 10.0.0.1/8',
        ),
        ({"tls": {"policy": "ELBSecurityPolicy-2016-08"}}, 'tls.policy: "ELBSecurityPolicy-2016-08": not a TLS'),
        ({"backup": {"continuousRetentionDays": 36}}, "backup.continuousRetentionDays: 36 is outside 1..35"),
        ({"backup": {"schedule": "daily"}}, 'backup.schedule: "daily": not an AWS Backup schedule'),
        ({"cdn": {"signedUrlSeconds": 86400}}, "cdn.signedUrlSeconds: 86400 is outside 60..3600"),
        ({"storage": {"chunkSizeMiB": 1}}, "storage.chunkSizeMiB: 1 is outside 5..512"),
        ({"cloudflare": {"zoneId": "abc"}}, 'cloudflare.zoneId: "abc": a Cloudflare zone id'),
        ({"team": "Payments Team"}, 'team: "Payments Team": a team is a lowercase slug'),
        ({"waf": {"tokenRateLimit": 10}}, "waf.tokenRateLimit: 10 is outside 100..2000000 requests"),
        ({"waf": {"mode": "log"}}, """waf.mode: "log": Input should be 'count' or 'block'"""),
        ({"alerts": {"emails": ["oncall"]}}, """alerts.emails: ["oncall"]: 'oncall' is not an email address"""),
        (
            {"alerts": {"emails": ["a@example.com", "a@example.com"]}},
            'alerts.emails: ["a@example.com", "a@example.com"]: lists an address twice',
        ),
    ],
)
def test_bad_values_are_named(overrides: dict[str, object], expected: str) -> None:
    found = problems("dev", overrides)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"network": {"azCount": 2}}, "network.azCount: 2 is below 3: prod runs in three zones"),
        ({"network": {"natGateways": "single"}}, 'network.natGateways: "single": prod needs per-az'),
        ({"alerts": {"emails": []}}, "alerts.emails: [] is empty: a prod stack's alarms must reach someone"),
    ],
)
def test_prod_only_rules(overrides: dict[str, object], expected: str) -> None:
    found = problems("prod", overrides)
    assert any(p.startswith(expected) for p in found), found
    # The same values are fine outside prod.
    settings_from_config("staging", deep_merge(stack_config("staging"), overrides))


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_the_cdn_needs_its_alias_in_every_environment(stack: str) -> None:
    """On its default *.cloudfront.net certificate CloudFront accepts TLS 1.0 (rule tls-cdn-viewers)."""
    found = problems(stack, {"cdn": {"alias": False}})
    assert any(p.startswith("cdn.alias: false must be true while cdn.enabled is") for p in found), found
    settings_from_config(stack, deep_merge(stack_config(stack), {"cdn": {"alias": False, "enabled": False}}))


def test_hosts_run_debian_13_unless_a_stack_asks_for_12() -> None:
    assert {load_stack_settings(stack).fleet.debian_release for stack in STACKS} == {13}
    assert settings_from_config("dev", deep_merge(stack_config("dev"), {"fleet": {"debianRelease": 12}}))
    for bad in (11, 14, "13", True):
        found = problems("dev", {"fleet": {"debianRelease": bad}})
        assert any(p.startswith("fleet.debianRelease: ") for p in found), (bad, found)
    assert any("allowed: 13, 12" in p for p in problems("dev", {"fleet": {"debianRelease": 11}}))


def test_stack_names_that_would_break_bucket_names_are_rejected() -> None:
    with pytest.raises(SettingsError, match="at most 18 characters"):
        settings_from_config("payments-production-eu", stack_config("dev"))
    with pytest.raises(SettingsError, match="lowercase"):
        settings_from_config("Dev", stack_config("dev"))


def test_ipv6_client_ranges_are_rejected() -> None:
    found = problems("dev", {"network": {"allowedCidrs": ["2001:db8::/32"]}})
    assert any("the load balancer is IPv4 only" in p for p in found), found


def test_stack_name_cannot_be_set_in_config() -> None:
    config = {**stack_config("dev"), "stack": "prod"}
    with pytest.raises(SettingsError, match="set by Pulumi from the stack name"):
        settings_from_config("dev", config)


def test_settings_are_frozen() -> None:
    s = load_stack_settings("dev")
    with pytest.raises(Exception, match="frozen"):
        s.fleet.min_size = 1  # type: ignore[misc]


def test_objects_merge_key_by_key_and_lists_replace() -> None:
    base = {"network": {"cidr": "a", "allowedCidrs": ["x", "y"]}}
    assert deep_merge(base, {"network": {"allowedCidrs": ["z"]}}) == {"network": {"cidr": "a", "allowedCidrs": ["z"]}}


def test_unknown_stack_lists_known_stacks() -> None:
    with pytest.raises(SettingsError, match="known stacks: dev"):
        load_stack_settings("nope")


def test_malformed_yaml_is_a_settings_error(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.bad.yaml").write_text("config: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_stack_settings("bad", stacks_dir=tmp_path)


def test_graviton_instance_types_are_arm64() -> None:
    assert load_stack_settings("prod").fleet.architecture == "arm64"
    s = settings_from_config("dev", deep_merge(stack_config("dev"), {"fleet": {"instanceType": "m7i.large"}}))
    assert s.fleet.architecture == "amd64"


def test_pulumi_run_reads_engine_config_over_project_defaults() -> None:
    """The path `pulumi up` takes (infra/__main__.py): engine config, JSON objects, defaults merged."""
    import json

    import pulumi

    from fleet.engine import RecordingMocks
    from infra.settings import PROJECT, load_from_pulumi

    pulumi.runtime.set_mocks(RecordingMocks("eu-west-1"), project=PROJECT, stack="dev")
    # What the engine hands the program: strings, structured values as JSON, no project defaults
    # (here deliberately left out to prove the loader merges Pulumi.yaml's itself).
    engine = {
        f"{PROJECT}:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in stack_overrides(Path("stacks") / "Pulumi.dev.yaml").items()
    }
    pulumi.runtime.set_all_config(engine)
    try:
        settings = load_from_pulumi()
    finally:
        pulumi.runtime.set_all_config({})
    assert settings == load_stack_settings("dev")


# --- access: who may pull, push and delete ------------------------------------------------------

ROBOT = {"namespace": "team-a/ci", "actions": ["pull", "push"], "expires": "2027-06-30"}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"access": {"teams": {"team-c": {"namespaces": ["team-a/tools"]}}}},
            "access.teams.team-c.namespaces[0]: \"team-a/tools\": 'team-a/tools' overlaps 'team-a' of team 'team-a'",
        ),
        (
            {"access": {"ldap": None}},
            'access.teams.platform.groups: {"registry-platform": "maintainer"}: maps directory groups, '
            "but access.ldap is not set",
        ),
        (
            {"access": {"robots": {"ci-team-a": {**ROBOT, "namespace": "nobody/ci"}}}},
            "access.robots.ci-team-a.namespace: \"nobody/ci\": 'nobody/ci' is not owned by any team",
        ),
        (
            {"access": {"admins": ["registry-admin", "ci-team-a"]}},
            'access.admins[1]: "ci-team-a" is a robot: a CI account is never an admin',
        ),
        (
            {"access": {"teams": {"team-a": {"members": {"ci-team-a": "developer"}}}}},
            'access.teams.team-a.members.ci-team-a: "ci-team-a" is a robot: robots get their own grant',
        ),
        (
            {"access": {"ldap": {"url": "ldap://ldap.example.com"}}},
            "access.ldap: ",
        ),
        ({"access": {"mode": "basic"}}, "access.mode: \"basic\": Input should be 'token' or 'htpasswd'"),
    ],
    ids=[
        "overlapping-namespaces",
        "groups-without-ldap",
        "robot-namespace-not-owned",
        "robot-admin",
        "robot-member",
        "plain-ldap",
        "unknown-mode",
    ],
)
def test_bad_access_settings_are_named(overrides: dict[str, object], expected: str) -> None:
    found = problems("dev", overrides)
    assert any(p.startswith(expected) for p in found), found


def test_plain_ldap_without_start_tls_is_refused_naming_the_fix() -> None:
    (found,) = problems("dev", {"access": {"ldap": {"url": "ldap://ldap.example.com"}}})
    assert "is plain LDAP: the bind passwords would cross the network in clear" in found
    assert "Use ldaps://, or ldap:// with start_tls: true" in found
    settings_from_config(
        "dev",
        deep_merge(stack_config("dev"), {"access": {"ldap": {"url": "ldap://ldap.example.com", "startTls": True}}}),
    )


def access_problems(stack: str, access: dict[str, object]) -> list[str]:
    """Problems of the stack with its whole access block replaced (merging cannot empty a mapping)."""
    config = {**stack_config(stack), "access": access}
    with pytest.raises(SettingsError) as info:
        settings_from_config(stack, config)
    return [str(p) for p in info.value.problems]


def test_token_mode_needs_a_team_or_an_admin() -> None:
    assert access_problems("dev", {"mode": "token"}) == [
        "access.teams: {} is empty: in token mode give at least one team a namespace"
    ]


def test_prod_needs_token_mode() -> None:
    assert access_problems("prod", {"mode": "htpasswd"}) == [
        'access.mode: "htpasswd": prod needs token: htpasswd lets every user push everywhere'
    ]


def test_htpasswd_mode_carries_no_token_settings() -> None:
    found = problems("dev", {"access": {"mode": "htpasswd"}})
    token_keys = (
        "teams",
        "admins",
        "rules",
        "users",
        "robots",
        "ldap",
        "tokenLifetimeSeconds",
        "tokenSigning",
        "pullPolicies",
    )
    assert {p.split(":")[0] for p in found} == {f"access.{k}" for k in token_keys}, found
    assert all(p.endswith(": applies to mode token only; remove it or use mode token") for p in found), found
    s = settings_from_config("dev", {**stack_config("dev"), "access": {"mode": "htpasswd"}})
    assert isinstance(s.access, HtpasswdAccess) and s.access.mode == "htpasswd"


# --- access is a tagged union on mode: the model refuses a key of the other mode ---------------------

TOKEN_ONLY = {
    "tokenLifetimeSeconds": 300,
    "teams": {"a": {"namespaces": ["a"]}},
    "admins": ["root"],
    "rules": [],
    "users": ["registry-admin"],
    "robots": {},
    "ldap": None,
    "tokenSigning": {"generations": [1], "current": 1},
    "refreshTokens": {"enabled": False},
    "pipIndexUrl": "https://pypi.org/simple",
    "pullPolicies": {"a": {"requireSigned": True}},
}


@pytest.mark.parametrize(("key", "value"), TOKEN_ONLY.items(), ids=list(TOKEN_ONLY))
def test_a_token_mode_key_under_htpasswd_is_refused_naming_the_key(key: str, value: object) -> None:
    """Even with its default value or null: under htpasswd the key does not exist."""
    assert access_problems("dev", {"mode": "htpasswd", key: value}) == [
        f"access.{key}: {json.dumps(value)}: applies to mode token only; remove it or use mode token"
    ]


def test_every_token_mode_key_is_covered_by_the_union_test() -> None:
    assert set(TOKEN_ONLY) | {"mode"} == {f.alias or n for n, f in TokenAccess.model_fields.items()}


def test_a_key_of_no_mode_is_unknown_under_either_mode_and_lists_that_modes_keys() -> None:
    """The other way round: htpasswd mode has no key but `mode`, so under token mode a key that is not
    token mode's belongs to no mode; the message lists the keys token mode allows."""
    (token,) = problems("dev", {"access": {"realm": "registry"}})
    assert token == (
        'access.realm: "registry": unknown key; allowed here: admins, ldap, mode, pipIndexUrl, pullPolicies, '
        "refreshTokens, robots, rules, teams, tokenLifetimeSeconds, tokenSigning, users"
    )
    assert access_problems("dev", {"mode": "htpasswd", "realm": "registry"}) == [
        'access.realm: "registry": unknown key; allowed here: mode'
    ]


def test_a_nested_problem_names_the_stack_file_key_path_without_the_union_tag() -> None:
    found = problems("dev", {"access": {"robots": {"ci-team-a": {"rotation": 0}}}})
    assert found == ["access.robots.ci-team-a.rotation: 0: Input should be greater than or equal to 1"], found


def test_access_without_mode_is_required() -> None:
    config = {**stack_config("dev"), "access": {"teams": {}}}
    with pytest.raises(SettingsError) as info:
        settings_from_config("dev", config)
    assert [str(p) for p in info.value.problems] == [
        "access.mode: (missing): required; set it in the stack file or as a default in Pulumi.yaml"
    ]


def test_a_stack_file_choosing_htpasswd_gets_none_of_the_token_mode_defaults(tmp_path: Path) -> None:
    """Pulumi.yaml's access defaults (tokenSigning, ldap...) are token mode's: a stack that picks htpasswd
    writes `access: {mode: htpasswd}` and nothing else; its other keys would still be refused."""
    dev = (Path("stacks") / "Pulumi.dev.yaml").read_text()
    config = yaml.safe_load(dev)["config"]
    config["registry-fleet:access"] = {"mode": "htpasswd"}
    (tmp_path / "Pulumi.small.yaml").write_text(yaml.safe_dump({"config": config}))
    s = load_stack_settings("small", stacks_dir=tmp_path)
    assert s.access == HtpasswdAccess(mode="htpasswd")
    config["registry-fleet:access"] = {"mode": "htpasswd", "ldap": None}
    (tmp_path / "Pulumi.small.yaml").write_text(yaml.safe_dump({"config": config}))
    with pytest.raises(SettingsError) as info:
        load_stack_settings("small", stacks_dir=tmp_path)
    assert [str(p) for p in info.value.problems] == [
        "access.ldap: null: applies to mode token only; remove it or use mode token"
    ]


def test_merging_over_the_defaults_keeps_the_default_access_when_the_mode_stays() -> None:
    defaults = {"access": {"mode": "token", "tokenLifetimeSeconds": 300}, "fleet": {"mode": "x", "a": 1}}
    merged = merge_over_defaults(defaults, {"access": {"users": ["u"]}, "fleet": {"mode": "y"}})
    assert merged == {
        "access": {"mode": "token", "tokenLifetimeSeconds": 300, "users": ["u"]},
        "fleet": {"mode": "y", "a": 1},  # only a tagged union's tag replaces the object
    }
    assert merge_over_defaults(defaults, {"access": {"mode": "htpasswd"}})["access"] == {"mode": "htpasswd"}


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_runs_token_mode_with_the_directory_and_its_robots(stack: str) -> None:
    s = load_stack_settings(stack)
    assert isinstance(s.access, TokenAccess) and s.access.ldap is not None and s.access.robots
    assert s.token_issuer == f"registry-fleet-{stack}"


# --- access.tokenSigning: the signing key generations (a rotation in three runs) -----------------


def test_token_signing_defaults_to_one_generation_from_pulumi_yaml() -> None:
    assert project_defaults()["access"]["tokenSigning"] == {"generations": [1], "current": 1}
    access = load_stack_settings("dev").access
    assert isinstance(access, TokenAccess)
    signing = access.token_signing
    assert (signing.generations, signing.current) == ((1,), 1)


@pytest.mark.parametrize(
    "signing",
    [
        {"generations": [1, 2], "current": 1},
        {"generations": [1, 2], "current": 2},
        {"generations": [2], "current": 2},
    ],
    ids=["trust-both", "sign-with-2", "drop-1"],
)
def test_every_rotation_phase_is_valid(signing: dict[str, object]) -> None:
    s = settings_from_config("dev", deep_merge(stack_config("dev"), {"access": {"tokenSigning": signing}}))
    assert isinstance(s.access, TokenAccess)
    assert (list(s.access.token_signing.generations), s.access.token_signing.current) == (
        signing["generations"],
        signing["current"],
    )


@pytest.mark.parametrize(
    ("signing", "expected"),
    [
        ({"generations": []}, "access.tokenSigning.generations: [] must list 1 or 2 generations"),
        ({"generations": [1, 2, 3]}, "access.tokenSigning.generations: [1, 2, 3] must list 1 or 2 generations"),
        ({"generations": [0, 1]}, "access.tokenSigning.generations: [0, 1] must hold positive integers"),
        ({"generations": [-1]}, "access.tokenSigning.generations: [-1] must hold positive integers"),
        ({"generations": [2, 2]}, "access.tokenSigning.generations: [2, 2] must list distinct generations"),
        ({"generations": [2, 1]}, "access.tokenSigning.generations: [2, 1] is not in ascending order"),
        ({"generations": ["2"]}, 'access.tokenSigning.generations.0: "2": Input should be a valid integer'),
        ({"generations": [2]}, "access.tokenSigning.current: 1 is not in access.tokenSigning.generations ([2])"),
        (
            {"generations": [1, 2], "current": 3},
            "access.tokenSigning.current: 3 is not in access.tokenSigning.generations ([1, 2])",
        ),
        ({"current": True}, "access.tokenSigning.current: true: Input should be a valid integer"),
        ({"next": 2}, "access.tokenSigning.next: 2: unknown key; allowed here: current, generations"),
    ],
    ids=[
        "empty", "three", "zero", "negative", "twice", "descending", "string", "current-dropped", "current-unknown",
        "current-bool", "unknown-key",
    ],
)  # fmt: skip
def test_bad_token_signing_is_named(signing: dict[str, object], expected: str) -> None:
    found = problems("dev", {"access": {"tokenSigning": signing}})
    assert any(p.startswith(expected) for p in found), found


# --- access.refreshTokens -----------------------------------------------------------------------------


def test_refresh_token_settings_reach_the_token_service_and_are_checked() -> None:
    from host.token_config import token_service_config
    from infra.secrets import AccessSecrets
    from infra.token_service import token_service_spec
    from tests.helpers import settings_with

    revoked = "AbCdEfGhIjKlMnOpQrStUvWx"
    s = settings_with("dev", {"access": {"refreshTokens": {"lifetimeSeconds": 86400, "revoked": [revoked]}}})
    assert isinstance(s.access, TokenAccess)
    hashes = {n: "$2b$10$" + "a" * 53 for n in s.access.users}
    spec = token_service_spec(s, AccessSecrets(hashes, "password"), ["10.40.0.0/20"])
    assert spec is not None
    robots = {n: "$2b$10$" + "b" * 53 for n in spec.robots}  # the stack's and the scanner's
    config = token_service_config(spec, signing_key_file="/k", signing_cert_file="/c", robot_token_hashes=robots)
    assert config["refresh_tokens"] == {"enabled": True, "lifetime_seconds": 86400, "revoked": [revoked]}
    found = problems("dev", {"access": {"refreshTokens": {"lifetimeSeconds": 10, "revoked": ["x"]}}})
    assert any(p.startswith("access.refreshTokens.lifetimeSeconds") for p in found), found
    assert any("is not a refresh token id" in p for p in found), found
    found = problems("dev", {"access": {"mode": "htpasswd", "refreshTokens": {"enabled": False}}})
    assert any(p.startswith("access.refreshTokens") and "mode token only" in p for p in found), found


# --- signing and pull policies (practice 6) ------------------------------------------------------

SIGNER = "arn:aws:iam::123456789012:role/registry-fleet-signer-dev"


def signing_problems(stack: str, signing: dict[str, object], **top: object) -> list[str]:
    """Problems of the stack with its whole signing block replaced."""
    config = {**stack_config(stack), "signing": signing, **top}
    with pytest.raises(SettingsError) as info:
        settings_from_config(stack, config)
    return [str(p) for p in info.value.problems]


def test_every_stack_names_its_signer_roles() -> None:
    for stack in STACKS:
        signing = settings_from_config(stack, stack_config(stack)).signing
        assert signing.signer_roles and all(":role/" in arn for arn in signing.roles), stack


def test_signing_is_required() -> None:
    config = {k: v for k, v in stack_config("dev").items() if k != "signing"}
    with pytest.raises(SettingsError) as info:
        settings_from_config("dev", config)
    assert [str(p) for p in info.value.problems] == [
        "signing: (missing): required; set it in the stack file or as a default in Pulumi.yaml"
    ]


@pytest.mark.parametrize(
    ("arn", "says"),
    [
        ("arn:aws:iam::123456789012:user/ci", "an IAM user ARN, not a role"),
        ("arn:aws:iam::123456789012:root", "an IAM root ARN, not a role"),
        ("arn:aws:sts::123456789012:assumed-role/signer/ci-run", "an assumed-role session ARN"),
        ("registry-fleet-signer", "not an IAM role ARN like arn:aws:iam::123456789012:role/registry-fleet-signer"),
        ("arn:aws:iam::12345:role/signer", "not an IAM role ARN"),
    ],
)
def test_a_signer_that_is_not_a_role_is_refused_naming_what_it_is(arn: str, says: str) -> None:
    (problem,) = signing_problems("dev", {"signerRoles": [SIGNER, arn]})
    assert problem.startswith(f'signing.signerRoles: ["{SIGNER}", "{arn}"]: ') and says in problem, problem


def test_a_role_with_a_path_is_a_role() -> None:
    arn = "arn:aws:iam::123456789012:role/ci/github/registry-signer"
    config = {**stack_config("dev"), "signing": {"signerRoles": [arn]}}
    assert settings_from_config("dev", config).signing.roles == (arn,)


def test_signer_roles_must_not_be_empty_or_repeat() -> None:
    assert signing_problems("dev", {"signerRoles": []}) == [
        "signing.signerRoles: []: empty: name at least one role that signs images (CI's signer role)"
    ]
    assert signing_problems("dev", {"signerRoles": [SIGNER, SIGNER]}) == [
        f'signing.signerRoles: ["{SIGNER}", "{SIGNER}"]: lists a role twice'
    ]


def test_the_break_glass_role_is_a_role_of_its_own() -> None:
    assert signing_problems("dev", {"signerRoles": [SIGNER], "breakGlassRole": "arn:aws:iam::123456789012:user/x"}) == [
        'signing.breakGlassRole: "arn:aws:iam::123456789012:user/x": an IAM user ARN, not a role: signing goes '
        "through a role (CI assumes it through OIDC)"
    ]
    assert signing_problems("dev", {"signerRoles": [SIGNER], "breakGlassRole": SIGNER}) == [
        f'signing.breakGlassRole: "{SIGNER}" is also in signing.signerRoles: the break-glass role is a separate, '
        "rarely used role"
    ]


def test_signer_roles_live_in_the_stacks_account() -> None:
    other = "arn:aws:iam::999999999999:role/signer"
    found = signing_problems("payments-prod", {"signerRoles": [other], "breakGlassRole": other.replace("signer", "bg")})
    assert found == [
        f'signing.signerRoles[0]: "{other}" is a role of account 999999999999, not of accountId (111122223333): '
        "signer roles live in the stack's own account",
        f'signing.breakGlassRole: "{other.replace("signer", "bg")}" is a role of account 999999999999, not of '
        "accountId (111122223333): signer roles live in the stack's own account",
    ]
    # Without accountId the stack may deploy anywhere: the roles' account is not checked.
    config = {**stack_config("dev"), "signing": {"signerRoles": [other]}}
    assert settings_from_config("dev", config).signing.signer_roles == (other,)


def test_protected_namespaces_are_the_sorted_require_signed_ones() -> None:
    settings = settings_with(
        "dev",
        {"access": {"pullPolicies": {"team-b": {"requireSigned": True}, "base": {"requireSigned": True},
                                     "team-a": {"requireSigned": False}}}},
    )  # fmt: skip
    # dev's own: team-a/release (signed) and team-a/scanned (blockSeverity: the gate sees it too)
    assert protected_namespaces(settings) == ("base", "team-a/release", "team-a/scanned", "team-b")
    assert protected_namespaces(settings_with("dev", {})) == ("team-a/release", "team-a/scanned")
    assert signed_namespaces(settings) == ("base", "team-a/release", "team-b")
    assert signed_namespaces(settings_with("dev", {})) == ("team-a/release",)
    assert protected_namespaces(settings_with("prod", {})) == ("base",)
    assert protected_namespaces(settings_with("payments-prod", {})) == ("payments",)
    htpasswd = settings_from_config("dev", {**stack_config("dev"), "access": {"mode": "htpasswd"}})
    assert protected_namespaces(htpasswd) == ()


def test_a_pull_policy_names_a_namespace_some_team_owns() -> None:
    assert problems("dev", {"access": {"pullPolicies": {"team-c": {"requireSigned": True}}}}) == [
        'access.pullPolicies.team-c: "team-c" is not owned by any team (a pull policy names a team namespace or '
        "one under it)"
    ]
    # Under a team's namespace is fine.
    assert protected_namespaces(
        settings_with("dev", {"access": {"pullPolicies": {"team-a/ci": {"requireSigned": True}}}})
    ) == ("team-a/ci", "team-a/release", "team-a/scanned")


def test_a_pull_policy_cannot_lift_a_parents_protection() -> None:
    found = problems(
        "dev", {"access": {"pullPolicies": {"team-a": {"requireSigned": True}, "team-a/dev": {"requireSigned": False}}}}
    )
    assert found == [
        "access.pullPolicies.team-a/dev.requireSigned: false: has no effect: team-a/dev lies under the protected "
        "namespace team-a, which covers it"
    ]


def test_a_pull_policy_with_an_unknown_key_is_refused() -> None:
    (problem,) = problems("dev", {"access": {"pullPolicies": {"team-a": {"requiresigned": True}}}})
    assert problem.startswith("access.pullPolicies.team-a.requiresigned: true: unknown key; allowed here: ")


def test_pull_policies_exist_in_token_mode_only() -> None:
    assert access_problems("dev", {"mode": "htpasswd", "pullPolicies": {"team-a": {"requireSigned": True}}}) == [
        'access.pullPolicies: {"team-a": {"requireSigned": true}}: applies to mode token only; remove it or use '
        "mode token"
    ]


def test_at_most_forty_namespaces_are_protected() -> None:
    teams = {"many": {"namespaces": ["many"]}}
    policies = {f"many/n{i:02d}": {"requireSigned": True} for i in range(39)}  # and dev's team-a/release, /scanned
    found = problems("dev", {"access": {"teams": teams, "pullPolicies": policies}})
    assert (
        len(found) == 1
        and found[0].startswith("access.pullPolicies: [")
        and "protects 41 namespaces; at most 40" in found[0]
        and "team-a/scanned" in found[0]  # a scan-blocking namespace takes a listener rule too
    )
