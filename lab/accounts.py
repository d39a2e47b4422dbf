"""The lab's accounts, seeded from a stack's access settings (token mode).

The stack names roles, groups and accounts but holds no passwords; the lab makes one account for
each thing a stack can grant, with a random lab-only password (or robot token):

  - for every (team, directory group, role) in `access.teams.*.groups`, a directory user in that
    group, named for what it may do (`team-a-developer`; `team-a-developer-<group>` when a team
    gives one role to two groups), so a reader of `lab status` knows whom to sign in as;
  - every name in `access.teams.*.members` and `access.admins` that is neither a local user nor a
    robot: a directory user (in no group), as it would be in the company directory (only when the
    stack has a directory, `access.ldap`);
  - every `access.users` entry: a local user (its bcrypt hash goes into the token service config);
  - every `access.robots` entry: a robot with a random token.

`describe(account, access)` says what each account may do, from the same settings the token
service decides on: team roles (and through what), admin, a robot's grant and the rules that name
it. `lab status --json` shows these entries; tests ask the token service for exactly that.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from auth.access import ROLE_ACTIONS
from auth.local import hash_secret, robot_token_hash
from infra.settings import TokenAccess
from lab.slapd import Directory, DirectoryUser

Kind = Literal["directory", "local", "robot"]
LAB_BCRYPT_COST = 10  # the token service's minimum: the lab pays what production pays per token
ACTION_ORDER = ("pull", "push", "delete", "*")


@dataclass(frozen=True)
class LabAccount:
    name: str
    kind: Kind
    password: str = field(repr=False)  # a robot's token for robots; lab only
    groups: tuple[str, ...] = ()  # directory groups (directory users only)


def _password() -> str:
    while True:  # never a leading '-': it would read as an option where a password is typed
        value = secrets.token_urlsafe(18)
        if not value.startswith("-"):
            return value


def _unique(name: str, taken: set[str], fallback: str) -> str:
    if name not in taken:
        return name
    if fallback not in taken:
        return fallback
    n = 2
    while f"{fallback}-{n}" in taken:
        n += 1
    return f"{fallback}-{n}"


def seed_accounts(access: TokenAccess, password: Callable[[], str] = _password) -> list[LabAccount]:
    """One lab account per group role, per named account, per local user and per robot (see the module doc)."""
    local, robots = list(access.users), list(access.robots)
    named = [*(m for team in access.teams.values() for m in team.members), *access.admins]
    directory_named = list(dict.fromkeys(n for n in named if n not in local and n not in robots))
    if access.ldap is None:  # no directory: such a name could never sign in, in the lab or on the fleet
        directory_named = []
    # Names the stack gives are taken first: a generated name never shadows one of them.
    taken = {*local, *robots, *directory_named}
    accounts: list[LabAccount] = []
    for team_name, team in access.teams.items():
        for group, role in team.groups.items():
            name = _unique(f"{team_name}-{role}", taken, f"{team_name}-{role}-{group}")
            taken.add(name)
            accounts.append(LabAccount(name, "directory", password(), (group,)))
    accounts += [LabAccount(n, "directory", password()) for n in directory_named]
    accounts += [LabAccount(n, "local", password()) for n in local]
    accounts += [LabAccount(n, "robot", password()) for n in robots]
    return accounts


def directory_seed(accounts: Sequence[LabAccount], access: TokenAccess) -> Directory:
    """What the lab slapd holds: the directory users, and every group the stack maps (even if empty)."""
    groups = tuple(dict.fromkeys(g for team in access.teams.values() for g in team.groups))
    users = tuple(
        DirectoryUser(a.name, f"lab {a.name}", a.password, a.groups) for a in accounts if a.kind == "directory"
    )
    return Directory(users=users, groups=groups)


def secret_hashes(accounts: Sequence[LabAccount], kind: Kind) -> dict[str, str]:
    """bcrypt hashes (cost 10) of the local users' passwords; SHA-256 of the robots' tokens (144 bits)."""
    if kind == "robot":
        return {a.name: robot_token_hash(a.password) for a in accounts if a.kind == kind}
    return {a.name: hash_secret(a.password, LAB_BCRYPT_COST) for a in accounts if a.kind == kind}


def _actions(actions: Sequence[str] | frozenset[str]) -> list[str]:
    return [a for a in ACTION_ORDER if a in actions]


def describe(account: LabAccount, access: TokenAccess) -> dict[str, Any]:
    """The account as `lab status --json` lists it: name, kind, password and what it may do."""
    name, groups = account.name, set(account.groups)
    teams: list[dict[str, Any]] = []
    robot: dict[str, Any] | None = None
    admin = False
    if account.kind == "robot":
        r = access.robots[name]
        robot = {
            "namespace": r.namespace,
            "actions": _actions(r.actions),
            "expires": r.expires_at.isoformat().replace("+00:00", "Z"),
        }
    else:
        admin = name in access.admins
        for team_name, team in access.teams.items():
            grants = [(team.members[name], "member")] if name in team.members else []
            grants += [(role, f"group {g}") for g, role in team.groups.items() if g in groups]
            for role, via in grants:
                teams.append(
                    {
                        "team": team_name,
                        "role": role,
                        "via": via,
                        "namespaces": list(team.namespaces),
                        "actions": _actions(ROLE_ACTIONS[role]),
                    }
                )
    rules = []
    for rule in access.rules:
        if rule.accounts is not None and not any(fnmatch.fnmatchcase(name, g) for g in rule.accounts):
            continue
        if rule.groups is not None and not (set(rule.groups) & groups):
            continue
        entry: dict[str, Any] = {"repositories": list(rule.repositories), "actions": _actions(rule.actions)}
        if rule.clients is not None:
            entry["clients"] = list(rule.clients)  # only from these addresses
        rules.append(entry)
    return {
        "name": name,
        "kind": account.kind,
        "password": account.password,
        "groups": list(account.groups),
        "admin": admin,
        "teams": teams,
        "robot": robot,
        "rules": rules,
        "summary": summary(admin, teams, robot, rules),
    }


def summary(admin: bool, teams: list[dict[str, Any]], robot: dict[str, Any] | None, rules: list[dict[str, Any]]) -> str:
    parts = ["admin (everything, catalog)"] if admin else []
    parts += [f"{t['team']} {t['role']} ({t['via']})" for t in teams]
    if robot is not None:
        parts.append(f"robot: {','.join(robot['actions'])} {robot['namespace']}/** until {robot['expires']}")
    parts += [f"rule: {','.join(r['actions'])} {' '.join(r['repositories'])}" for r in rules]
    return "; ".join(parts) or "nothing"


def htpasswd_entry(username: str, password: str) -> dict[str, Any]:
    """The one account of an htpasswd-mode lab: every signed-in user may do everything."""
    return {
        "name": username,
        "kind": "local",
        "password": password,
        "groups": [],
        "admin": True,
        "teams": [],
        "robot": None,
        "rules": [],
        "summary": "htpasswd: everything, everywhere (no roles in htpasswd mode)",
    }


def demo_account(entries: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The account the demo pushes with, and the namespace it pushes to: the least privilege that
    pushes (a developer, else a maintainer, else a team admin), else a global admin under `lab/`."""
    people = [e for e in entries if e["kind"] != "robot"]
    for role in ("developer", "maintainer", "admin"):
        for entry in people:
            for grant in entry["teams"]:
                if grant["role"] == role:
                    return entry, str(grant["namespaces"][0])
    for entry in people:
        if entry["admin"]:
            return entry, "lab"
    raise ValueError("no account in access may push (no developer, maintainer or admin): the lab demo needs one")


# --- a client of the token endpoint (tests, drills) ----------------------------------------------


def registry_token(
    realm: str,
    service: str,
    ca_file: str,
    account: tuple[str, str] | None,
    scopes: Sequence[str],
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """GET the realm as a registry client does; returns (HTTP status, JSON body)."""
    query = urllib.parse.urlencode([("service", service), *(("scope", s) for s in scopes)])
    request = urllib.request.Request(f"{realm}?{query}", headers=dict(headers or {}))
    if account is not None:
        basic = base64.b64encode(f"{account[0]}:{account[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as resp:
            return int(resp.status), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return int(err.code), json.loads(body or b"{}")
        except ValueError:
            return int(err.code), {"raw": body.decode(errors="replace")}
