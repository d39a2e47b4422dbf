"""Run the token service under gunicorn, with TLS: `python -m auth --config F --bind H:P --certfile F --keyfile F`.

One worker process with threads (gthread): the failure counts of the lockout live in that process
(several workers would each count on their own; a restart or a reload forgets them). SIGHUP
re-reads the configuration file; an invalid file is refused and the running configuration kept.
Request limits (auth/service.py): request line 8190 bytes (20 scopes fit), 32 header fields of at most 8190 bytes,
no body (the app answers 413).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from auth.config import ConfigError, ServiceConfig, load_config
from auth.identity import Authenticator
from auth.ldap import LdapDirectory
from auth.local import LocalAuthenticator
from auth.server import AUDIT_LOGGER, create_app
from auth.service import configure_logging, run_service, server_parser, tls_options
from auth.tokens import SigningKeyError, TokenSigner


def checked_config(path: Path) -> ServiceConfig:
    """The configuration, with its signing key and certificate loaded once to prove they work."""
    config = load_config(path)
    TokenSigner.load(config.signing_key, config.signing_cert, config.issuer, config.token_lifetime_seconds, time.time())
    return config


def authenticators(config: ServiceConfig) -> list[Authenticator]:
    """Local users and robots first (no network), then the directory when one is configured."""
    backends: list[Authenticator] = [LocalAuthenticator(config.password_hashes, config.policy.robots)]
    if config.ldap is not None:
        backends.append(LdapDirectory(config.ldap))
    return backends


def gunicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    # The audit log records every decision; an access log adds nothing.
    return tls_options(args, workers=1, keepalive=5, proc_name="registry-fleet-auth")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = server_parser("python -m auth", "The registry's token service.")
    parser.add_argument("--threads", type=int, default=4, help="threads of the one worker (default 4)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(AUDIT_LOGGER)
    return run_service(
        args,
        checked_config,
        (ConfigError, SigningKeyError),
        lambda config: create_app(config, authenticators(config)),
        gunicorn_options,
    )
