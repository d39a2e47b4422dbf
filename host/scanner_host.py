"""How a scanner worker boots (issue 14, practice 5): its files and its cloud-init user-data.

A scanner worker is not a registry host (practice 1): its own Auto Scaling group, role and security group
(components/scanning.py). It runs `python -m scanner worker` from the same release as the registry hosts'
services (host/artifact.py: the artifact in the registry bucket, checked by SHA-256, its hash-pinned lock)
and the official Trivy release, pinned by version and SHA-256 per architecture: the download is checked
before anything is unpacked, and a mismatch fails the unit's start (fail closed: the worker never scans
with a Trivy it did not verify; systemd retries, the queue keeps the messages). The scanner robot's token
comes from Secrets Manager at each start (the registry hosts' fetch script, host.boot.render_fetch_script),
never from user-data. The worker's config is public text (host.scan_config.render_worker_config).

Pure, deterministic renderers: plain values in, text out, no Pulumi import.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import yaml

from host.boot import (
    BlockStyleDumper,
    FetchSet,
    HostFile,
    RenderedHost,
    SecretFile,
    _sandbox,
    render_fetch_script,
    render_install_script,
    ssm_agent_url,
)
from host.contract import (
    ARCHITECTURES,
    FETCH_SCRIPT_PATH,
    REGISTRY_PACKAGES,
    SSM_AGENT_UNIT,
    TOKEN_INSTALL_SCRIPT_PATH,
    TOKEN_SERVICE_DIR,
    TOKEN_SERVICE_PACKAGES,
)
from host.template import render_file
from host.user_data import USER_DATA_LIMIT_BYTES, compress_user_data

SCANNER_UNIT = "registry-scanner"
SCANNER_USER = "registry-scanner"
SCANNER_SYSUSERS_PATH = f"/etc/sysusers.d/{SCANNER_USER}.conf"
SCANNER_UNIT_PATH = f"/etc/systemd/system/{SCANNER_UNIT}.service"
SCANNER_CONFIG_FILE = "/etc/registry-fleet/scanner.yml"  # public: queue, bucket, registry, topic
SCANNER_PASSWORD_FILE = "/etc/registry-scanner/robot.token"  # secret: the scanner robot's token
SCANNER_CACHE_NAME = "registry-scanner"  # CacheDirectory=: /var/cache/registry-scanner, the worker's cache_dir
SCANNER_CACHE_DIR = f"/var/cache/{SCANNER_CACHE_NAME}"
TRIVY_BIN = "/usr/local/bin/trivy"
TRIVY_SCRIPT_PATH = "/usr/local/sbin/registry-fleet-install-trivy"
TRIVY_MARKER_DIR = "/var/lib/registry-fleet/trivy"  # <sha256>: that release is installed
# What a worker installs: the AWS CLI (the fetch and install scripts), curl (Trivy, the SSM agent) and
# python3-venv (the release's venv). No registry.
SCANNER_PACKAGES = tuple(p for p in REGISTRY_PACKAGES if p != "docker-registry") + TOKEN_SERVICE_PACKAGES
# Trivy's release asset per Debian architecture (github.com/aquasecurity/trivy/releases).
TRIVY_ASSETS = {"amd64": "Linux-64bit", "arm64": "Linux-ARM64"}
SCANNER_SERVICES = (SSM_AGENT_UNIT, SCANNER_UNIT)
# The tag on a scanner worker's launch template: the compliance rules read registry hosts from every other
# template (policy/graph.py), and a template that writes the registry's config is a registry host whatever it says.
ROLE_TAG = "registry-fleet:role"
SCANNER_WORKER_ROLE = "scanner-worker"
# The same tag on registry hosts' instances: the GC maintenance window targets it, so it never runs on a worker.
REGISTRY_HOST_ROLE = "registry-host"

_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!_.*'()/-]{0,1023}$")
_INDEX_URL = re.compile(r"^https://[^\s/@]+(/\S*)?$")


def trivy_url(version: str, architecture: str) -> str:
    """The official release asset of `version` for a Debian architecture."""
    return (
        f"https://github.com/aquasecurity/trivy/releases/download/v{version}/"
        f"trivy_{version}_{TRIVY_ASSETS[architecture]}.tar.gz"
    )


@dataclass(frozen=True)
class ScannerBoot:
    """Everything a scanner worker needs at boot: ARNs, hashes and public text, no secret."""

    region: str
    architecture: str  # "arm64" | "amd64"
    worker_config_yaml: str  # host.scan_config.render_worker_config -> SCANNER_CONFIG_FILE
    robot_secret_arn: str  # the scanner robot's token -> SCANNER_PASSWORD_FILE
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    pip_index_url: str
    trivy_version: str
    trivy_sha256: str  # of the asset for `architecture`


def validate_scanner_boot(boot: ScannerBoot) -> None:
    """ValueError naming the field, the bad value and the rule, before anything is rendered."""
    checks = [
        ("region", boot.region, re.compile(r"^[a-z0-9-]+$"), "an AWS region name"),
        ("robot_secret_arn", boot.robot_secret_arn, _SECRET_ARN, "a Secrets Manager secret ARN (never the token)"),
        ("artifact_bucket", boot.artifact_bucket, _BUCKET, "an S3 bucket name"),
        ("artifact_key", boot.artifact_key, _KEY, "an S3 object key"),
        ("artifact_sha256", boot.artifact_sha256, _SHA256, "64 lower-case hex digits"),
        ("trivy_version", boot.trivy_version, _SEMVER, "a release like 0.59.1"),
        ("trivy_sha256", boot.trivy_sha256, _SHA256, "64 lower-case hex digits (the asset's checksum)"),
    ]
    for field, value, pattern, what in checks:
        if not isinstance(value, str) or not pattern.match(value) or ".." in value:
            shown = f"a value of {len(value)} characters" if field == "robot_secret_arn" else repr(value)
            raise ValueError(f"ScannerBoot.{field} must be {what}; got {shown}.")
    if boot.architecture not in ARCHITECTURES:
        raise ValueError(
            f"ScannerBoot.architecture must be one of {', '.join(ARCHITECTURES)}; got {boot.architecture!r}."
        )
    if not _INDEX_URL.match(boot.pip_index_url):
        raise ValueError("ScannerBoot.pip_index_url must be an https:// URL without credentials.")
    loaded = yaml.safe_load(boot.worker_config_yaml)
    if not isinstance(loaded, dict) or loaded.get("password_file") != SCANNER_PASSWORD_FILE:
        raise ValueError(
            f"ScannerBoot.worker_config_yaml must be the text host.scan_config.render_worker_config returns, with "
            f"password_file {SCANNER_PASSWORD_FILE}."
        )
    if "PRIVATE KEY" in boot.worker_config_yaml or "password:" in boot.worker_config_yaml:
        raise ValueError("ScannerBoot.worker_config_yaml holds a secret: user-data is readable; name files instead.")


def _trivy_script(boot: ScannerBoot) -> str:
    """Trivy's install script (host/files/install-trivy.sh, at TRIVY_SCRIPT_PATH): the worker unit's first
    ExecStartPre=+. It downloads the pinned asset over HTTPS (through the NAT gateways), checks its SHA-256
    before unpacking, installs only the `trivy` binary, and marks the release done (a no-op afterwards).
    `--prefix` (tests) changes where it installs, never how it verifies."""
    return render_file(
        "install-trivy.sh",
        SCRIPT_NAME=TRIVY_SCRIPT_PATH.rsplit("/", 1)[-1],
        TRIVY_URL=shlex.quote(trivy_url(boot.trivy_version, boot.architecture)),
        TRIVY_SHA256=shlex.quote(boot.trivy_sha256),
        TRIVY_BIN=TRIVY_BIN,
        MARKER_DIR=TRIVY_MARKER_DIR,
    )


def _scanner_unit() -> str:
    """The worker's systemd unit (host/files/registry-scanner.service): Trivy, then the release, then the robot's
    token (each as root, outside the sandbox), then `python -m scanner worker` as its own account in the
    registry hosts' sandbox, with its cache in /var/cache/registry-scanner. SIGTERM lets a scan finish or its
    message go back to the queue (the message is deleted only once its report is stored)."""
    return render_file(
        "registry-scanner.service",
        SCANNER_USER=SCANNER_USER,
        SCANNER_UNIT=SCANNER_UNIT,
        TRIVY_SCRIPT=TRIVY_SCRIPT_PATH,
        INSTALL_SCRIPT=TOKEN_INSTALL_SCRIPT_PATH,
        FETCH_SCRIPT=FETCH_SCRIPT_PATH,
        SERVICE_DIR=TOKEN_SERVICE_DIR,
        CONFIG_FILE=SCANNER_CONFIG_FILE,
        CACHE_NAME=SCANNER_CACHE_NAME,
        SANDBOX=_sandbox(),
    )


def render_scanner_host(boot: ScannerBoot) -> RenderedHost:
    """Every file of a scanner worker and its `#cloud-config` user-data; ValueError when `boot` breaks a rule."""
    validate_scanner_boot(boot)
    robot = SecretFile(boot.robot_secret_arn, SCANNER_PASSWORD_FILE, "0640", f"root:{SCANNER_USER}")
    install = render_install_script(
        boot.region,
        boot.artifact_bucket,
        boot.artifact_key,
        boot.artifact_sha256,
        boot.pip_index_url,
        ["scanner.worker"],
    )
    files = [
        HostFile(SCANNER_CONFIG_FILE, boot.worker_config_yaml, "0644"),
        HostFile(FETCH_SCRIPT_PATH, render_fetch_script(boot.region, [FetchSet(SCANNER_UNIT, (robot,))]), "0700"),
        HostFile(TOKEN_INSTALL_SCRIPT_PATH, install, "0700"),
        HostFile(TRIVY_SCRIPT_PATH, _trivy_script(boot), "0700"),
        HostFile(
            SCANNER_SYSUSERS_PATH, render_file("registry-scanner.sysusers.conf", SCANNER_USER=SCANNER_USER), "0644"
        ),
        HostFile(SCANNER_UNIT_PATH, _scanner_unit(), "0644"),
    ]
    ssm_install = (
        'set -eu; deb=$(mktemp --suffix=.deb); curl -fsSL --proto =https -o "$deb" '
        f'{shlex.quote(ssm_agent_url(boot.region, boot.architecture))}; dpkg -i "$deb"; rm -f "$deb"'
    )
    cloud_config = {
        "apt": {
            "preserve_sources_list": False,
            "primary": [{"arches": ["default"], "uri": "https://deb.debian.org/debian"}],
            "security": [{"arches": ["default"], "uri": "https://deb.debian.org/debian-security"}],
        },
        "package_update": True,
        "packages": list(SCANNER_PACKAGES),
        "write_files": [
            {"path": f.path, "content": f.content, "owner": "root:root", "permissions": f.permissions, "defer": True}
            for f in files
        ],
        "runcmd": [
            ["sh", "-c", ssm_install],
            ["systemctl", "enable", "--now", SSM_AGENT_UNIT],
            ["systemd-sysusers", SCANNER_SYSUSERS_PATH],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", SCANNER_UNIT],
        ],
    }
    text = "#cloud-config\n" + yaml.dump(cloud_config, Dumper=BlockStyleDumper, sort_keys=False, width=1000)
    size = len(compress_user_data(text))
    if size > USER_DATA_LIMIT_BYTES:
        raise ValueError(f"The scanner worker's user-data is {size} bytes gzipped; EC2 allows {USER_DATA_LIMIT_BYTES}.")
    return RenderedHost(tuple(files), text)
