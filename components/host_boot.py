"""Render what boots a registry host: cloud-init user-data, the secrets fetch script, the systemd drop-in.

Pure, deterministic renderers: plain values in, text out, no Pulumi import. The fleet component
feeds them resolved outputs inside one `apply`; the lab can feed them local values.

Practices served: dedicated registry hosts (1: the host runs the registry and the SSM agent, nothing
else), private registry (7: SSM instead of SSH; no secret VALUE ever appears in user-data, only the
ARNs of Secrets Manager secrets, which a root-only script reads at each service start; apt over
HTTPS because host egress allows only 443) and replicated across servers (8: every host writes the
same REGISTRY_HTTP_SECRET, which several registries behind one load balancer must share).

Boot order on a Debian 12 host: cloud-init installs the packages (which creates user
docker-registry and starts the registry with the package's default config), then writes the
deferred files (`defer: true` runs in the final stage, after packages, so our config.yml replaces
the package's conffile and `owner` may name the docker-registry group), then `runcmd` installs the
SSM agent and restarts the registry with the drop-in, whose `ExecStartPre=+` fetches the secrets.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from components.registry_config import CONFIG_PATH, STATE_DIR

FETCH_SCRIPT_PATH = "/usr/local/sbin/registry-fleet-fetch-secrets"
DROPIN_PATH = "/etc/systemd/system/docker-registry.service.d/10-registry-fleet.conf"
ENV_DIR = "/run/registry-fleet"  # tmpfs: the HTTP secret never reaches a disk
ENV_FILE = f"{ENV_DIR}/registry.env"
USER_DATA_LIMIT_BYTES = 16384  # EC2: user data is limited to 16 KB, in raw form, before base64 encoding
ARCHITECTURES = ("arm64", "amd64")  # Debian architecture names, as in the SSM agent's download path

# The token service on a host (token mode): its files, its code, its port.
TOKEN_SERVICE_PORT = 5002  # HTTPS; the ALB's token target group
TOKEN_PATH = "/auth"  # the realm's path on the registry's public URL (an ALB listener rule)
TOKEN_HEALTH_PATH = "/healthz"
TOKEN_USER = "registry-token"
TOKEN_CONFIG_FILE = "/etc/registry-token/config.json"  # secret: hashes, directory password
TOKEN_SIGNING_KEY_FILE = "/etc/registry-token/signing.key"  # secret
TOKEN_TLS_KEY_FILE = "/etc/registry-token/tls.key"  # secret: the host key, the service's own copy
TOKEN_SIGNING_CERT_FILE = "/etc/registry-fleet/token-signing.crt"  # public: also the registry's rootcertbundle
TOKEN_LDAP_CA_FILE = "/etc/registry-fleet/ldap-ca.crt"  # public: the directory's CA, when the stack gives one
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's; the directory's CA when the stack gives none
TOKEN_SERVICE_DIR = "/opt/registry-fleet/token-service"

_REGION = re.compile(r"^[a-z0-9-]+$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")
_MODE = re.compile(r"^0?[0-7]{3}$")
_OWNER = re.compile(r"^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$")


@dataclass(frozen=True)
class SecretFile:
    """A Secrets Manager secret written to a file at each service start, never in user-data."""

    secret_arn: str
    path: str
    # 0640 root:docker-registry: the registry runs as user docker-registry and must read the file
    # through its group; root owns it, so the registry cannot change it.
    mode: str = "0640"
    owner: str = "root:docker-registry"


@dataclass(frozen=True)
class TokenServiceBoot:
    """The token service beside the registry (token mode). ARNs, public text and a hash: no secret."""

    artifact_bucket: str  # the registry bucket (read through the VPC's S3 gateway endpoint)
    artifact_key: str  # components.artifact.Artifact.key
    artifact_sha256: str  # checked before anything is unpacked
    pip_index_url: str  # where the lock's hash-pinned wheels come from
    config_secret_arn: str  # -> TOKEN_CONFIG_FILE
    signing_key_secret_arn: str  # -> TOKEN_SIGNING_KEY_FILE
    tls_key_secret_arn: str  # -> TOKEN_TLS_KEY_FILE (the host key)
    signing_cert_pem: str  # -> TOKEN_SIGNING_CERT_FILE
    tls_cert_file: str  # the host certificate, already among HostBoot.public_files
    ldap_ca_pem: str | None = None  # -> TOKEN_LDAP_CA_FILE
    port: int = TOKEN_SERVICE_PORT


@dataclass(frozen=True)
class HostBoot:
    """Everything a registry host needs at boot. Only ARNs and public text: no secret value fits in."""

    region: str
    registry_config_yaml: str  # output of render_registry_config
    http_secret_arn: str  # -> REGISTRY_HTTP_SECRET in /run/registry-fleet/registry.env (0600 root)
    secret_files: tuple[SecretFile, ...]  # TLS host key, htpasswd, CloudFront private key...
    public_files: tuple[tuple[str, str], ...] = ()  # (path, content) of non-secret files, e.g. certificates
    architecture: str = "arm64"  # "arm64" | "amd64" (Debian arch; for the SSM agent .deb)
    token_service: TokenServiceBoot | None = None  # token mode: the token service runs beside the registry


def validate_host_boot(boot: HostBoot) -> None:
    """Raise ValueError naming the field, the bad value and the rule, before anything is rendered."""
    if not _REGION.match(boot.region):
        raise ValueError(f"HostBoot.region must be an AWS region name such as 'eu-west-1'; got {boot.region!r}.")
    if boot.architecture not in ARCHITECTURES:
        raise ValueError(f"HostBoot.architecture must be one of {', '.join(ARCHITECTURES)}; got {boot.architecture!r}.")
    # An ARN pattern also keeps a secret value (a PEM, a password) from being passed where an ARN belongs.
    arns = [("HostBoot.http_secret_arn", boot.http_secret_arn)]
    arns += [(f"HostBoot.secret_files[{i}].secret_arn", f.secret_arn) for i, f in enumerate(boot.secret_files)]
    for field, arn in arns:
        if not _SECRET_ARN.match(arn):
            raise ValueError(
                f"{field} must be a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME); "
                f"got a value of {len(arn)} characters that is not one. Pass the ARN, never the secret itself."
            )
    for i, f in enumerate(boot.secret_files):
        if not _PATH.match(f.path):
            raise ValueError(f"HostBoot.secret_files[{i}].path must be an absolute path; got {f.path!r}.")
        if not _MODE.match(f.mode):
            raise ValueError(f"HostBoot.secret_files[{i}].mode must be an octal mode such as '0640'; got {f.mode!r}.")
        if not _OWNER.match(f.owner):
            raise ValueError(f"HostBoot.secret_files[{i}].owner must be 'user:group'; got {f.owner!r}.")
    for i, (path, content) in enumerate(boot.public_files):
        if not _PATH.match(path):
            raise ValueError(f"HostBoot.public_files[{i}] path must be an absolute path; got {path!r}.")
        if "PRIVATE KEY" in content:
            raise ValueError(
                f"HostBoot.public_files[{i}] ({path}) holds a private key: user-data is readable by anyone who can "
                f"describe the instance. Store the key in Secrets Manager and list it in secret_files."
            )
    _validate_registry_config_text(boot.registry_config_yaml)
    paths = [CONFIG_PATH, FETCH_SCRIPT_PATH, DROPIN_PATH, ENV_FILE]
    paths += [f.path for f in boot.secret_files] + [path for path, _ in boot.public_files]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise ValueError(
            f"HostBoot writes these paths more than once: {', '.join(duplicates)}. Give each file one source."
        )


def _validate_registry_config_text(text: str) -> None:
    """The config text goes into user-data, which anyone who can describe the instance may read."""
    if "PRIVATE KEY" in text:
        raise ValueError("HostBoot.registry_config_yaml holds a private key; it must hold only a path to one.")
    loaded = yaml.safe_load(text)
    config: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    http = config.get("http") or {}
    s3 = (config.get("storage") or {}).get("s3") or {}
    if "secret" in http:
        raise ValueError("HostBoot.registry_config_yaml sets http.secret; it comes from REGISTRY_HTTP_SECRET instead.")
    if "accesskey" in s3 or "secretkey" in s3:
        raise ValueError("HostBoot.registry_config_yaml sets S3 keys; the registry uses the instance role instead.")
    if not s3:
        raise ValueError(
            "HostBoot.registry_config_yaml must be the text render_registry_config returns (no storage.s3)."
        )


def ssm_agent_url(region: str, architecture: str) -> str:
    """The SSM agent .deb in the region's own bucket (reachable through the VPC's S3 gateway endpoint)."""
    return f"https://s3.{region}.amazonaws.com/amazon-ssm-{region}/latest/debian_{architecture}/amazon-ssm-agent.deb"


_FETCH_SCRIPT_HEAD = r"""#!/bin/bash
# registry-fleet: fetch the registry's secrets from AWS Secrets Manager.
# Rendered by components/host_boot.py; runs as root before each start of docker-registry
# (ExecStartPre=+). It never prints a secret: no tracing; values go only to files and shell builtins.
set -euo pipefail
umask 077

REGION=__REGION__
tmp=""
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT

fail() { echo "registry-fleet-fetch-secrets: $*" >&2; exit 1; }

fetch() {
  aws --region "$REGION" secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text
}

# write_secret ARN PATH MODE OWNER GROUP: fetch into a temp file beside PATH, set owner and mode,
# then rename it over PATH, so the registry never reads a half-written or wrongly owned file.
write_secret() {
  local arn=$1 path=$2 mode=$3 owner=$4 group=$5 dir
  dir=$(dirname "$path")
  [ -d "$dir" ] || install -d -m 0750 -o root -g "$group" "$dir"
  tmp=$(mktemp "$dir/.registry-fleet.XXXXXX")
  fetch "$arn" >"$tmp"
  if [ ! -s "$tmp" ] || [ "$(cat "$tmp")" = None ]; then fail "secret $arn has no SecretString"; fi
  chown "$owner:$group" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
  tmp=""
}

# write_http_secret ARN: REGISTRY_HTTP_SECRET for the registry's EnvironmentFile (root only, on tmpfs).
write_http_secret() {
  local secret
  install -d -m 0700 -o root -g root __ENV_DIR__
  secret=$(fetch "$1")
  if [ -z "$secret" ] || [ "$secret" = None ]; then fail "secret $1 has no SecretString"; fi
  case "$secret" in
    *[!A-Za-z0-9+/=_.-]*) fail "secret $1 must hold only [A-Za-z0-9+/=_.-] to be safe in an EnvironmentFile" ;;
  esac
  tmp=$(mktemp __ENV_DIR__/.registry.env.XXXXXX)
  printf 'REGISTRY_HTTP_SECRET=%s\n' "$secret" >"$tmp"  # printf is a builtin: the value is in no argv
  chmod 0600 "$tmp"
  mv -f "$tmp" __ENV_FILE__
  tmp=""
}

"""


def render_fetch_secrets_script(boot: HostBoot) -> str:
    """Return the bash script installed at FETCH_SCRIPT_PATH. It holds ARNs and paths, never a secret."""
    validate_host_boot(boot)
    head = (
        _FETCH_SCRIPT_HEAD.replace("__REGION__", shlex.quote(boot.region))
        .replace("__ENV_DIR__", shlex.quote(ENV_DIR))
        .replace("__ENV_FILE__", shlex.quote(ENV_FILE))
    )
    lines = [f"write_http_secret {shlex.quote(boot.http_secret_arn)}"]
    for f in boot.secret_files:
        user, group = f.owner.split(":")
        args = (f.secret_arn, f.path, f.mode, user, group)
        lines.append("write_secret " + " ".join(shlex.quote(a) for a in args))
    return head + "\n".join(lines) + "\n"


def render_systemd_dropin(boot: HostBoot) -> str:
    """Return the drop-in for the Debian `docker-registry.service` unit (installed at DROPIN_PATH)."""
    validate_host_boot(boot)
    return f"""\
# registry-fleet: rendered by components/host_boot.py.
[Unit]
After=network-online.target
Wants=network-online.target
# Keep retrying (e.g. while Secrets Manager is unreachable): the default start limit would give up
# for good after 5 starts in 10 s, and the load balancer health check replaces a host that never recovers.
StartLimitIntervalSec=0

[Service]
# "+": the fetch script runs as root and outside the sandbox below (User=, ProtectSystem= and the
# namespacing options do not apply to it), so it can write secrets under /etc and {ENV_DIR}.
ExecStartPre=+{FETCH_SCRIPT_PATH}
# "-": systemd reads this file before every command, ExecStartPre included, and on first boot
# it does not exist until the fetch script has written it. ExecStart runs only if that script succeeded.
EnvironmentFile=-{ENV_FILE}
# The registry panics at start when AWS_CA_BUNDLE is set.
UnsetEnvironment=AWS_CA_BUNDLE
Restart=always
RestartSec=2
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
ReadWritePaths={STATE_DIR}
CapabilityBoundingSet=
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
"""


class _BlockStyleDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as `|` blocks: readable user-data, fewer bytes."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


def _file(path: str, content: str, permissions: str) -> dict[str, Any]:
    # defer: written in cloud-init's final stage, after packages are installed (see module docstring).
    return {"path": path, "content": content, "owner": "root:root", "permissions": permissions, "defer": True}


def render_cloud_init(boot: HostBoot) -> str:
    """Return the `#cloud-config` user-data. Raises ValueError beyond EC2's 16 KB user-data limit."""
    validate_host_boot(boot)
    ssm_install = (
        'set -eu; deb=$(mktemp --suffix=.deb); curl -fsSL --proto =https -o "$deb" '
        f'{shlex.quote(ssm_agent_url(boot.region, boot.architecture))}; dpkg -i "$deb"; rm -f "$deb"'
    )
    write_files = [_file(CONFIG_PATH, boot.registry_config_yaml, "0644")]  # the config holds no secret
    write_files += [_file(path, content, "0644") for path, content in boot.public_files]
    write_files += [
        _file(FETCH_SCRIPT_PATH, render_fetch_secrets_script(boot), "0700"),
        _file(DROPIN_PATH, render_systemd_dropin(boot), "0644"),
    ]
    cloud_config = {
        # Host egress allows only 443: fetch packages over HTTPS.
        "apt": {
            "primary": [{"arches": ["default"], "uri": "https://deb.debian.org/debian"}],
            "security": [{"arches": ["default"], "uri": "https://deb.debian.org/debian-security"}],
        },
        "package_update": True,
        "packages": ["docker-registry", "awscli", "ca-certificates", "curl"],
        "write_files": write_files,
        "runcmd": [
            ["sh", "-c", ssm_install],
            ["systemctl", "enable", "--now", "amazon-ssm-agent"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "docker-registry"],
            # The package started the registry with its default config before our files existed.
            ["systemctl", "restart", "docker-registry"],
        ],
    }
    text = "#cloud-config\n" + yaml.dump(cloud_config, Dumper=_BlockStyleDumper, sort_keys=False, width=1000)
    size = len(text.encode("utf-8"))
    if size > USER_DATA_LIMIT_BYTES:
        raise ValueError(
            f"The cloud-init user-data is {size} bytes; EC2 allows {USER_DATA_LIMIT_BYTES} (16 KB before base64). "
            f"Shrink HostBoot.public_files (e.g. ship large certificates through Secrets Manager or S3)."
        )
    return text
