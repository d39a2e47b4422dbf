"""Run the token service under gunicorn, with TLS: `python -m auth --config F --bind H:P --certfile F --keyfile F`.

One worker process per core (the host's usable CPUs; `--workers` overrides), each with threads
(gthread): bcrypt releases the GIL, but signing, TLS and Flask do not. With a lockout table in the
config the failure counts are shared by every worker on every host (auth/shared_lockout.py);
without one (the lab, tests) each worker counts on its own, so a guesser gets up to `threshold`
tries per worker: run `--workers 1` there when that matters. SIGHUP re-reads the configuration
file (an invalid file is refused and the running configuration kept) and starts new workers, so
the verified-credential cache (auth/cache.py) starts empty.
Metrics (auth/metrics.py): the workers count into one private directory (prometheus_client's multiprocess
mode), made fresh at each start and removed at exit; `/metrics` answers the host's own agent on loopback.
Request limits (auth/service.py): request line 8190 bytes (20 scopes fit), 32 header fields of at most 8190 bytes,
no body (the app answers 413).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from auth.config import ConfigError, ServiceConfig, load_config
from auth.identity import Authenticator
from auth.ldap import LdapDirectory
from auth.local import LocalAuthenticator
from auth.metrics import prepare_multiprocess, worker_exited
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


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity: what systemd's CPUAffinity or a cgroup leaves)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def gunicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    # The audit log records every decision; an access log adds nothing.
    options = tls_options(args, workers=args.workers or usable_cores(), keepalive=5, proc_name="registry-fleet-auth")
    return {**options, "child_exit": worker_exited}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = server_parser("python -m auth", "The registry's token service.")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default 0: one per usable core)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(AUDIT_LOGGER)
    if args.workers < 0 or args.threads < 1:
        print("error: --workers must be 0 (one per core) or more, --threads 1 or more", file=sys.stderr)
        return 2
    prepare_multiprocess()
    return run_service(
        args,
        checked_config,
        (ConfigError, SigningKeyError),
        lambda config: create_app(config, authenticators(config)),
        gunicorn_options,
    )
