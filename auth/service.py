"""Serving a WSGI app under gunicorn with TLS, as the token service (auth/serve.py) and the signature gate
(gate/serve.py) both run: TLS 1.2+, gthread workers, request limits, a configuration file checked before
start and re-read on SIGHUP (an invalid file is refused and the running configuration kept), audit lines
as bare JSON on stderr.

Request limits: request line 8190 bytes (20 scopes fit), 32 header fields of at most 8190 bytes; past
them gunicorn answers 400 or 431 itself.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

log = logging.getLogger("registry_fleet.service")

LIMIT_REQUEST_LINE = 8190  # gunicorn's maximum; 20 scopes on 255-character names need about 6 KB
LIMIT_REQUEST_FIELDS = 32
LIMIT_REQUEST_FIELD_SIZE = 8190


def tls12_context(conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


ConfigT = TypeVar("ConfigT")


class ReloadingService(BaseApplication, Generic[ConfigT]):  # type: ignore[misc]
    """gunicorn serving the WSGI app `build(config)`, its config read by `load(path)`; SIGHUP re-reads the
    file and keeps the running configuration when `load` raises one of `errors` (the token service and
    the signature gate run this way)."""

    def __init__(
        self,
        config_path: Path,
        config: ConfigT,
        options: dict[str, Any],
        load: Callable[[Path], ConfigT],
        errors: tuple[type[Exception], ...],
        build: Callable[[ConfigT], Any],
    ) -> None:
        self.config_path = config_path
        self.service_config = config
        self.options = options
        self.load_file, self.errors, self.build = load, errors, build
        self._loaded_once = False
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if self._loaded_once:  # a reload (SIGHUP): take the file again only if it is valid
            try:
                self.service_config = self.load_file(self.config_path)
                log.info("configuration reloaded from %s", self.config_path)
            except self.errors as err:
                log.error("configuration reload refused, the running one stays:\n%s", err)
        self._loaded_once = True

    def load(self) -> Any:
        return self.build(self.service_config)


def tls_options(args: argparse.Namespace, workers: int, keepalive: int, proc_name: str) -> dict[str, Any]:
    """gunicorn with TLS 1.2+, gthread workers, the request limits above, no access log (the services
    write their own audit lines), no control socket."""
    return {
        "bind": [args.bind],
        "certfile": str(args.certfile),
        "keyfile": str(args.keyfile),
        "ssl_context": tls12_context,
        "workers": workers,
        "worker_class": "gthread",
        "threads": args.threads,
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": keepalive,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "control_socket_disable": True,  # no management socket under $HOME
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": proc_name,
    }


def configure_logging(audit_logger_name: str) -> None:
    """Audit lines are bare JSON, one per line; the service's own messages carry time, level and name."""
    audit = logging.StreamHandler(sys.stderr)
    audit.setFormatter(logging.Formatter("%(message)s"))
    audit_logger = logging.getLogger(audit_logger_name)
    audit_logger.addHandler(audit)
    audit_logger.setLevel(logging.INFO)
    audit_logger.propagate = False
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def server_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """--config, --bind, --certfile, --keyfile and --check: what both services take."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True, help="service configuration (YAML or JSON)")
    parser.add_argument("--bind", required=True, help="HOST:PORT to listen on (HTTPS)")
    parser.add_argument("--certfile", type=Path, required=True, help="TLS certificate (PEM, chain)")
    parser.add_argument("--keyfile", type=Path, required=True, help="TLS private key (PEM)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    return parser


def run_service(
    args: argparse.Namespace,
    load: Callable[[Path], ConfigT],
    errors: tuple[type[Exception], ...],
    build: Callable[[ConfigT], Any],
    options: Callable[[argparse.Namespace], dict[str, Any]],
) -> int:
    """Load and check the configuration (exit 2 with the message when it is unusable), then serve."""
    try:
        config = load(args.config)
    except errors as err:
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
    ReloadingService(args.config, config, options(args), load, errors, build).run()
    return 0
