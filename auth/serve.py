"""Run the token service under gunicorn, with TLS: `python -m auth --config F --bind H:P --certfile F --keyfile F`.

One worker process per core (the host's usable CPUs; `--workers` overrides), each with threads
(gthread): bcrypt releases the GIL, but signing, TLS and Flask do not. With a lockout table in the
config the failure counts are shared by every worker on every host (auth/shared_lockout.py);
without one (the lab, tests) each worker counts on its own, so a guesser gets up to `threshold`
tries per worker: run `--workers 1` there when that matters. SIGHUP re-reads the configuration
file (an invalid file is refused and the running configuration kept) and starts new workers, so
the verified-credential cache (auth/cache.py) starts empty.
Request limits: request line 8190 bytes (20 scopes fit), 32 header fields of at most 8190 bytes,
no body (the app answers 413).
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from auth.config import ConfigError, ServiceConfig, load_config
from auth.identity import Authenticator
from auth.ldap import LdapDirectory
from auth.local import LocalAuthenticator
from auth.server import AUDIT_LOGGER, create_app
from auth.tokens import SigningKeyError, TokenSigner

log = logging.getLogger("registry_fleet.auth")

LIMIT_REQUEST_LINE = 8190  # gunicorn's maximum; 20 scopes on 255-character names need about 6 KB
LIMIT_REQUEST_FIELDS = 32
LIMIT_REQUEST_FIELD_SIZE = 8190


def checked_config(path: Path) -> ServiceConfig:
    """The configuration, with its signing key and certificate loaded once to prove they work."""
    config = load_config(path)
    TokenSigner.load(config.signing_key, config.signing_cert, config.issuer, config.token_lifetime_seconds, time.time())
    return config


def tls12_context(conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TokenService(BaseApplication):  # type: ignore[misc]
    def __init__(self, config_path: Path, config: ServiceConfig, options: dict[str, Any]) -> None:
        self.config_path = config_path
        self.service_config = config
        self.options = options
        self._loaded_once = False
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if self._loaded_once:  # a reload (SIGHUP): take the file again only if it is valid
            try:
                self.service_config = checked_config(self.config_path)
                log.info("configuration reloaded from %s", self.config_path)
            except (ConfigError, SigningKeyError) as err:
                log.error("configuration reload refused, the running one stays:\n%s", err)
        self._loaded_once = True

    def load(self) -> Any:
        return create_app(self.service_config, authenticators(self.service_config))


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
    return {
        "bind": [args.bind],
        "certfile": str(args.certfile),
        "keyfile": str(args.keyfile),
        "ssl_context": tls12_context,
        "workers": args.workers or usable_cores(),
        "worker_class": "gthread",
        "threads": args.threads,
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "control_socket_disable": True,  # no management socket under $HOME
        "accesslog": None,  # the audit log records every decision; an access log adds nothing
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "registry-fleet-auth",
    }


def configure_logging() -> None:
    """Audit lines are bare JSON, one per line; the service's own messages carry time, level and name."""
    audit = logging.StreamHandler(sys.stderr)
    audit.setFormatter(logging.Formatter("%(message)s"))
    audit_logger = logging.getLogger(AUDIT_LOGGER)
    audit_logger.addHandler(audit)
    audit_logger.setLevel(logging.INFO)
    audit_logger.propagate = False
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m auth", description="The registry's token service.")
    parser.add_argument("--config", type=Path, required=True, help="service configuration (YAML or JSON)")
    parser.add_argument("--bind", required=True, help="HOST:PORT to listen on (HTTPS)")
    parser.add_argument("--certfile", type=Path, required=True, help="TLS certificate (PEM, chain)")
    parser.add_argument("--keyfile", type=Path, required=True, help="TLS private key (PEM)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default 0: one per usable core)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.workers < 0 or args.threads < 1:
        print("error: --workers must be 0 (one per core) or more, --threads 1 or more", file=sys.stderr)
        return 2
    try:
        config = checked_config(args.config)
    except (ConfigError, SigningKeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok")
        return 0
    for name in ("certfile", "keyfile"):
        path: Path = getattr(args, name)
        if not path.is_file():
            print(f"error: --{name} {path}: no such file", file=sys.stderr)
            return 2
    TokenService(args.config, config, gunicorn_options(args)).run()
    return 0
