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
In token mode `runcmd` then installs the token service (its artifact from S3, checked against the
SHA-256 in user-data, into a venv from the hash-pinned lock) and starts its unit `registry-token`,
whose `ExecStartPre=+` runs the same fetch script for its own secrets (config, signing key, TLS key).

User-data holds at most 16 KB: the rendered scripts and units are compact (their explanations live
here, beside their templates), and the fetch script carries its functions once for both units.
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from components.registry_config import CONFIG_PATH, STATE_DIR

FETCH_SCRIPT_PATH = "/usr/local/sbin/registry-fleet-fetch-secrets"  # `... [UNIT]`: that unit's secrets
REGISTRY_UNIT = "docker-registry"  # the Debian package's unit; the fetch script's default
DROPIN_PATH = "/etc/systemd/system/docker-registry.service.d/10-registry-fleet.conf"
ENV_DIR = "/run/registry-fleet"  # tmpfs: the HTTP secret never reaches a disk
ENV_FILE = f"{ENV_DIR}/registry.env"
USER_DATA_LIMIT_BYTES = 16384  # EC2: user data is limited to 16 KB, in raw form, before base64 encoding
# What EC2 receives is the gzip of the text (cloud-init unpacks gzip itself): about 40% of its size,
# which leaves room for a second token signing certificate during a rotation and a directory CA.
ARCHITECTURES = ("arm64", "amd64")  # Debian architecture names, as in the SSM agent's download path

# The token service on a host (token mode): its files, its code, its port.
TOKEN_SERVICE_PORT = 5002  # HTTPS; the ALB's token target group
TOKEN_PATH = "/auth"  # the realm's path on the registry's public URL (an ALB listener rule)
TOKEN_HEALTH_PATH = "/healthz"
TOKEN_USER = "registry-token"
TOKEN_CONFIG_FILE = "/etc/registry-token/config.json"  # secret: hashes, directory password
TOKEN_SIGNING_KEY_FILE = "/etc/registry-token/signing.key"  # secret
TOKEN_TLS_KEY_FILE = "/etc/registry-token/tls.key"  # secret: the host key, the service's own copy
# Public. The service's signing_cert: the current generation's certificate only (auth/tokens.py wants
# the signing key's own certificate first; it goes into each token's x5c).
TOKEN_SIGNING_CERT_FILE = "/etc/registry-fleet/token-signing.crt"
# Public. The registry's rootcertbundle: every live generation's certificate, so during a rotation a
# host accepts tokens signed by any host of the fleet, whichever generation it signs with.
TOKEN_TRUST_BUNDLE_FILE = "/etc/registry-fleet/token-trust.crt"
TOKEN_LDAP_CA_FILE = "/etc/registry-fleet/ldap-ca.crt"  # public: the directory's CA, when the stack gives one
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's; the directory's CA when the stack gives none
TOKEN_SERVICE_DIR = "/opt/registry-fleet/token-service"  # releases/<sha256>/{app,venv}; current -> the running one
TOKEN_UNIT = "registry-token"
TOKEN_UNIT_PATH = f"/etc/systemd/system/{TOKEN_UNIT}.service"
TOKEN_INSTALL_SCRIPT_PATH = "/usr/local/sbin/registry-fleet-install-token-service"
TOKEN_RELEASE_MARKER = ".installed"  # in releases/<sha256>/: the release is complete

_REGION = re.compile(r"^[a-z0-9-]+$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")
_MODE = re.compile(r"^0?[0-7]{3}$")
_OWNER = re.compile(r"^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!_.*'()/-]{0,1023}$")
_INDEX_URL = re.compile(r"^https://[^\s/@]+(/\S*)?$")  # no credentials: user-data is readable
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----")
_PEM_CERTS = re.compile(rf"({_PEM_BLOCK.pattern}\s*)+")


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
    # -> TOKEN_TRUST_BUNDLE_FILE: every live signing generation's certificate; it must hold the signing
    # certificate. None: the signing certificate alone (no rotation under way).
    trust_bundle_pem: str | None = None


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


def token_secret_files(token: TokenServiceBoot) -> tuple[SecretFile, ...]:
    """The token service's secrets: readable by its group only, owned by root so it cannot change them."""
    owner = f"root:{TOKEN_USER}"
    return (
        SecretFile(token.config_secret_arn, TOKEN_CONFIG_FILE, "0640", owner),
        SecretFile(token.signing_key_secret_arn, TOKEN_SIGNING_KEY_FILE, "0640", owner),
        SecretFile(token.tls_key_secret_arn, TOKEN_TLS_KEY_FILE, "0640", owner),
    )


def token_trust_bundle(token: TokenServiceBoot) -> str:
    """The certificates the registry trusts tokens from: the bundle, or the signing certificate alone."""
    return token.signing_cert_pem if token.trust_bundle_pem is None else token.trust_bundle_pem


def token_public_files(token: TokenServiceBoot) -> tuple[tuple[str, str], ...]:
    """(path, content) of the token service's public files: the signing certificate, the registry's
    trust bundle, the directory's CA."""
    files = [(TOKEN_SIGNING_CERT_FILE, token.signing_cert_pem), (TOKEN_TRUST_BUNDLE_FILE, token_trust_bundle(token))]
    if token.ldap_ca_pem is not None:
        files.append((TOKEN_LDAP_CA_FILE, token.ldap_ca_pem))
    return tuple(files)


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
    if boot.token_service is not None:
        _validate_token_service(boot.token_service, [path for path, _ in boot.public_files])
        paths += [TOKEN_INSTALL_SCRIPT_PATH, TOKEN_UNIT_PATH]
        paths += [f.path for f in token_secret_files(boot.token_service)]
        paths += [path for path, _ in token_public_files(boot.token_service)]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise ValueError(
            f"HostBoot writes these paths more than once: {', '.join(duplicates)}. Give each file one source."
        )


def _validate_token_service(token: TokenServiceBoot, public_paths: list[str]) -> None:
    """The token service's fields: names and hashes that go into shell scripts, ARNs, public PEMs."""
    field = "HostBoot.token_service"
    if not _SHA256.match(token.artifact_sha256):
        raise ValueError(
            f"{field}.artifact_sha256 must be 64 lowercase hex digits (components.artifact.Artifact.sha256); "
            f"got {token.artifact_sha256!r}."
        )
    if not _BUCKET.match(token.artifact_bucket) or ".." in token.artifact_bucket:
        raise ValueError(
            f"{field}.artifact_bucket must be an S3 bucket name (3-63 of a-z 0-9 . -, starting and ending with a "
            f"letter or digit); got {token.artifact_bucket!r}."
        )
    if not _KEY.match(token.artifact_key) or ".." in token.artifact_key:
        raise ValueError(
            f"{field}.artifact_key must be an S3 object key of A-Z a-z 0-9 and !_.*'()/- that starts with a letter "
            f"or digit and holds no '..' (components.artifact.Artifact.key); got {token.artifact_key!r}."
        )
    for name in ("config_secret_arn", "signing_key_secret_arn", "tls_key_secret_arn"):
        arn: str = getattr(token, name)
        if not _SECRET_ARN.match(arn):
            raise ValueError(
                f"{field}.{name} must be a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:"
                f"NAME); got a value of {len(arn)} characters that is not one. Pass the ARN, never the secret itself."
            )
    if not _INDEX_URL.match(token.pip_index_url):
        # Not echoed: a URL with credentials in it is a secret, and user-data is readable.
        raise ValueError(
            f"{field}.pip_index_url must be an https:// URL without credentials (e.g. https://pypi.org/simple); "
            f"got a value of {len(token.pip_index_url)} characters that is not one."
        )
    if isinstance(token.port, bool) or not isinstance(token.port, int) or not 1 <= token.port <= 65535:
        raise ValueError(f"{field}.port must be an integer in 1..65535; got {token.port!r}.")
    if not _PATH.match(token.tls_cert_file) or token.tls_cert_file not in public_paths:
        raise ValueError(
            f"{field}.tls_cert_file must be the absolute path of one of HostBoot.public_files (the host "
            f"certificate); got {token.tls_cert_file!r}."
        )
    pems = (
        ("signing_cert_pem", token.signing_cert_pem),
        ("trust_bundle_pem", token.trust_bundle_pem),
        ("ldap_ca_pem", token.ldap_ca_pem),
    )
    for name, pem in pems:
        if pem is not None and ("PRIVATE KEY" in pem or not _PEM_CERTS.fullmatch(pem.strip() + "\n")):
            raise ValueError(
                f"{field}.{name} must hold only PEM certificates (-----BEGIN CERTIFICATE-----), never a private key: "
                f"user-data is readable by anyone who can describe the instance."
            )
    # The signing certificates are self-signed: the registry trusts exactly the certificates in the bundle.
    if _pem_blocks(token.signing_cert_pem)[0] not in _pem_blocks(token_trust_bundle(token)):
        raise ValueError(
            f"{field}.trust_bundle_pem must hold the signing certificate (signing_cert_pem): otherwise the registry "
            f"on the host refuses every token its own service signs."
        )


def _pem_blocks(pem: str) -> list[str]:
    """The certificates of a PEM text, each with LF line ends, for comparison."""
    return [m.group(0).replace("\r\n", "\n") for m in _PEM_BLOCK.finditer(pem)]


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


# The fetch script, compact (user-data holds at most 16 KB), one for every unit: `SCRIPT [UNIT]` writes
# that unit's secrets. It runs as root before each start of the unit (ExecStartPre=+) and never prints
# a secret: no tracing; values go only to files and shell builtins (printf: the HTTP secret is in no
# argv). write_secret ARN PATH MODE OWNER GROUP fetches into a temp file beside PATH, sets owner and
# mode, then renames it over PATH, so the service never reads a half-written or wrongly owned file.
# write_http_secret ARN writes REGISTRY_HTTP_SECRET for the registry's EnvironmentFile (root only, on
# tmpfs), refusing characters an EnvironmentFile would mangle.
_FETCH_SCRIPT_HEAD = r"""#!/bin/bash
# registry-fleet: write a unit's secrets (default __DEFAULT__); rendered by components/host_boot.py.
set -euo pipefail
umask 077
REGION=__REGION__
tmp=""
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT
fail() { echo "__NAME__: $*" >&2; exit 1; }
fetch() {
  aws --region "$REGION" secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text
}
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
"""

_FETCH_SCRIPT_HTTP_SECRET = r"""
write_http_secret() {
  local secret
  install -d -m 0700 -o root -g root __ENV_DIR__
  secret=$(fetch "$1")
  if [ -z "$secret" ] || [ "$secret" = None ]; then fail "secret $1 has no SecretString"; fi
  case "$secret" in
    *[!A-Za-z0-9+/=_.-]*) fail "secret $1 must hold only [A-Za-z0-9+/=_.-] to be safe in an EnvironmentFile" ;;
  esac
  tmp=$(mktemp __ENV_DIR__/.registry.env.XXXXXX)
  printf 'REGISTRY_HTTP_SECRET=%s\n' "$secret" >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" __ENV_FILE__
  tmp=""
}
"""


@dataclass(frozen=True)
class FetchSet:
    """The secrets one unit's ExecStartPre=+ writes: files, and for the registry its HTTP secret."""

    unit: str
    secret_files: tuple[SecretFile, ...]
    http_secret_arn: str | None = None  # -> REGISTRY_HTTP_SECRET in ENV_FILE


def render_fetch_script(region: str, sets: Sequence[FetchSet]) -> str:
    """The bash script at FETCH_SCRIPT_PATH: `registry-fleet-fetch-secrets [UNIT]` writes UNIT's set
    (default: the first set's unit) from Secrets Manager. One script for all units, so user-data
    carries its functions once. Values must already be validated (validate_host_boot)."""
    if not sets:
        raise ValueError("render_fetch_script needs at least one unit's set of secrets.")
    head = (
        _FETCH_SCRIPT_HEAD.replace("__DEFAULT__", sets[0].unit)
        .replace("__NAME__", FETCH_SCRIPT_PATH.rsplit("/", 1)[-1])
        .replace("__REGION__", shlex.quote(region))
    )
    if any(s.http_secret_arn is not None for s in sets):
        head += (
            _FETCH_SCRIPT_HTTP_SECRET.removeprefix("\n")
            .replace("__ENV_DIR__", shlex.quote(ENV_DIR))
            .replace("__ENV_FILE__", shlex.quote(ENV_FILE))
        )
    lines = [f"case ${{1:-{sets[0].unit}}} in"]
    for fetch_set in sets:
        lines.append(f"{fetch_set.unit})")
        if fetch_set.http_secret_arn is not None:
            lines.append(f"write_http_secret {shlex.quote(fetch_set.http_secret_arn)}")
        for f in fetch_set.secret_files:
            user, group = f.owner.split(":")
            args = (f.secret_arn, f.path, f.mode, user, group)
            lines.append("write_secret " + " ".join(shlex.quote(a) for a in args))
        lines.append(";;")
    lines += ['*) fail "no secrets for unit $1" ;;', "esac"]
    return head + "\n".join(lines) + "\n"


def render_fetch_secrets_script(boot: HostBoot) -> str:
    """Return the bash script installed at FETCH_SCRIPT_PATH. It holds ARNs and paths, never a secret."""
    validate_host_boot(boot)
    sets = [FetchSet(REGISTRY_UNIT, boot.secret_files, boot.http_secret_arn)]
    if boot.token_service is not None:
        sets.append(FetchSet(TOKEN_UNIT, token_secret_files(boot.token_service)))
    return render_fetch_script(boot.region, sets)


def _token_service(boot: HostBoot) -> TokenServiceBoot:
    validate_host_boot(boot)
    if boot.token_service is None:
        raise ValueError("HostBoot.token_service is None: the token service's files exist in token mode only.")
    return boot.token_service


# The sandbox both services run in (systemd.exec(5)). The registry adds ReadWritePaths (its state)
# and MemoryDenyWriteExecute; the token service cannot have the latter (see render_token_service_unit).
_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
CapabilityBoundingSet=
LockPersonality=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
"""


def render_systemd_dropin(boot: HostBoot) -> str:
    """Return the drop-in for the Debian `docker-registry.service` unit (installed at DROPIN_PATH).

    Compact, like every file in user-data; why each line is there:
    - StartLimitIntervalSec=0: keep retrying (e.g. while Secrets Manager is unreachable); the default
      start limit gives up for good after 5 starts in 10 s, and the load balancer's health check
      replaces a host that never recovers.
    - ExecStartPre=+: the fetch script runs as root and outside the sandbox (User=, ProtectSystem= and
      the namespacing options do not apply to it), so it can write secrets under /etc and ENV_DIR.
    - EnvironmentFile=-: systemd reads the file before every command, ExecStartPre included, and on
      first boot it does not exist until the fetch script has written it; ExecStart runs only if that
      script succeeded.
    - UnsetEnvironment=AWS_CA_BUNDLE: the registry panics at start when it is set.
    """
    validate_host_boot(boot)
    return f"""\
# registry-fleet: rendered by components/host_boot.py.
[Unit]
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStartPre=+{FETCH_SCRIPT_PATH}
EnvironmentFile=-{ENV_FILE}
UnsetEnvironment=AWS_CA_BUNDLE
Restart=always
RestartSec=2
{_HARDENING}ReadWritePaths={STATE_DIR}
MemoryDenyWriteExecute=yes
"""


# The install script, compact (user-data holds at most 16 KB). Its design:
# - the artifact always comes through the AWS CLI (the registry bucket, through the VPC's S3 gateway
#   endpoint) and its SHA-256, carried in user-data, is checked before anything is unpacked; `--prefix`
#   (for tests: a temporary directory) changes where it installs, never how it verifies;
# - releases/<sha256>/{app,venv} is complete once the marker exists: a complete release is not installed
#   again; on any failure the trap removes the partial release, so a rerun starts clean;
# - `current` is switched by renaming a new symlink over it (atomic); a running service keeps its files;
# - umask 022: root owns the code, the service user only reads it.
# Hosts are replaced when the artifact changes (its SHA-256 is in user-data), so nothing prunes old releases.
_TOKEN_INSTALL_SCRIPT = r"""#!/bin/bash
# registry-fleet: install the token service (components/host_boot.py). Usage: __NAME__ [--prefix DIR]
set -euo pipefail
umask 022
REGION=__REGION__ BUCKET=__BUCKET__ KEY=__KEY__ SHA256=__SHA256__ INDEX=__INDEX__
P=__PREFIX__
fail() { echo "__NAME__: $*" >&2; exit 1; }
if [ $# = 2 ] && [ "$1" = --prefix ]; then P=$2; elif [ $# != 0 ]; then fail "usage: $0 [--prefix DIR]"; fi
case $P in /*) ;; *) fail "--prefix must be an absolute path" ;; esac
getent group __USER__ >/dev/null || groupadd --system __USER__
getent passwd __USER__ >/dev/null || useradd --system -g __USER__ -M -d /nonexistent -s /usr/sbin/nologin __USER__
r=$P/releases/$SHA256 t=""
trap '[ -z "$t" ] || rm -f "$t"; [ -e "$r/__MARKER__" ] || rm -rf "$r"' EXIT
if [ ! -e "$r/__MARKER__" ]; then
  install -d -m 0755 "$P/releases"
  rm -rf "$r"
  t=$(mktemp "$P/.artifact.XXXXXX")
  aws --region "$REGION" s3api get-object --bucket "$BUCKET" --key "$KEY" "$t" >/dev/null
  h=$(sha256sum "$t") h=${h%% *}
  [ "$h" = "$SHA256" ] || fail "s3://$BUCKET/$KEY has SHA-256 $h, expected $SHA256: not installed"
  mkdir -p "$r/app"
  tar -xzf "$t" -C "$r/app" --no-same-owner
  python3 -m venv "$r/venv"
  "$r/venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir --require-hashes --only-binary=:all: \
    --no-deps --index-url "$INDEX" -r "$r/app/auth/requirements.lock"
  PYTHONPATH=$r/app "$r/venv/bin/python" -c 'import auth.serve'
  touch "$r/__MARKER__"
fi
ln -sfn "releases/$SHA256" "$P/.current.new"
mv -T "$P/.current.new" "$P/current"
"""


def render_token_install_script(boot: HostBoot) -> str:
    """Return the token service's install script (TOKEN_INSTALL_SCRIPT_PATH); see the notes above its template."""
    token = _token_service(boot)
    values = {
        "__NAME__": TOKEN_INSTALL_SCRIPT_PATH.rsplit("/", 1)[-1],
        "__PREFIX__": shlex.quote(TOKEN_SERVICE_DIR),
        "__REGION__": shlex.quote(boot.region),
        "__BUCKET__": shlex.quote(token.artifact_bucket),
        "__KEY__": shlex.quote(token.artifact_key),
        "__SHA256__": shlex.quote(token.artifact_sha256),
        "__INDEX__": shlex.quote(token.pip_index_url),
        "__USER__": TOKEN_USER,
        "__MARKER__": TOKEN_RELEASE_MARKER,
    }
    return re.sub(r"__[A-Z0-9]+__", lambda m: values[m.group(0)], _TOKEN_INSTALL_SCRIPT)


def token_service_exec_start(port: int, tls_cert_file: str) -> str:
    """The unit's command line: `python -m auth` (auth/serve.py) from the current release's venv."""
    return (
        f"{TOKEN_SERVICE_DIR}/current/venv/bin/python -m auth --config {TOKEN_CONFIG_FILE} --bind 0.0.0.0:{port} "
        f"--certfile {tls_cert_file} --keyfile {TOKEN_TLS_KEY_FILE}"
    )


def render_token_service_unit(boot: HostBoot) -> str:
    """Return the token service's systemd unit (TOKEN_UNIT_PATH).

    Like the registry's drop-in: retries forever (StartLimitIntervalSec=0), fetches its secrets as
    root outside the sandbox (ExecStartPre=+), the same hardening. The install script runs first,
    also as root: a no-op once the release is installed, and at first boot a failed download or pip
    install (S3 or the index unreachable) is retried with every restart instead of leaving the host
    without a token service until the load balancer's health check replaces it. `reload` fetches the secrets again,
    then SIGHUP makes the service re-read its config, keeping the running one if the new one is
    invalid (auth/serve.py). MemoryDenyWriteExecute stays off: cffi (under cryptography) makes
    writable and executable memory for its callbacks, and a refusal would kill the service with
    SIGSYS at run time, not at start.
    """
    token = _token_service(boot)
    return f"""\
# registry-fleet: the token service (auth/serve.py); rendered by components/host_boot.py.
[Unit]
Description=registry-fleet token service
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
User={TOKEN_USER}
Group={TOKEN_USER}
ExecStartPre=+{TOKEN_INSTALL_SCRIPT_PATH}
ExecStartPre=+{FETCH_SCRIPT_PATH} {TOKEN_UNIT}
Environment=PYTHONPATH={TOKEN_SERVICE_DIR}/current/app
ExecStart={token_service_exec_start(token.port, token.tls_cert_file)}
ExecReload=+{FETCH_SCRIPT_PATH} {TOKEN_UNIT}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2
{_HARDENING}# No MemoryDenyWriteExecute: cffi (under cryptography) needs writable+executable memory for callbacks.

[Install]
WantedBy=multi-user.target
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


def compress_user_data(text: str) -> bytes:
    """The bytes EC2 gets: gzip without a timestamp, so the same text always gives the same bytes
    (a changed byte would be a new launch template version and roll the fleet)."""
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def encode_user_data(text: str) -> str:
    """The launch template's `user_data`: base64 of the gzipped cloud-config."""
    return base64.b64encode(compress_user_data(text)).decode()


def decode_user_data(encoded: str) -> str:
    """The cloud-config text of a launch template's `user_data` (gzipped or not), e.g. for checks."""
    raw = base64.b64decode(encoded, validate=True)
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")


def render_cloud_init(boot: HostBoot) -> str:
    """Return the `#cloud-config` user-data text. Raises ValueError when its gzip (what EC2 receives,
    see `encode_user_data`) exceeds EC2's 16 KB user-data limit."""
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
    packages = ["docker-registry", "awscli", "ca-certificates", "curl"]
    token_steps: list[list[str]] = []
    if boot.token_service is not None:
        # The signing certificate (the service's) and the trust bundle (the registry's rootcertbundle).
        write_files += [_file(path, content, "0644") for path, content in token_public_files(boot.token_service)]
        write_files += [
            _file(TOKEN_INSTALL_SCRIPT_PATH, render_token_install_script(boot), "0700"),
            _file(TOKEN_UNIT_PATH, render_token_service_unit(boot), "0644"),
        ]
        packages.append("python3-venv")
        token_steps = [  # the unit's ExecStartPre installs the service (see render_token_service_unit)
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", TOKEN_UNIT],
        ]
    cloud_config = {
        # Host egress allows only 443: fetch packages over HTTPS.
        "apt": {
            "primary": [{"arches": ["default"], "uri": "https://deb.debian.org/debian"}],
            "security": [{"arches": ["default"], "uri": "https://deb.debian.org/debian-security"}],
        },
        "package_update": True,
        "packages": packages,
        "write_files": write_files,
        "runcmd": [
            ["sh", "-c", ssm_install],
            ["systemctl", "enable", "--now", "amazon-ssm-agent"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "docker-registry"],
            # The package started the registry with its default config before our files existed.
            ["systemctl", "restart", "docker-registry"],
            *token_steps,
        ],
    }
    text = "#cloud-config\n" + yaml.dump(cloud_config, Dumper=_BlockStyleDumper, sort_keys=False, width=1000)
    size = len(compress_user_data(text))
    if size > USER_DATA_LIMIT_BYTES:
        raise ValueError(
            f"The cloud-init user-data is {size} bytes gzipped; EC2 allows {USER_DATA_LIMIT_BYTES} (16 KB before "
            "base64). Shrink HostBoot.public_files (e.g. ship large certificates through Secrets Manager or S3)."
        )
    return text
