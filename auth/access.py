"""Who may do what to which repository: the RBAC model and its one decision function.

The model (pydantic v2, frozen, unknown keys refused):

    teams:                        # each team owns namespaces; a namespace `team-a` covers team-a/**
      team-a:
        namespaces: [team-a]
        members: {alice: reader, bob: developer}     # accounts (local users, directory users)
        groups: {cn=team-a-devs: developer}          # directory groups (Identity.groups)
    robots:                       # CI accounts: one namespace, fixed actions, an expiry
      robot-ci-a: {namespace: team-a/ci, actions: [pull, push], expires: 2030-01-01T00:00:00Z,
                   token_hash: sha256:<hex>}   # or a bcrypt hash (before rotation)
      scanner: {namespace: "*", actions: [pull], ...}               # every repository, pull only
      mirror: {namespace: mirror/trivy-db, exact: true, actions: [pull, push], ...}  # that repository only
    admins: [root]                # everything, including registry:catalog:*
    rules:                        # extra grants, checked in order, all of them (they only add)
      - {accounts: ["*"], repositories: ["base/**"], actions: [pull]}
      - {repositories: ["users/${account}/*"], actions: [pull, push, delete]}
      - {anonymous: true, repositories: ["public/**"], actions: [pull]}

Roles: reader = pull; developer = pull, push; maintainer = pull, push, delete; admin = every action
(`*`) on the team's namespaces. Only the global `admins` get `registry:catalog:*` (the catalog lists
every team's repositories).

Rules: every selector that is given must match (accounts AND groups AND clients AND repositories);
inside one selector any entry may match. An omitted selector matches anything; an empty list is
refused (it would match nothing). `accounts` are globs on the account name (fnmatch), `groups` exact
group names, `clients` CIDR networks. Repository globs are path-aware: `*` and `?` stay inside one
path component, `**` crosses `/`. `${account}` in a repository glob is the account name, and only
when that name is itself a valid path component (so an account called `*` or `a/b` matches nothing).
`anonymous: true` makes a rule apply to requests without credentials too; such a rule may only grant
`pull`, and no other path grants anything to anonymous requests.

Robots (Identity.kind == "robot") get their robot grant and matching rules, never team roles or
admin rights; users and directory accounts never get a robot's grant, even under the same name.
Anything not granted above is denied.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from auth.identity import Identity
from auth.scopes import CATALOG, REGISTRY, REPOSITORY, Scope, valid_component, valid_repository_name

Role = Literal["reader", "developer", "maintainer", "admin"]
Action = Literal["pull", "push", "delete"]
RuleAction = Literal["pull", "push", "delete", "*"]

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "reader": frozenset({"pull"}),
    "developer": frozenset({"pull", "push"}),
    "maintainer": frozenset({"pull", "push", "delete"}),
    "admin": frozenset({"pull", "push", "delete", "*"}),
}
ALL_ACTIONS = ROLE_ACTIONS["admin"]
ANONYMOUS_ACTIONS = frozenset({"pull"})
ACCOUNT_VAR = "${account}"
_VAR_RE = re.compile(r"\$\{[^}]*\}")
_BCRYPT_RE = re.compile(r"\$2[aby]\$(?P<cost>\d\d)\$[./A-Za-z0-9]{53}")
# A robot token's stored form: SHA-256 of a generated token of at least 128 bits (auth/local.py).
SHA256_PREFIX = "sha256:"
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def bcrypt_cost(value: str) -> int | None:
    """The cost of a bcrypt hash, or None if `value` is not one."""
    m = _BCRYPT_RE.fullmatch(value)
    return int(m.group("cost")) if m else None


def is_sha256_token_hash(value: str) -> bool:
    """True for a robot token hash in the fast form, `sha256:<64 lower-case hex digits>`."""
    return _SHA256_RE.fullmatch(value) is not None


def _check_namespace(value: str) -> str:
    if not valid_repository_name(value):
        raise ValueError(
            f"{value!r} is not a repository path (lower-case components such as 'team-a' or 'team-a/ci'; "
            "no globs, no leading or trailing '/')"
        )
    return value


Namespace = Annotated[str, Field(min_length=1)]


class Team(_Frozen):
    namespaces: tuple[Namespace, ...] = Field(min_length=1)
    members: dict[str, Role] = Field(default_factory=dict)
    groups: dict[str, Role] = Field(default_factory=dict)

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ns in value:
            _check_namespace(ns)
        return value


# A robot whose namespace is EVERY_REPOSITORY may pull every repository and do nothing else (the scanner's
# read-only robot); one with `exact: true` works in the one repository its namespace names (the Trivy database
# mirror's robot, `mirror/trivy-db`), not under it.
EVERY_REPOSITORY = "*"
# Repositories under this namespace belong to the platform (the Trivy database mirror): no team may own it, and
# the scanner's events forwarder ignores pushes there, so a team's image there would go unscanned.
PLATFORM_NAMESPACE = "mirror"


class Robot(_Frozen):
    namespace: Namespace
    actions: tuple[Action, ...] = Field(min_length=1)
    expires: AwareDatetime
    token_hash: str
    exact: bool = False

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return value if value == EVERY_REPOSITORY else _check_namespace(value)

    @model_validator(mode="after")
    def _every_repository_pulls_only(self) -> Robot:
        if self.namespace == EVERY_REPOSITORY and (set(self.actions) != {"pull"} or self.exact):
            raise ValueError(f"namespace {EVERY_REPOSITORY!r} (every repository) allows actions [pull] only, not exact")
        return self

    def covers(self, repository: str) -> bool:
        """Whether the robot's grant applies to `repository`."""
        if self.namespace == EVERY_REPOSITORY:
            return True
        return repository == self.namespace if self.exact else covers(self.namespace, repository)

    @field_validator("token_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        if bcrypt_cost(value) is None and not is_sha256_token_hash(value):
            raise ValueError(
                "is neither sha256:<64 hex digits> nor a bcrypt hash ($2b$<cost>$..., 60 characters); "
                "never put the token itself here"
            )
        return value


def _glob_probe(glob: str) -> str:
    """The name a glob matches when every wildcard matches one letter: if that name is not a valid
    repository name, no name is (a letter never breaks the grammar, and the literals cannot change)."""
    return glob.replace(ACCOUNT_VAR, "a").replace("**", "a").replace("*", "a").replace("?", "a")


@functools.lru_cache(maxsize=4096)
def _glob_regex(glob: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


def repository_glob_matches(glob: str, name: str, account: str | None) -> bool:
    if ACCOUNT_VAR in glob:
        if account is None or not valid_component(account):
            return False
        glob = glob.replace(ACCOUNT_VAR, account)  # a valid component holds no glob characters
    return _glob_regex(glob).fullmatch(name) is not None


class AccessRule(_Frozen):
    accounts: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    anonymous: bool = False
    repositories: tuple[str, ...]
    clients: tuple[str, ...] | None = None
    actions: tuple[RuleAction, ...]

    @field_validator("accounts", "groups", "clients", "repositories", "actions")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(value) == 0:
            raise ValueError("an empty list matches nothing: list at least one entry, or omit the key to match any")
        if value is not None and any(v == "" for v in value):
            raise ValueError("an empty string matches nothing")
        return value

    @field_validator("clients")
    @classmethod
    def _networks(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for cidr in value or ():
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as err:
                raise ValueError(f"{cidr!r} is not a network in CIDR form (e.g. 10.0.0.0/8): {err}") from err
        return value

    @field_validator("repositories")
    @classmethod
    def _globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for glob in value:
            unknown = [v for v in _VAR_RE.findall(glob) if v != ACCOUNT_VAR]
            if unknown:
                raise ValueError(f"{glob!r}: unknown variable {unknown[0]} (only {ACCOUNT_VAR})")
            if not valid_repository_name(_glob_probe(glob)):
                raise ValueError(
                    f"{glob!r} can never match a repository name (lower-case path components of [a-z0-9] joined "
                    "by '.', '_', '__' or '-'; '*' and '?' within a component, '**' across components)"
                )
        return value

    @model_validator(mode="after")
    def _anonymous(self) -> AccessRule:
        if self.anonymous:
            if self.accounts is not None or self.groups is not None:
                raise ValueError(
                    "an anonymous rule applies to requests without an account: "
                    "drop accounts/groups, or make it two rules"
                )
            if set(self.actions) - ANONYMOUS_ACTIONS:
                raise ValueError("an anonymous rule may only grant pull (anonymous push or delete is never allowed)")
        return self

    @functools.cached_property
    def networks(self) -> tuple[IpNetwork, ...] | None:
        if self.clients is None:
            return None
        return tuple(ipaddress.ip_network(c) for c in self.clients)

    def applies(self, identity: Identity | None, repository: str, client: IpAddress | None) -> bool:
        if identity is None:
            if not self.anonymous:
                return False
        else:
            if self.accounts is not None and not any(fnmatch.fnmatchcase(identity.name, g) for g in self.accounts):
                return False
            if self.groups is not None and not (set(self.groups) & identity.groups):
                return False
        if self.networks is not None and (client is None or not any(client in n for n in self.networks)):
            return False
        account = identity.name if identity is not None else None
        return any(repository_glob_matches(g, repository, account) for g in self.repositories)


def covers(namespace: str, repository: str) -> bool:
    """`team-a` covers `team-a/app` and `team-a/x/y`, not `team-abc/app` and not `team-a` itself."""
    return repository.startswith(namespace + "/")


def _overlap(a: str, b: str) -> bool:
    return a == b or covers(a, b) or covers(b, a)


def ownership_problems(teams: dict[str, Team], robot_namespaces: dict[str, str]) -> list[tuple[str, str]]:
    """(key, message) for every namespace two teams share and every robot namespace no team owns.

    Shared by the service's config and the stack settings (infra/settings/model.py), which hold the same model.
    """
    problems: list[tuple[str, str]] = []
    owned: list[tuple[str, str]] = []  # (namespace, team)
    for team_name, team in teams.items():
        for i, ns in enumerate(team.namespaces):
            for other_ns, other_team in owned:
                if other_team != team_name and _overlap(ns, other_ns):
                    problems.append(
                        (
                            f"teams.{team_name}.namespaces[{i}]",
                            f"{ns!r} overlaps {other_ns!r} of team {other_team!r}; "
                            "a repository must belong to one team",
                        )
                    )
            owned.append((ns, team_name))
    for ns, team_name in owned:
        if _overlap(ns, PLATFORM_NAMESPACE):
            problems.append(
                (
                    f"teams.{team_name}.namespaces[{teams[team_name].namespaces.index(ns)}]",
                    f"{ns!r} overlaps the platform namespace {PLATFORM_NAMESPACE!r} (the scanner's database mirror, "
                    "never scanned on push): no team may own it",
                )
            )
    for robot_name, namespace in robot_namespaces.items():
        if namespace == EVERY_REPOSITORY or covers(PLATFORM_NAMESPACE, namespace):
            continue  # every repository (pull only), or a platform repository: no team owns them
        if not any(namespace == ns or covers(ns, namespace) for ns, _ in owned):
            problems.append(
                (
                    f"robots.{robot_name}.namespace",
                    f"{namespace!r} is not owned by any team (it must be a team namespace or lie under one)",
                )
            )
    return problems


class AccessControl(_Frozen):
    teams: dict[str, Team] = Field(default_factory=dict)
    robots: dict[str, Robot] = Field(default_factory=dict)
    admins: tuple[str, ...] = ()
    rules: tuple[AccessRule, ...] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> AccessControl:
        problems = ownership_problems(self.teams, {name: r.namespace for name, r in self.robots.items()})
        if problems:
            key, message = problems[0]
            raise ValueError(f"{key}: {message}")
        return self

    # --- the decision ---------------------------------------------------------------------------

    def permitted(self, identity: Identity | None, scope: Scope, client_ip: str) -> frozenset[str]:
        """Every action `identity` may perform on the scope's resource (whatever was asked)."""
        try:
            client: IpAddress | None = ipaddress.ip_address(client_ip)
        except ValueError:
            client = None
        if scope.type == REGISTRY:
            if scope.name == CATALOG and self._is_admin(identity):
                return frozenset({"*"})
            return frozenset()
        if scope.type != REPOSITORY:
            return frozenset()
        repository = scope.name
        actions: set[str] = set()
        if identity is not None and identity.kind == "robot":
            robot = self.robots.get(identity.name)
            if robot is not None and robot.covers(repository):
                actions |= set(robot.actions)
        elif identity is not None:
            if identity.name in self.admins:
                actions |= ALL_ACTIONS
            for team in self.teams.values():
                if any(covers(ns, repository) for ns in team.namespaces):
                    for role in self._roles(team, identity):
                        actions |= ROLE_ACTIONS[role]
        for rule in self.rules:
            if rule.applies(identity, repository, client):
                actions |= set(rule.actions)
        if identity is None:
            actions &= ANONYMOUS_ACTIONS
        return frozenset(actions)

    def allowed(self, identity: Identity | None, scope: Scope, client_ip: str) -> set[str]:
        """What to grant for one requested scope: the asked actions that are permitted.

        `*` is an action of its own: asked, it is granted only to whom `*` is permitted (admins).
        """
        permitted = self.permitted(identity, scope, client_ip)
        return {a for a in scope.actions if a in permitted}

    def _is_admin(self, identity: Identity | None) -> bool:
        return identity is not None and identity.kind != "robot" and identity.name in self.admins

    @staticmethod
    def _roles(team: Team, identity: Identity) -> Iterable[str]:
        role = team.members.get(identity.name)
        if role is not None:
            yield role
        for group in identity.groups:
            role = team.groups.get(group)
            if role is not None:
                yield role
