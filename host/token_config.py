"""The token service's spec, and its configuration (auth/config.py) rendered from it.

:class:`TokenServiceSpec` is the token service's whole input: plain values, built and validated once
from a stack's settings and secret inputs (`infra/token_service.py`), then handed to the access
component, the fleet (through the access component) and the lab.

The renderer is pure: plain values in, JSON text out, no Pulumi import. The fleet's access component
feeds it the robots' resolved (secret) hashes inside one `apply` and stores the text in Secrets
Manager; the lab feeds it local paths and lab-only hashes. The output is validated by the service's
own loader (`auth.config.parse_config`), so a config the service would refuse never leaves this function.

The text holds password hashes (bcrypt), robot token hashes (SHA-256) and, with a directory, the
service account's password: it is a secret
everywhere (Secrets Manager on hosts, 0600 in the lab), never user-data, never a log.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auth.access import AccessRule, Action, Team
from auth.config import ConfigError, parse_config
from auth.ldap import LdapSettings
from auth.refresh import RefreshTokenSettings


@dataclass(frozen=True)
class TokenRobot:
    """A CI robot: one namespace, fixed actions, until `expires_at`; a new `rotation` issues a new token."""

    namespace: str
    actions: tuple[Action, ...]
    expires_at: datetime.datetime
    rotation: int
    exact: bool = False  # the one repository `namespace` names, not the namespace under it (auth/access.py)


@dataclass(frozen=True)
class TokenServiceSpec:
    """The token service's whole input, built once from settings + secrets (infra/token_service.py)."""

    issuer: str  # the tokens' `iss`: the registry's auth.token.issuer
    service: str  # the tokens' `aud`: the registry's auth.token.service (its host name)
    token_lifetime_seconds: int
    teams: Mapping[str, Team]
    admins: tuple[str, ...]
    rules: tuple[AccessRule, ...]
    robots: Mapping[str, TokenRobot]
    refresh_tokens: RefreshTokenSettings
    # The load balancer's subnets: its nodes add X-Forwarded-For, which the service then believes.
    trusted_proxies: tuple[str, ...]
    # Live signing key generations, in order, and the one the service signs with.
    signing_generations: tuple[int, ...]
    signing_generation: int
    # Where hosts install the service's wheels from.
    pip_index_url: str
    # Local users' bcrypt hashes, by name (a secret input).
    user_hashes: Mapping[str, str] = field(repr=False)
    # The directory as the service reads it (the host's CA path, the bind password); None: no directory.
    ldap: LdapSettings | None
    ldap_ca_pem: str | None  # the directory's CA, written on hosts; None: the system bundle
    ldap_cidrs: tuple[str, ...]  # the directory servers: the only ranges hosts may reach on its port
    # The DynamoDB table the fleet's lockout shares (auth/shared_lockout.py) and its region; None: the
    # lab, whose one token-service process counts alone.
    lockout_table: str | None = None
    lockout_region: str | None = None


def token_service_config(
    spec: TokenServiceSpec,
    *,
    signing_key_file: str,
    signing_cert_file: str,
    robot_token_hashes: Mapping[str, str],
) -> dict[str, Any]:
    """The service's config as a mapping (snake_case keys, as auth/config.py reads them). Raises
    ValueError naming the problem (never a secret value) if the service would refuse it."""
    missing = sorted(set(spec.robots) - set(robot_token_hashes))
    if missing:
        raise ValueError(f"token_service_config: no hash for {', '.join(missing)}")
    robots = {
        name: {
            "namespace": robot.namespace,
            "actions": list(robot.actions),
            "expires": robot.expires_at.isoformat().replace("+00:00", "Z"),
            "token_hash": robot_token_hashes[name],
            **({"exact": True} if robot.exact else {}),
        }
        for name, robot in spec.robots.items()
    }
    data: dict[str, Any] = {
        "issuer": spec.issuer,
        "service": spec.service,
        "token_lifetime_seconds": spec.token_lifetime_seconds,
        "signing_key": signing_key_file,
        "signing_cert": signing_cert_file,
        "users": {name: {"password_hash": password_hash} for name, password_hash in spec.user_hashes.items()},
        "policy": {
            "teams": {name: team.model_dump(mode="json") for name, team in spec.teams.items()},
            "robots": robots,
            "admins": list(spec.admins),
            "rules": [rule.model_dump(mode="json", exclude_none=True, exclude_defaults=True) for rule in spec.rules],
        },
        "trusted_proxies": list(spec.trusted_proxies),
        "refresh_tokens": spec.refresh_tokens.model_dump(mode="json"),
    }
    if spec.lockout_table is not None:
        data["lockout"] = {"table": spec.lockout_table, "region": spec.lockout_region}
    if spec.ldap is not None:
        directory = spec.ldap.model_dump(mode="json", exclude={"bind_password"})
        directory["bind_password"] = spec.ldap.bind_password.get_secret_value()
        data["ldap"] = directory
    try:
        parse_config(data, Path("/"), "token service config")
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return data


def render_token_service_config(spec: TokenServiceSpec, **kwargs: Any) -> str:
    """The config file's text (JSON, which the service reads as YAML too)."""
    return json.dumps(token_service_config(spec, **kwargs), indent=2, sort_keys=True) + "\n"
