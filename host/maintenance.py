"""The registry's maintenance switch on a host: `host/files/registry-maintenance.sh`, rendered.

fleet/maintenance.py sends the rendered script through SSM Run Command (`AWS-RunShellScript`) to every
instance of a stack: read-only (a systemd drop-in setting READ_ONLY_ENV, the environment override of the
registry's `storage.maintenance.readonly`, then a restart), read-write, restart, and garbage-collect on one
host. The drop-in is a separate file from the fleet's own (DROPIN_PATH), so nothing the boot wrote is
edited, and it is under /etc: a host rebooted inside a window comes back read-only.
"""

from __future__ import annotations

import base64
import shlex

from host.contract import (
    CA_CERT_FILE,
    CONFIG_PATH,
    HOST_INTERNAL_NAME,
    REGISTRY_PORT,
    REGISTRY_UNIT,
    TOKEN_SERVICE_DIR,
    TOKEN_SIGNING_CERT_FILE,
    TOKEN_SIGNING_KEY_FILE,
)
from host.registry_config import READ_ONLY_ENV, READ_ONLY_VALUE
from host.template import render_file

READ_ONLY_DROPIN = f"/etc/systemd/system/{REGISTRY_UNIT}.service.d/50-registry-fleet-read-only.conf"
REGISTRY_BINARY = "/usr/bin/docker-registry"
ACTIONS = ("read-only", "read-write", "restart", "gc", "gc-dry-run", "retention", "retention-dry-run")
RETENTION_ACTIONS = ("retention", "retention-dry-run")  # they take the policies' JSON as an argument


def read_only_environment_line() -> str:
    """The drop-in's `Environment=` line. The whole assignment in single quotes: systemd unquotes a word
    as a shell would, and the value's double quotes must reach the registry (its YAML needs them)."""
    return f"Environment='{READ_ONLY_ENV}={READ_ONLY_VALUE}'"


def render_maintenance_script(
    dropin_file: str = READ_ONLY_DROPIN,
    unit: str = REGISTRY_UNIT,
    registry_binary: str = REGISTRY_BINARY,
    config_file: str = CONFIG_PATH,
    release_dir: str = f"{TOKEN_SERVICE_DIR}/current",
) -> str:
    """The script's text; `ACTION` is its first argument. The defaults are a host's; tests point them at
    a temporary directory and stand-ins."""
    return render_file(
        "registry-maintenance.sh",
        DROPIN_FILE=shlex.quote(dropin_file),
        UNIT=shlex.quote(unit),
        ENVIRONMENT_LINE=shlex.quote(read_only_environment_line()),
        REGISTRY_BINARY=shlex.quote(registry_binary),
        CONFIG_FILE=shlex.quote(config_file),
        # Retention (python -m retention) runs from the token service's release, against the local registry
        # by address (its certificate names registry.internal), with the token signing key the host holds.
        RETENTION_PYTHON=shlex.quote(f"{release_dir}/venv/bin/python"),
        RETENTION_APP=shlex.quote(f"{release_dir}/app"),
        REGISTRY_URL=shlex.quote(f"https://127.0.0.1:{REGISTRY_PORT}"),
        CA_FILE=shlex.quote(CA_CERT_FILE),
        SERVER_NAME=shlex.quote(HOST_INTERNAL_NAME),
        SIGNING_KEY=shlex.quote(TOKEN_SIGNING_KEY_FILE),
        SIGNING_CERT=shlex.quote(TOKEN_SIGNING_CERT_FILE),
    )


def maintenance_commands(action: str, policies_json: str | None = None) -> list[str]:
    """The `commands` of an AWS-RunShellScript request: the script, written to a temp file and run with
    ACTION (SSM runs the lines as one script with /bin/sh; a heredoc keeps the script byte for byte).
    The retention actions take the policies' JSON, passed base64-encoded (one shell word, nothing to quote)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown maintenance action {action!r}; one of {', '.join(ACTIONS)}")
    if (action in RETENTION_ACTIONS) != (policies_json is not None):
        raise ValueError(f"maintenance action {action!r}: the retention actions, and only they, take policies")
    argument = "" if policies_json is None else " " + base64.b64encode(policies_json.encode()).decode()
    script = render_maintenance_script()
    marker = "REGISTRY_FLEET_MAINTENANCE_EOF"
    if marker in script:
        raise ValueError("the maintenance script contains its own heredoc marker")
    return [
        "set -e",
        "script=$(mktemp /root/registry-maintenance.XXXXXX)",
        f"cat >\"$script\" <<'{marker}'\n{script}{marker}",
        "status=0",
        f'bash "$script" {shlex.quote(action)}{argument} || status=$?',
        'rm -f "$script"',
        'exit "$status"',
    ]
