"""`python -m fleet stack new TEAM ENV [--from TEMPLATE]`: onboard a team with its own stack file.

The new `stacks/Pulumi.<team>-<env>.yaml` starts from a template stack (`--from`; default `prod`
for a prod stack, `dev` otherwise) and changes what makes it the team's own:

- `team` and `environment`;
- `domain`: `<team>.<zone>` for prod and `<team>.<env>.<zone>` otherwise, with the template's
  Cloudflare zone, which is the convention of the existing stacks (prod `example.com`, dev
  `dev.example.com`, payments-prod `payments.example.com`); a domain another stack already
  uses is refused;
- `network.cidr`: the first 10.x.0.0/16 (x from 40 up) that overlaps no stack file's VPC range
  nor the Pulumi.yaml default; an `allowedCidrs` entry equal to the template's own VPC range
  becomes the new range;
- `owner` stays the template's (a valid value) under a `# TODO: set the owner` comment:
  inventing an address would hide that nobody has been named yet;
- `signing` stays the template's (valid role ARNs) under a TODO comment: the team's own signer role
  exists once its CI does;
- not copied: the template's `accountId` (another team's account; a TODO comment says to pin
  the team's own) and its `waivers` (exceptions granted to that stack alone).

Then every key equal to the Pulumi.yaml default is dropped (stack files hold only what differs),
the result is validated with the settings loader, and the file is written atomically without
ever replacing an existing one. Returns the commands to run next.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from infra.settings import (
    ENVIRONMENTS,
    PROJECT,
    STACK_NAME,
    TEAM_SLUG,
    Settings,
    SettingsError,
    available_stacks,
    merge_over_defaults,
    project_defaults,
    settings_from_config,
    stack_file,
    stack_overrides,
)

# Provider secrets a stack needs before `pulumi up`: (config key, what to paste when prompted).
SECRETS = (("cloudflare:apiToken", "a Cloudflare API token with DNS edit rights on the zone {zone}"),)
# Template keys that belong to the template stack alone.
NOT_COPIED = ("accountId", "waivers")
FIRST_OCTET, FIRST_SECOND_OCTET = 10, 40
MAX_STACK_NAME = 18  # infra.settings.STACK_NAME


class StackNewError(ValueError):
    """A user mistake: the stack exists, a bad team/env/template, or a result that would not validate."""


def default_template(env: str) -> str:
    return "prod" if env == "prod" else "dev"


def new_stack(
    team: str, env: str, template: str | None, stacks_dir: Path, project_file: Path
) -> tuple[Path, list[str]]:
    """Write `stacks_dir/Pulumi.<team>-<env>.yaml` from a template stack; (the file, the next commands)."""
    name = _check_names(team, env)
    path = stack_file(name, stacks_dir)
    if path.exists():
        raise StackNewError(f"stack {name}: {path} exists; refusing to overwrite it (edit it, or pick another team)")
    template = template or default_template(env)
    known = available_stacks(stacks_dir)
    if template not in known:
        raise StackNewError(
            f"--from {template!r}: no stack file {stack_file(template, stacks_dir)}; known stacks: "
            f"{', '.join(known) or 'none'}"
        )

    defaults = project_defaults(project_file)
    others = {stack: merge_over_defaults(defaults, stack_overrides(stack_file(stack, stacks_dir))) for stack in known}
    base = stack_overrides(stack_file(template, stacks_dir))
    merged_template = others[template]

    config = {k: copy.deepcopy(v) for k, v in base.items() if k not in NOT_COPIED}
    config["team"] = team
    config["environment"] = env
    config["domain"] = domain_for(team, env, _zone(merged_template, template))
    taken = sorted(s for s, c in others.items() if c.get("domain") == config["domain"])
    if taken:
        raise StackNewError(
            f"team {team!r}: the domain {config['domain']} is already the domain of stack {', '.join(taken)}"
        )
    cidr = free_cidr([c.get("network", {}).get("cidr") for c in others.values()] + [_cidr(defaults)])
    network = dict(config.get("network") or {})
    template_cidr = _cidr(merged_template)
    if "allowedCidrs" in network:
        network["allowedCidrs"] = [cidr if c == template_cidr else c for c in network["allowedCidrs"]]
    config["network"] = {"cidr": cidr, **{k: v for k, v in network.items() if k != "cidr"}}

    overrides = only_differences(config, defaults)
    try:
        settings = settings_from_config(name, merge_over_defaults(defaults, overrides), source=f"new stack {name}")
    except SettingsError as err:
        problems = "\n".join(f"  - {p}" for p in err.problems)
        raise StackNewError(
            f"stack {name} from template {template} would not be valid; pick another --from or fix the template:\n"
            f"{problems}"
        ) from None

    text = render(name, template, overrides, settings, dropped=[k for k in NOT_COPIED if k in base])
    if _parse(text) != overrides:  # what is written must be exactly what was validated
        raise RuntimeError(f"rendering stack {name} changed its values")
    write_new(path, text)
    return path, next_commands(name, settings.cloudflare.zone)


def _check_names(team: str, env: str) -> str:
    if not TEAM_SLUG.match(team):
        raise StackNewError(
            f"team {team!r}: a team is a lowercase slug: letters, digits and dashes, 2 to 32 characters, "
            "starting with a letter and ending with a letter or digit"
        )
    if env not in ENVIRONMENTS:
        raise StackNewError(f"env {env!r}: one of {', '.join(ENVIRONMENTS)}")
    name = f"{team}-{env}"
    if not STACK_NAME.match(name):
        room = MAX_STACK_NAME - len(env) - 1
        raise StackNewError(
            f"team {team!r}: the stack name {name} has {len(name)} characters, over {MAX_STACK_NAME} "
            f"(it prefixes S3 bucket names); for a {env} stack the team name can have at most {room}"
        )
    return name


def domain_for(team: str, env: str, zone: str) -> str:
    return f"{team}.{zone}" if env == "prod" else f"{team}.{env}.{zone}"


def _zone(config: dict[str, Any], template: str) -> str:
    zone = (config.get("cloudflare") or {}).get("zone")
    if not isinstance(zone, str) or not zone:
        raise StackNewError(f"--from {template!r}: the template sets no cloudflare.zone to put the team's domain in")
    return zone


def _cidr(config: dict[str, Any]) -> str | None:
    value = (config.get("network") or {}).get("cidr")
    return value if isinstance(value, str) else None


def free_cidr(used: list[str | None]) -> str:
    """The first 10.x.0.0/16, x from 40 up (then below 40), that overlaps none of `used`."""
    nets = []
    for cidr in used:
        with contextlib.suppress(TypeError, ValueError):  # a broken range is the settings loader's to report
            nets.append(ipaddress.IPv4Network(cidr))
    for second in [*range(FIRST_SECOND_OCTET, 256), *range(FIRST_SECOND_OCTET)]:
        candidate = ipaddress.IPv4Network(f"{FIRST_OCTET}.{second}.0.0/16")
        if not any(candidate.overlaps(net) for net in nets):
            return str(candidate)
    raise StackNewError("no free 10.x.0.0/16 left among the stack files; set network.cidr by hand")


def only_differences(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Drop every key whose value equals the Pulumi.yaml default (objects compared key by key)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        base = defaults.get(key, _ABSENT)
        if isinstance(value, dict) and isinstance(base, dict):
            rest = only_differences(value, base)
            if rest:
                out[key] = rest
        elif value != base:
            out[key] = value
    return out


_ABSENT: Any = object()


# --- the file ---------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists: the style of the hand-written stack files."""


def _flow_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _flow_list)


def _key_order() -> list[str]:
    return [field.alias or name for name, field in Settings.model_fields.items()]


def _entry(key: str, value: Any) -> list[str]:
    text = yaml.dump({f"{PROJECT}:{key}": value}, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    return ["  " + line for line in text.splitlines()]


def render(name: str, template: str, overrides: dict[str, Any], settings: Settings, dropped: list[str]) -> str:
    team, env = settings.team, settings.environment
    lines = [
        f"# {name}: team {team}'s {env} stack, from the stack {template}:",
        f"#   python -m fleet stack new {team} {env} --from {template}",
        f"# Only what differs from Pulumi.yaml. Domain {settings.domain}; VPC {settings.network.cidr}, used by",
        "# no other stack file.",
        "config:",
    ]
    order = _key_order()
    for key in sorted(overrides, key=lambda k: order.index(k) if k in order else len(order)):
        if key == "owner":
            lines.append(f"  # TODO: set the owner (who answers for this stack); copied from the stack {template}.")
        if key == "signing":
            lines.append(
                f"  # TODO: name the team's own signer role (its CI's, through OIDC); these are the stack {template}'s."
            )
        lines += _entry(key, overrides[key])
        if key == "team":
            if "owner" not in overrides:
                lines += [
                    f"  # TODO: set the owner (who answers for this stack); until then it is {settings.owner},",
                    "  # the Pulumi.yaml default:",
                    f"  # {PROJECT}:owner: someone@example.com",
                ]
            if "accountId" in dropped:
                lines += [
                    f"  # TODO: pin the team's AWS account (the account of the stack {template} is not copied):",
                    f'  # {PROJECT}:accountId: "123456789012"',
                ]
    if "waivers" in dropped:
        lines.append(f"  # The waivers of the stack {template} are not copied: a waiver is granted to one stack.")
    return "\n".join(lines) + "\n"


def _parse(text: str) -> dict[str, Any]:
    config = (yaml.safe_load(text) or {}).get("config") or {}
    return {str(k).partition(":")[2]: v for k, v in config.items() if str(k).startswith(f"{PROJECT}:")}


def write_new(path: Path, text: str) -> None:
    """Write through a temporary file and link it into place: atomic, and never replaces a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)  # unlike rename, fails when the target exists
        except FileExistsError:
            raise StackNewError(f"{path} appeared while writing; refusing to overwrite it") from None
    finally:
        os.unlink(tmp)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def next_commands(name: str, zone: str) -> list[str]:
    secrets = [
        f"pulumi config set --stack {name} --secret {key}   # prompts for {what.format(zone=zone)}"
        for key, what in SECRETS
    ]
    return [
        f"pulumi stack init {name}",
        *secrets,
        f"python -m fleet validate {name}",
        f"python -m fleet plan {name}",
    ]
