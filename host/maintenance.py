"""The registry's maintenance switch on a host: `host/files/registry-maintenance.sh`, rendered.

fleet/maintenance.py sends the rendered script through SSM Run Command (`AWS-RunShellScript`) to every
instance of a stack: read-only (a systemd drop-in setting READ_ONLY_ENV, the environment override of the
registry's `storage.maintenance.readonly`, then a restart), read-write, restart, and garbage-collect on one
host. The drop-in is a separate file from the fleet's own (DROPIN_PATH), so nothing the boot wrote is
edited, and it is under /etc: a host rebooted inside a window comes back read-only.
"""

from __future__ import annotations

import shlex

from host.contract import CONFIG_PATH, REGISTRY_UNIT
from host.registry_config import READ_ONLY_ENV, READ_ONLY_VALUE
from host.template import render_file

READ_ONLY_DROPIN = f"/etc/systemd/system/{REGISTRY_UNIT}.service.d/50-registry-fleet-read-only.conf"
REGISTRY_BINARY = "/usr/bin/docker-registry"
ACTIONS = ("read-only", "read-write", "restart", "gc", "gc-dry-run")


def read_only_environment_line() -> str:
    """The drop-in's `Environment=` line. The whole assignment in single quotes: systemd unquotes a word
    as a shell would, and the value's double quotes must reach the registry (its YAML needs them)."""
    return f"Environment='{READ_ONLY_ENV}={READ_ONLY_VALUE}'"


def render_maintenance_script(
    dropin_file: str = READ_ONLY_DROPIN,
    unit: str = REGISTRY_UNIT,
    registry_binary: str = REGISTRY_BINARY,
    config_file: str = CONFIG_PATH,
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
    )


def maintenance_commands(action: str) -> list[str]:
    """The `commands` of an AWS-RunShellScript request: the script, written to a temp file and run with
    ACTION (SSM runs the lines as one script with /bin/sh; a heredoc keeps the script byte for byte)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown maintenance action {action!r}; one of {', '.join(ACTIONS)}")
    script = render_maintenance_script()
    marker = "REGISTRY_FLEET_MAINTENANCE_EOF"
    if marker in script:
        raise ValueError("the maintenance script contains its own heredoc marker")
    return [
        "set -e",
        "script=$(mktemp /root/registry-maintenance.XXXXXX)",
        f"cat >\"$script\" <<'{marker}'\n{script}{marker}",
        "status=0",
        f'bash "$script" {shlex.quote(action)} || status=$?',
        'rm -f "$script"',
        'exit "$status"',
    ]
