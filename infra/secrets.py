"""The stack's secret inputs: the local users' bcrypt hashes and the directory service account's password.

They are Pulumi secrets in the stack config, never settings:

    pulumi config set --secret registry-fleet:accessUserHashes '{"registry-admin": "$2b$12$..."}'
    pulumi config set --secret registry-fleet:ldapBindPassword

:func:`check_access_secrets` validates them before any resource is registered (a user mistake is
named by key, never by value); the program wraps every value in `pulumi.Output.secret` where it is
used. Under the recording engine (`fleet plan`, the tests) :func:`placeholder_access_secrets` stands
in with fake values, so a plan never needs (or shows) a real secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auth.access import bcrypt_cost
from infra.settings import Problem, Settings, SettingsError, TokenAccess

USER_HASHES_KEY = "accessUserHashes"
LDAP_PASSWORD_KEY = "ldapBindPassword"
MIN_BCRYPT_COST = 10  # the token service's bcrypt_min_cost
SHOWN = "(secret)"  # what an error shows instead of a secret value


@dataclass(frozen=True)
class AccessSecrets:
    user_hashes: Mapping[str, str] = field(default_factory=dict, repr=False)
    ldap_bind_password: str | None = field(default=None, repr=False)


def check_access_secrets(settings: Settings, user_hashes: Any, ldap_password: Any) -> AccessSecrets:
    """The secrets for `settings`, or SettingsError naming every missing, extra or malformed one."""
    access = settings.access
    users = access.users if isinstance(access, TokenAccess) else ()
    ldap = access.ldap if isinstance(access, TokenAccess) else None
    problems: list[Problem] = []
    set_hashes = f'pulumi config set --secret registry-fleet:{USER_HASHES_KEY} \'{{"NAME": "$2b$12$..."}}\''
    if isinstance(user_hashes, str):
        try:
            user_hashes = json.loads(user_hashes)
        except json.JSONDecodeError:
            user_hashes = None
            problems.append(Problem(USER_HASHES_KEY, SHOWN, "is not a JSON object of user name -> bcrypt hash"))
    hashes: dict[str, str] = {}
    if user_hashes is None:
        user_hashes = {}
    if not isinstance(user_hashes, Mapping):
        problems.append(Problem(USER_HASHES_KEY, SHOWN, "must be an object of user name -> bcrypt hash"))
        user_hashes = {}
    for name in users:
        value = user_hashes.get(name)
        if value is None:
            problems.append(
                Problem(f"{USER_HASHES_KEY}.{name}", SHOWN, f"missing: access.users lists {name}; set: {set_hashes}")
            )
            continue
        cost = bcrypt_cost(value) if isinstance(value, str) else None
        if cost is None:
            problems.append(
                Problem(
                    f"{USER_HASHES_KEY}.{name}",
                    SHOWN,
                    "is not a bcrypt hash ($2b$<cost>$..., 60 characters); never put the password itself here",
                )
            )
        elif cost < MIN_BCRYPT_COST:
            problems.append(Problem(f"{USER_HASHES_KEY}.{name}", SHOWN, f"has bcrypt cost {cost}; at least 10"))
        else:
            hashes[name] = value
    for name in sorted(set(user_hashes) - set(users)):
        problems.append(
            Problem(f"{USER_HASHES_KEY}.{name}", SHOWN, "is not in access.users: remove it, or list the user")
        )
    password: str | None = None
    if ldap is not None:
        if not isinstance(ldap_password, str) or not ldap_password:
            problems.append(
                Problem(
                    LDAP_PASSWORD_KEY,
                    SHOWN if ldap_password else "(missing)",
                    "access.ldap needs the service account's password; set: "
                    f"pulumi config set --secret registry-fleet:{LDAP_PASSWORD_KEY}",
                )
            )
        else:
            password = ldap_password
    elif ldap_password:
        problems.append(Problem(LDAP_PASSWORD_KEY, SHOWN, "is set but access.ldap is not: remove it"))
    if problems:
        raise SettingsError(f"stack {settings.stack} secrets", problems)
    return AccessSecrets(user_hashes=hashes, ldap_bind_password=password)


def load_access_secrets_from_pulumi(settings: Settings) -> AccessSecrets:
    """The secrets from the engine's config (plain here, to validate; the program re-wraps them)."""
    import pulumi

    cfg = pulumi.Config()
    return check_access_secrets(settings, cfg.get(USER_HASHES_KEY), cfg.get(LDAP_PASSWORD_KEY))


def placeholder_bcrypt_hash(name: str) -> str:
    """A well-formed, fake bcrypt hash (it verifies no password): plans and tests only."""
    digest = hashlib.sha256(f"placeholder-{name}".encode()).hexdigest()
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    body = "".join(alphabet[int(digest[i % 64], 16) * 4 % 64] for i in range(53))
    return f"$2b$12${body}"


def placeholder_access_secrets(settings: Settings) -> AccessSecrets:
    """Fake secrets for the recording engine: the shape the stack needs, no real value."""
    access = settings.access
    if not isinstance(access, TokenAccess):
        return AccessSecrets()
    password = f"placeholder-ldap-password-{settings.stack}" if access.ldap else None
    return AccessSecrets(
        user_hashes={name: placeholder_bcrypt_hash(name) for name in access.users},
        ldap_bind_password=password,
    )
