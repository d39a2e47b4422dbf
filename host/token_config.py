"""Render the token service's configuration (auth/config.py) from a stack's access settings.

A pure renderer: plain values in, JSON text out, no Pulumi import. The fleet's access component
feeds it resolved (secret) values inside one `apply` and stores the text in Secrets Manager; the
lab feeds it local paths and lab-only hashes. The output is validated by the service's own loader
(`auth.config.parse_config`), so a config the service would refuse never leaves this function.

The text holds bcrypt hashes and, with a directory, the service account's password: it is a secret
everywhere (Secrets Manager on hosts, 0600 in the lab), never user-data, never a log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auth.config import ConfigError, parse_config
from auth.ldap import LdapSettings
from infra.settings import AccessSettings


def token_service_config(
    access: AccessSettings,
    *,
    issuer: str,
    service: str,
    signing_key_file: str,
    signing_cert_file: str,
    user_hashes: Mapping[str, str],
    robot_token_hashes: Mapping[str, str],
    ldap: LdapSettings | None,
    trusted_proxies: Sequence[str] = (),
) -> dict[str, Any]:
    """The service's config as a mapping (snake_case keys, as auth/config.py reads them). Raises
    ValueError naming the problem (never a secret value) if the service would refuse it."""
    if access.mode != "token":
        raise ValueError("token_service_config: access.mode is htpasswd; the token service runs in token mode only")
    missing = sorted(set(access.users) - set(user_hashes)) + sorted(set(access.robots) - set(robot_token_hashes))
    if missing:
        raise ValueError(f"token_service_config: no hash for {', '.join(missing)}")
    robots = {
        name: {
            "namespace": robot.namespace,
            "actions": list(robot.actions),
            "expires": robot.expires_at.isoformat().replace("+00:00", "Z"),
            "token_hash": robot_token_hashes[name],
        }
        for name, robot in access.robots.items()
    }
    data: dict[str, Any] = {
        "issuer": issuer,
        "service": service,
        "token_lifetime_seconds": access.token_lifetime_seconds,
        "signing_key": signing_key_file,
        "signing_cert": signing_cert_file,
        "users": {name: {"password_hash": user_hashes[name]} for name in access.users},
        "policy": {
            "teams": {name: team.model_dump(mode="json") for name, team in access.teams.items()},
            "robots": robots,
            "admins": list(access.admins),
            "rules": [rule.model_dump(mode="json", exclude_none=True, exclude_defaults=True) for rule in access.rules],
        },
        "trusted_proxies": list(trusted_proxies),
        "refresh_tokens": access.refresh_tokens.model_dump(mode="json"),
    }
    if ldap is not None:
        directory = ldap.model_dump(mode="json", exclude={"bind_password"})
        directory["bind_password"] = ldap.bind_password.get_secret_value()
        data["ldap"] = directory
    try:
        parse_config(data, Path("/"), "token service config")
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return data


def render_token_service_config(access: AccessSettings, **kwargs: Any) -> str:
    """The config file's text (JSON, which the service reads as YAML too)."""
    return json.dumps(token_service_config(access, **kwargs), indent=2, sort_keys=True) + "\n"
