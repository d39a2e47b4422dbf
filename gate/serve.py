"""Run the gate under gunicorn, with TLS: `python -m gate --config F --bind H:P --certfile F --keyfile F`.

Served as the token service is (auth/serve.py: TLS 1.2+, the same request limits, SIGHUP re-reads the
configuration and keeps the running one when the file is invalid; new keys and namespaces take effect
with empty caches). gthread workers, by default one per CPU with 16 threads each; each worker keeps its
own keep-alive pool to the registry and its own cache of valid signatures. Past the limits (request
line 8190 bytes, 32 header fields of at most 8190 bytes) gunicorn answers 400 or 431.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from auth.service import configure_logging, run_service, server_parser, tls_options
from gate.app import AUDIT_LOGGER, Gate
from gate.config import ConfigError, GateConfig, load_config


def gunicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    # The ALB keeps idle connections 60 s: it closes them, not the gate. Refusals go to the audit log;
    # the load balancer logs every request.
    return tls_options(args, workers=args.workers, keepalive=75, proc_name="registry-fleet-gate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = server_parser("python -m gate", "The registry's pull-time gate: signatures and scan reports.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker (default 16)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(AUDIT_LOGGER)

    def build(config: GateConfig) -> Gate:
        return Gate(config, pool_size=args.threads)

    return run_service(args, load_config, (ConfigError,), build, gunicorn_options)
