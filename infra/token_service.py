"""The token service's spec, built once from a stack's settings and secret inputs, and validated once.

:func:`token_service_spec` is the only place that reads the token-mode settings for the token
service: the access component, the fleet (through the access component) and the lab take the
:class:`~host.token_config.TokenServiceSpec` it returns. It dry-runs the service's own config
loader (with stand-in robot token hashes, in the SHA-256 form the real ones take once the tokens exist), so a config the
service would refuse stops the program before anything is registered.
"""

from __future__ import annotations

from collections.abc import Sequence

from auth.access import EVERY_REPOSITORY
from auth.local import robot_token_hash
from components.errors import ComponentInputError
from host.contract import SYSTEM_CA_BUNDLE, TOKEN_LDAP_CA_FILE, TOKEN_SIGNING_CERT_FILE, TOKEN_SIGNING_KEY_FILE
from host.scan_config import MIRROR_ROBOT, SCANNER_ROBOT, TRIVY_DB_REPOSITORY
from host.token_config import TokenRobot, TokenServiceSpec, token_service_config
from infra.secrets import AccessSecrets
from infra.settings import Settings, TokenAccess


def lockout_table_name(name_prefix: str) -> str:
    """The stack's lockout table (a fixed physical name: the service's config names it)."""
    return f"{name_prefix}-token-lockout"


def scan_robots(settings: Settings) -> dict[str, TokenRobot]:
    """The scanner's robots (issue 14): the workers pull every repository and do nothing else; the database
    mirror pushes its one repository. Their tokens are generated and stored like every robot's
    (components/access.py)."""
    scanning = settings.scanning
    expires, rotation = scanning.robots_expire_at, scanning.robots_rotation
    return {
        SCANNER_ROBOT: TokenRobot(EVERY_REPOSITORY, ("pull",), expires, rotation),
        MIRROR_ROBOT: TokenRobot(TRIVY_DB_REPOSITORY, ("pull", "push"), expires, rotation, exact=True),
    }


def token_service_spec(
    settings: Settings,
    secrets: AccessSecrets,
    trusted_proxies: Sequence[str],
    lockout_table: str | None = None,
) -> TokenServiceSpec | None:
    """The token service's input; None for a stack in htpasswd mode (it runs no token service).
    `lockout_table` (in the stack's region): where the fleet shares the lockout's counts; None: the lab.

    Raises ComponentInputError, naming the problem and never a secret value, if the service would
    refuse its config.
    """
    access = settings.access
    if not isinstance(access, TokenAccess):
        return None
    if not trusted_proxies:
        raise ComponentInputError("token service: trusted_proxies is empty (the load balancer's subnet ranges)")
    missing = [name for name in access.users if name not in secrets.user_hashes]
    if missing:
        raise ComponentInputError(f"token service: no hash for {', '.join(missing)} (access.users)")
    directory = access.ldap
    ldap = None
    if directory is not None:
        if not secrets.ldap_bind_password:
            raise ComponentInputError("token service: access.ldap is set but the directory's bind password is not")
        ca_file = TOKEN_LDAP_CA_FILE if directory.ca_certificate else SYSTEM_CA_BUNDLE
        ldap = directory.ldap_settings(ca_file, secrets.ldap_bind_password)
    spec = TokenServiceSpec(
        issuer=settings.token_issuer,
        service=settings.registry_host,
        token_lifetime_seconds=access.token_lifetime_seconds,
        teams=dict(access.teams),
        admins=access.admins,
        rules=access.rules,
        robots={
            **{
                name: TokenRobot(robot.namespace, robot.actions, robot.expires_at, robot.rotation)
                for name, robot in access.robots.items()
            },
            **scan_robots(settings),
        },
        refresh_tokens=access.refresh_tokens,
        trusted_proxies=tuple(trusted_proxies),
        signing_generations=access.token_signing.generations,
        signing_generation=access.token_signing.current,
        pip_index_url=access.pip_index_url,
        user_hashes={name: secrets.user_hashes[name] for name in access.users},
        ldap=ldap,
        ldap_ca_pem=directory.ca_certificate if directory else None,
        ldap_cidrs=directory.cidrs if directory else (),
        lockout_table=lockout_table,
        lockout_region=settings.region if lockout_table else None,
    )
    try:
        token_service_config(
            spec,
            signing_key_file=TOKEN_SIGNING_KEY_FILE,
            signing_cert_file=TOKEN_SIGNING_CERT_FILE,
            robot_token_hashes={name: robot_token_hash(f"placeholder-robot-token-{name}") for name in spec.robots},
        )
    except ValueError as err:
        raise ComponentInputError(f"token service: the service would refuse its config: {err}") from None
    return spec
