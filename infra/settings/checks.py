"""Cross-field checks: rules that relate several settings keys.

They run once every key has the right shape (infra/settings/model.py), and return every problem
at once; the loader (infra/settings/loading.py) raises them as one SettingsError.
"""

from __future__ import annotations

import re
from typing import Any

from auth.access import covers, ownership_problems
from auth.config import check_account_name
from host.scan_config import SCAN_ROBOTS
from infra.settings.errors import MISSING, Problem
from infra.settings.model import (
    MAX_PROTECTED_NAMESPACES,
    HtpasswdAccess,
    Settings,
    TokenAccess,
    role_account,
)
from scanner.report import SEVERITIES


def cross_field_problems(s: Settings) -> list[Problem]:
    """Rules that relate several keys; run once every key has the right shape."""
    out = []
    f = s.fleet
    if f.max_size < f.min_size:
        out.append(Problem("fleet.maxSize", f.max_size, f"is below fleet.minSize ({f.min_size})"))
    if not f.min_size <= f.desired_capacity <= f.max_size:
        out.append(
            Problem(
                "fleet.desiredCapacity",
                f.desired_capacity,
                f"must lie within fleet.minSize..fleet.maxSize ({f.min_size}..{f.max_size})",
            )
        )
    if s.environment == "prod" and not s.alerts.emails:
        out.append(Problem("alerts.emails", [], "is empty: a prod stack's alarms must reach someone"))
    if s.environment == "prod" and s.network.az_count < 3:
        out.append(Problem("network.azCount", s.network.az_count, "is below 3: prod runs in three zones"))
    if f.min_size < min(s.network.az_count, 3):
        out.append(
            Problem(
                "fleet.minSize",
                f.min_size,
                f"is below the zone count ({min(s.network.az_count, 3)}): every zone in use needs a host",
            )
        )
    if s.replica_region == s.region:
        out.append(Problem("replicaRegion", s.replica_region, "equals region: the replica must live in another region"))
    zone = s.cloudflare.zone
    if s.domain != zone and not s.domain.endswith("." + zone):
        out.append(Problem("domain", s.domain, f"is not inside the Cloudflare zone cloudflare.zone ({zone})"))
    if s.backup.continuous and s.backup.continuous_retention_days > s.backup.retention_days:
        out.append(
            Problem(
                "backup.continuousRetentionDays",
                s.backup.continuous_retention_days,
                f"exceeds backup.retentionDays ({s.backup.retention_days})",
            )
        )
    if s.environment == "prod" and s.network.nat_gateways != "per-az":
        out.append(
            Problem(
                "network.natGateways",
                s.network.nat_gateways,
                "prod needs per-az: a single NAT gateway is a zone-wide single point of failure",
            )
        )
    if s.cdn.enabled and not s.cdn.alias:
        out.append(
            Problem(
                "cdn.alias",
                s.cdn.alias,
                "must be true while cdn.enabled is: on its default *.cloudfront.net certificate CloudFront accepts "
                "TLS 1.0 whatever the minimum protocol says (or set cdn.enabled: false)",
            )
        )
    out += _signing_problems(s)
    out += _retention_problems(s)
    match s.access:
        case HtpasswdAccess() if s.environment == "prod":
            out.append(Problem("access.mode", "htpasswd", "prod needs token: htpasswd lets every user push everywhere"))
        case TokenAccess() as access:
            out += _token_access_problems(access)
    return out


def _signing_problems(s: Settings) -> list[Problem]:
    """Signer roles live in the stack's account: a role elsewhere would need that account's own IAM policy
    too (the key policy alone does not let another account sign), which this stack neither makes nor sees."""
    out: list[Problem] = []
    signing = s.signing
    if signing.break_glass_role is not None and signing.break_glass_role in signing.signer_roles:
        out.append(
            Problem(
                "signing.breakGlassRole",
                signing.break_glass_role,
                "is also in signing.signerRoles: the break-glass role is a separate, rarely used role",
            )
        )
    if s.account_id is not None:
        keys = [(f"signing.signerRoles[{i}]", arn) for i, arn in enumerate(signing.signer_roles)]
        if signing.break_glass_role is not None:
            keys.append(("signing.breakGlassRole", signing.break_glass_role))
        for key, arn in keys:
            if role_account(arn) != s.account_id:
                out.append(
                    Problem(
                        key,
                        arn,
                        f"is a role of account {role_account(arn)}, not of accountId ({s.account_id}): signer roles "
                        "live in the stack's own account",
                    )
                )
    return out


def _retention_problems(s: Settings) -> list[Problem]:
    """Each storage.retention namespace is a team's or under one, which only token mode has (and the hosts
    run retention with the token service's code and signing key)."""
    if not s.storage.retention:
        return []
    if not isinstance(s.access, TokenAccess):
        return [
            Problem(
                "storage.retention",
                sorted(s.storage.retention),
                "needs access.mode token: retention is per team namespace, and htpasswd mode has no teams",
            )
        ]
    owned = [ns for team in s.access.teams.values() for ns in team.namespaces]
    return [
        Problem(f"storage.retention.{ns}", ns, "is not owned by any team (name a team namespace or one under it)")
        for ns in s.storage.retention
        if not any(ns == team_ns or covers(team_ns, ns) for team_ns in owned)
    ]


def _pull_policy_problems(a: TokenAccess) -> list[Problem]:
    """Each pullPolicies namespace is a team's or under one; a policy under a protected namespace cannot
    lift its protection (every covering policy applies: a weaker value under a stronger one has no effect);
    an allow-list needs a threshold and names each id once; at most MAX_PROTECTED_NAMESPACES are protected
    (a listener rule each)."""
    out: list[Problem] = []
    owned = [ns for team in a.teams.values() for ns in team.namespaces]
    protected = [ns for ns, policy in a.pull_policies.items() if policy.gated]
    for ns, policy in a.pull_policies.items():
        key = f"access.pullPolicies.{ns}"
        if not any(ns == team_ns or covers(team_ns, ns) for team_ns in owned):
            out.append(
                Problem(key, ns, "is not owned by any team (a pull policy names a team namespace or one under it)")
            )
        parents = [(p, a.pull_policies[p]) for p in a.pull_policies if p != ns and covers(p, ns)]
        if not policy.require_signed and "require_signed" in policy.model_fields_set:
            above = [p for p, pp in parents if pp.require_signed]
            if above:
                out.append(
                    Problem(
                        f"{key}.requireSigned",
                        False,
                        f"has no effect: {ns} lies under the protected namespace {above[0]}, which covers it",
                    )
                )
        if policy.unscanned == "allow":
            denying = [p for p, pp in parents if pp.effective_unscanned == "deny"]
            if denying:
                out.append(
                    Problem(
                        f"{key}.unscanned",
                        "allow",
                        f"has no effect: {ns} lies under {denying[0]}, which denies unscanned images and covers it",
                    )
                )
        if policy.block_severity is not None:
            stricter = [
                (p, pp.block_severity)
                for p, pp in parents
                if pp.block_severity is not None
                and SEVERITIES.index(pp.block_severity) < SEVERITIES.index(policy.block_severity)
            ]
            if stricter:
                out.append(
                    Problem(
                        f"{key}.blockSeverity",
                        policy.block_severity,
                        f"has no effect: {ns} lies under {stricter[0][0]}, which blocks from {stricter[0][1]} "
                        "and covers it",
                    )
                )
        if policy.allow_vulnerabilities and policy.block_severity is None:
            out.append(
                Problem(
                    f"{key}.allowVulnerabilities",
                    [v.id for v in policy.allow_vulnerabilities],
                    "has no effect without blockSeverity: set the threshold the entries are exceptions to",
                )
            )
        seen: set[str] = set()
        for i, entry in enumerate(policy.allow_vulnerabilities):
            if entry.id in seen:
                out.append(Problem(f"{key}.allowVulnerabilities[{i}].id", entry.id, "is listed twice"))
            seen.add(entry.id)
    if len(protected) > MAX_PROTECTED_NAMESPACES:
        out.append(
            Problem(
                "access.pullPolicies",
                sorted(protected),
                f"protects {len(protected)} namespaces; at most {MAX_PROTECTED_NAMESPACES} (the load balancer "
                "routes each with a listener rule): protect a parent namespace instead",
            )
        )
    return out


def _token_access_problems(a: TokenAccess) -> list[Problem]:
    out: list[Problem] = []
    if not a.teams and not a.admins:
        out.append(Problem("access.teams", {}, "is empty: in token mode give at least one team a namespace"))
    signing = a.token_signing
    if signing.current not in signing.generations:
        out.append(
            Problem(
                "access.tokenSigning.current",
                signing.current,
                f"is not in access.tokenSigning.generations ({list(signing.generations)}): the service signs "
                "with a live generation only",
            )
        )
    out += _pull_policy_problems(a)
    for key, message in ownership_problems(a.teams, {n: r.namespace for n, r in a.robots.items()}):
        out.append(Problem(f"access.{key}", _lookup_access(a, key), message))
    accounts = [(f"access.users[{i}]", u) for i, u in enumerate(a.users)]
    accounts += [(f"access.admins[{i}]", n) for i, n in enumerate(a.admins)]
    accounts += [(f"access.robots.{n}", n) for n in a.robots]
    for team_name, team in a.teams.items():
        accounts += [(f"access.teams.{team_name}.members.{m}", m) for m in team.members]
    for key, name in accounts:
        problem = check_account_name(name)
        if problem:
            out.append(Problem(key, name, problem))
    for key, name in accounts:
        if name in SCAN_ROBOTS:
            out.append(Problem(key, name, "is the name of one of the scanner's robots (scanning): choose another"))
    for name in sorted(set(a.users) & set(a.robots)):
        out.append(Problem(f"access.robots.{name}", name, "is also in access.users: an account is a user or a robot"))
    if len(set(a.users)) != len(a.users):
        out.append(Problem("access.users", list(a.users), "lists a user twice"))
    robot_names = set(a.robots)
    for team_name, team in a.teams.items():
        if team.groups and a.ldap is None:
            out.append(
                Problem(
                    f"access.teams.{team_name}.groups",
                    dict(team.groups),
                    "maps directory groups, but access.ldap is not set: no account would ever be in them",
                )
            )
        for member in sorted(set(team.members) & robot_names):
            out.append(
                Problem(
                    f"access.teams.{team_name}.members.{member}",
                    member,
                    "is a robot: robots get their own grant (access.robots), never team roles",
                )
            )
    for i, admin in enumerate(a.admins):
        if admin in robot_names:
            out.append(Problem(f"access.admins[{i}]", admin, "is a robot: a CI account is never an admin"))
    return out


def _lookup_access(a: TokenAccess, key: str) -> Any:
    """The value at an ownership problem's key (teams.X.namespaces[i] or robots.X.namespace)."""
    m = re.fullmatch(r"teams\.(.+)\.namespaces\[(\d+)\]", key)
    if m:
        return a.teams[m.group(1)].namespaces[int(m.group(2))]
    m = re.fullmatch(r"robots\.(.+)\.namespace", key)
    return a.robots[m.group(1)].namespace if m else MISSING
