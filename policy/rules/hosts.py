"""Practice 1, dedicated registry hosts: a host installs and runs the registry, its token service and signature
gate, and the SSM agent.

`hosts-dedicated` checks what a host installs and enables; `hosts-service-accounts` that each unit user-data writes
can start at all: the account in its `User=`/`Group=` exists before systemd starts it.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from host.contract import HOST_PACKAGES, HOST_SERVICES
from policy.graph import (
    LAUNCH_TEMPLATE,
    Res,
    as_list,
    cloud_inits,
    enabled_services,
    of_type,
    runcmd_commands,
    systemctl_verb,
)
from policy.registry import STACK, Finding, rule

# What a registry host may install and enable: the registry and the token service beside it (token
# mode; python3-venv holds its hash-pinned wheels) with the signature gate (a stack that protects a
# namespace), what boots them (the AWS CLI reads their secrets, curl fetches the SSM agent), and the
# SSM agent (operators use Session Manager, not SSH).


def no_launch_template(resources: Sequence[Res]) -> Iterator[Finding]:
    if not of_type(resources, LAUNCH_TEMPLATE):
        yield STACK, f"no {LAUNCH_TEMPLATE}: no registry host to check"


@rule(
    "hosts-dedicated",
    1,
    "Registry hosts install only docker-registry, awscli, ca-certificates, curl and python3-venv, and enable "
    "only docker-registry, registry-token, registry-gate and amazon-ssm-agent.",
)
def find_hosts_dedicated(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from no_launch_template(resources)
    for lt, doc in cloud_inits(resources):
        if isinstance(doc, str):
            yield lt.name, doc
            continue
        names = [str(p[0] if isinstance(p, list) and p else p) for p in as_list(doc.get("packages"))]
        extra = sorted(set(names) - HOST_PACKAGES)
        if extra:
            yield lt.name, f"userData packages include {extra}; a registry host installs only {sorted(HOST_PACKAGES)}"
        for service in enabled_services(doc):
            if service not in HOST_SERVICES:
                yield (
                    lt.name,
                    f"userData runcmd enables {service!r}; only {sorted(HOST_SERVICES)} run on a registry host",
                )


# A unit file or drop-in user-data writes, and the unit it belongs to.
UNIT_FILE = re.compile(r"^/etc/systemd/system/(?P<unit>[^/]+)\.service(?:\.d/[^/]+\.conf)?$")
SYSUSERS_FILE = re.compile(r"^/(?:etc|run|usr/lib)/sysusers\.d/[^/]+\.conf$")
# runcmd verbs that start a unit now (enable: with --now; without it, at the next boot, after
# systemd-sysusers.service has applied every sysusers.d file anyway).
STARTING_VERBS = frozenset({"enable", "start", "restart", "reload-or-restart", "try-restart"})
TRUE = frozenset({"1", "yes", "true", "on"})


def unit_accounts(text: str) -> list[tuple[str, str]]:
    """(setting, account) of the `User=` and `Group=` a unit file (or drop-in) sets in [Service]; none
    with `DynamicUser=yes` (systemd makes the account) or for root and numeric ids."""
    section, dynamic = "", False
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            key, value = (part.strip() for part in line.split("=", 1))
            if key in ("User", "Group"):
                values[key] = value  # the last assignment wins; an empty one resets
            elif key == "DynamicUser":
                dynamic = value.lower() in TRUE
    if dynamic:
        return []
    return [
        (k, values[k]) for k in ("User", "Group") if values.get(k) not in (None, "", "root") and not values[k].isdigit()
    ]


def sysusers_accounts(text: str) -> tuple[set[str], set[str]]:
    """(users, groups) a sysusers.d(5) file creates: `u NAME` a user and its group (unless its ID names
    another group), `g NAME` a group, `m USER GROUP` both."""
    users: set[str] = set()
    groups: set[str] = set()
    for line in text.splitlines():
        try:
            fields = shlex.split(line, comments=True)
        except ValueError:
            continue
        kind = fields[0].rstrip("!") if fields else ""
        if kind == "u" and len(fields) >= 2:
            users.add(fields[1])
            if ":" not in (fields[2] if len(fields) > 2 else "-"):
                groups.add(fields[1])
        elif kind == "g" and len(fields) >= 2:
            groups.add(fields[1])
        elif kind == "m" and len(fields) >= 3:
            users.add(fields[1])
            groups.add(fields[2])
    return users, groups


def write_file_text(entry: Mapping[str, Any]) -> str:
    """The text a cloud-init write_files entry writes, its `encoding` (base64, gzip or both) undone; an
    entry that does not decode counts as empty."""
    content: Any = entry.get("content") or ""
    encoding = str(entry.get("encoding") or "text").lower()
    try:
        if "b64" in encoding or "base64" in encoding:
            content = base64.b64decode(str(content), validate=True)
        if "gz" in encoding:
            content = gzip.decompress(content if isinstance(content, bytes) else str(content).encode("latin-1"))
        return content.decode("utf-8") if isinstance(content, bytes) else str(content)
    except (binascii.Error, OSError, EOFError, UnicodeDecodeError):
        return ""


def service_account_problems(cloud_init: Mapping[str, Any]) -> list[str]:
    """Why a unit user-data writes may fail with 217/USER: each `User=`/`Group=` account must be declared
    in a sysusers.d file user-data writes, applied by `systemd-sysusers` in runcmd before the first
    command that starts the unit. Empty when every account is created in time."""
    files = {
        str(f.get("path")): write_file_text(f) for f in as_list(cloud_init.get("write_files")) if isinstance(f, Mapping)
    }
    commands = runcmd_commands(cloud_init)

    def applied_at(path: str) -> int | None:
        """The position of the first runcmd command that applies `path` (all files, or this one named)."""
        for i, words in enumerate(commands):
            if "systemd-sysusers" in words:
                named = [w for w in words[words.index("systemd-sysusers") + 1 :] if not w.startswith("-")]
                if not named or path in named:
                    return i
        return None

    def started_at(unit: str) -> int | None:
        for i, words in enumerate(commands):
            call = systemctl_verb(words)
            if call is not None and call[0] in STARTING_VERBS and unit in call[1]:
                return i
        return None

    declared = {path: sysusers_accounts(text) for path, text in files.items() if SYSUSERS_FILE.match(path)}
    problems = []
    for path, text in files.items():
        match = UNIT_FILE.match(path)
        if match is None:
            continue
        unit = match.group("unit")
        for setting, account in unit_accounts(text):
            kind = 0 if setting == "User" else 1
            sources = sorted(p for p, accounts in declared.items() if account in accounts[kind])
            where = f"{path} sets {setting}={account}"
            if not sources:
                problems.append(
                    f"{where}, but no sysusers.d file in userData creates that account: systemd resolves it before "
                    f"any command of {unit}, so every start fails with status 217/USER"
                )
                continue
            applied = [i for i in map(applied_at, sources) if i is not None]
            started = started_at(unit)
            if not applied:
                problems.append(f"{where}; {' '.join(sources)} declares it, but runcmd runs no systemd-sysusers on it")
            elif started is not None and min(applied) > started:
                problems.append(
                    f"{where}; runcmd starts {unit} before systemd-sysusers creates the account "
                    f"({' '.join(sources)}): the first start fails with status 217/USER"
                )
    return problems


@rule(
    "hosts-service-accounts",
    1,
    "Every systemd unit a registry host's user-data writes runs as root or as an account that a sysusers.d file "
    "in user-data declares and runcmd creates (systemd-sysusers) before it starts the unit.",
)
def find_hosts_service_accounts(resources: Sequence[Res]) -> Iterator[Finding]:
    for lt, doc in cloud_inits(resources):
        if isinstance(doc, dict):  # an unreadable userData is hosts-dedicated's finding
            yield from ((lt.name, problem) for problem in service_account_problems(doc))
