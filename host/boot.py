"""How a registry host boots: its files and the cloud-init user-data that writes them.

`render_host(HostBoot)` validates the boot spec once (`validate_host_boot`), then renders every file a
host gets from user-data (the registry's config.yml and public certificates, the secrets fetch script,
the registry's systemd drop-in; in token mode the token service's certificates, install script and
unit) and the `#cloud-config` text. The scripts and units are templates in `host/files/`, filled by
`host.template.render_file`; their paths, users and unit names come from `host.contract`.

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
In token mode `runcmd` then creates the token service's account (`systemd-sysusers` with the file
user-data wrote: systemd resolves `User=` before it runs any command of a unit, so the account must
exist before the unit starts) and starts its unit `registry-token`, whose `ExecStartPre=+` installs
the token service (its artifact from S3, checked against the SHA-256 in user-data, into a venv from
the hash-pinned lock) and runs the same fetch script for its own secrets (config, signing key, TLS key).
On a stack that protects a namespace `runcmd` then does the same for the signature gate (`registry-gate`:
its own account, the same release, its own copy of the host key, a public config with the stack's public
signing key).

User-data holds at most 16 KB: the rendered scripts and units are compact (their explanations live
here, in the docstrings of their renderers, not in the files), and the fetch script carries its
functions once for both units.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from host.contract import (
    ARCHITECTURES,
    CONFIG_PATH,
    DROPIN_PATH,
    ENV_DIR,
    ENV_FILE,
    FETCH_SCRIPT_PATH,
    GATE_CONFIG_FILE,
    GATE_PORT,
    GATE_SYSUSERS_PATH,
    GATE_TLS_KEY_FILE,
    GATE_UNIT,
    GATE_UNIT_PATH,
    GATE_USER,
    LOG_REDACT_SCRIPT_PATH,
    REGISTRY_GROUP,
    REGISTRY_PACKAGES,
    REGISTRY_TRUST_CA_FILE,
    REGISTRY_TRUST_DIR,
    REGISTRY_UNIT,
    SCAN_EVENTS_CONFIG_FILE,
    SCAN_EVENTS_DROPIN_PATH,
    SCAN_EVENTS_SYSUSERS_PATH,
    SCAN_EVENTS_TLS_KEY_FILE,
    SCAN_EVENTS_TOKEN_FILE,
    SCAN_EVENTS_UNIT,
    SCAN_EVENTS_UNIT_PATH,
    SCAN_EVENTS_USER,
    SSM_AGENT_UNIT,
    STATE_DIR,
    SYSTEM_CERT_DIR,
    TOKEN_CONFIG_FILE,
    TOKEN_INSTALL_SCRIPT_PATH,
    TOKEN_LDAP_CA_FILE,
    TOKEN_RELEASE_MARKER,
    TOKEN_SERVICE_DIR,
    TOKEN_SERVICE_PACKAGES,
    TOKEN_SERVICE_PORT,
    TOKEN_SIGNING_CERT_FILE,
    TOKEN_SIGNING_KEY_FILE,
    TOKEN_SYSUSERS_PATH,
    TOKEN_TLS_KEY_FILE,
    TOKEN_TRUST_BUNDLE_FILE,
    TOKEN_UNIT,
    TOKEN_UNIT_PATH,
    TOKEN_USER,
)
from host.registry_config import NOTIFICATION_ENDPOINTS_ENV
from host.template import render_file
from host.user_data import USER_DATA_LIMIT_BYTES, compress_user_data

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
    owner: str = f"root:{REGISTRY_GROUP}"


@dataclass(frozen=True)
class TokenServiceBoot:
    """The token service beside the registry (token mode). ARNs, public text and a hash: no secret."""

    artifact_bucket: str  # the registry bucket (read through the VPC's S3 gateway endpoint)
    artifact_key: str  # host.artifact.Artifact.key
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
class GateBoot:
    """The signature gate beside the token service (token mode, a stack that protects a namespace). It runs
    from the token service's release; its config is public text, its one secret the host key (an ARN)."""

    config_yaml: str  # host.gate_config.render_gate_config -> GATE_CONFIG_FILE (public: a public key, names)
    tls_key_secret_arn: str  # -> GATE_TLS_KEY_FILE (the host key)
    tls_cert_file: str  # the host certificate, already among HostBoot.public_files
    port: int = GATE_PORT


@dataclass(frozen=True)
class ScanEventsBoot:
    """The scan events forwarder beside the token service (token mode, issue 14). It runs from the token
    service's release; its config is public text; its secrets are the bearer token the registry sends (an ARN,
    also read into the registry's environment) and the host key (an ARN)."""

    config_yaml: str  # host.scan_config.render_events_config -> SCAN_EVENTS_CONFIG_FILE (public: a queue URL)
    token_secret_arn: str  # -> SCAN_EVENTS_TOKEN_FILE, and the registry's notification header
    tls_key_secret_arn: str  # -> SCAN_EVENTS_TLS_KEY_FILE (the host key)
    tls_cert_file: str  # the host certificate, already among HostBoot.public_files
    ca_cert_pem: str  # the internal CA (public): the registry trusts the forwarder's certificate through it
    # The registry's `notifications.endpoints` with the bearer as BEARER_MARK (host.registry_config
    # .notification_endpoints_env): the fetch script puts the token in and writes it to the registry's environment.
    endpoints_template: str = ""


BEARER_MARK = "@BEARER@"  # where the fetch script puts the scan events token (host/files/fetch-secrets.sh)


@dataclass(frozen=True)
class HostBoot:
    """Everything a registry host needs at boot. Only ARNs and public text: no secret value fits in."""

    region: str
    registry_config_yaml: str  # output of host.registry_config.render_registry_config
    http_secret_arn: str  # -> REGISTRY_HTTP_SECRET in /run/registry-fleet/registry.env (0600 root)
    secret_files: tuple[SecretFile, ...]  # TLS host key, htpasswd, CloudFront private key...
    public_files: tuple[tuple[str, str], ...] = ()  # (path, content) of non-secret files, e.g. certificates
    architecture: str = "arm64"  # "arm64" | "amd64" (Debian arch; for the SSM agent .deb)
    token_service: TokenServiceBoot | None = None  # token mode: the token service runs beside the registry
    gate: GateBoot | None = None  # token mode with a protected namespace: the gate runs from the same release
    scan_events: ScanEventsBoot | None = None  # token mode: the scan events forwarder runs from the same release


def token_secret_files(token: TokenServiceBoot) -> tuple[SecretFile, ...]:
    """The token service's secrets: readable by its group only, owned by root so it cannot change them."""
    owner = f"root:{TOKEN_USER}"
    return (
        SecretFile(token.config_secret_arn, TOKEN_CONFIG_FILE, "0640", owner),
        SecretFile(token.signing_key_secret_arn, TOKEN_SIGNING_KEY_FILE, "0640", owner),
        SecretFile(token.tls_key_secret_arn, TOKEN_TLS_KEY_FILE, "0640", owner),
    )


def gate_secret_files(gate: GateBoot) -> tuple[SecretFile, ...]:
    """The gate's one secret, the host key for its TLS: readable by its group only, owned by root."""
    return (SecretFile(gate.tls_key_secret_arn, GATE_TLS_KEY_FILE, "0640", f"root:{GATE_USER}"),)


def scan_events_secret_files(events: ScanEventsBoot) -> tuple[SecretFile, ...]:
    """The forwarder's secrets, the bearer it checks and the host key for its TLS: its group only, root-owned."""
    owner = f"root:{SCAN_EVENTS_USER}"
    return (
        SecretFile(events.token_secret_arn, SCAN_EVENTS_TOKEN_FILE, "0640", owner),
        SecretFile(events.tls_key_secret_arn, SCAN_EVENTS_TLS_KEY_FILE, "0640", owner),
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
        paths += [TOKEN_INSTALL_SCRIPT_PATH, TOKEN_UNIT_PATH, TOKEN_SYSUSERS_PATH]
        paths += [f.path for f in token_secret_files(boot.token_service)]
        paths += [path for path, _ in token_public_files(boot.token_service)]
    if boot.gate is not None:
        if boot.token_service is None:
            raise ValueError(
                "HostBoot.gate is set without HostBoot.token_service: the gate runs from the token service's release "
                "(token mode only)."
            )
        _validate_gate(boot.gate, [path for path, _ in boot.public_files])
        paths += [GATE_CONFIG_FILE, GATE_SYSUSERS_PATH, GATE_UNIT_PATH]
        paths += [f.path for f in gate_secret_files(boot.gate)]
    if boot.scan_events is not None:
        if boot.token_service is None:
            raise ValueError(
                "HostBoot.scan_events is set without HostBoot.token_service: the forwarder runs from the token "
                "service's release (token mode only)."
            )
        _validate_scan_events(boot.scan_events, [path for path, _ in boot.public_files])
        paths += [SCAN_EVENTS_CONFIG_FILE, SCAN_EVENTS_SYSUSERS_PATH, SCAN_EVENTS_UNIT_PATH]
        paths += [SCAN_EVENTS_DROPIN_PATH, LOG_REDACT_SCRIPT_PATH, REGISTRY_TRUST_CA_FILE]
        paths += [f.path for f in scan_events_secret_files(boot.scan_events)]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise ValueError(
            f"HostBoot writes these paths more than once: {', '.join(duplicates)}. Give each file one source."
        )


def _check_service(
    field: str,
    service: TokenServiceBoot | GateBoot | ScanEventsBoot,
    arn_fields: Sequence[str],
    public_paths: list[str],
) -> None:
    """What every service on a host shares: its secrets' ARNs, its port, the host certificate's path."""
    for name in arn_fields:
        arn: str = getattr(service, name)
        if not _SECRET_ARN.match(arn):
            raise ValueError(
                f"{field}.{name} must be a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:"
                f"NAME); got a value of {len(arn)} characters that is not one. Pass the ARN, never the secret itself."
            )
    port = getattr(service, "port", 1)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{field}.port must be an integer in 1..65535; got {port!r}.")
    if not _PATH.match(service.tls_cert_file) or service.tls_cert_file not in public_paths:
        raise ValueError(
            f"{field}.tls_cert_file must be the absolute path of one of HostBoot.public_files (the host "
            f"certificate); got {service.tls_cert_file!r}."
        )


def _validate_token_service(token: TokenServiceBoot, public_paths: list[str]) -> None:
    """The token service's fields: names and hashes that go into shell scripts, ARNs, public PEMs."""
    field = "HostBoot.token_service"
    if not _SHA256.match(token.artifact_sha256):
        raise ValueError(
            f"{field}.artifact_sha256 must be 64 lowercase hex digits (host.artifact.Artifact.sha256); "
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
            f"or digit and holds no '..' (host.artifact.Artifact.key); got {token.artifact_key!r}."
        )
    _check_service(field, token, ("config_secret_arn", "signing_key_secret_arn", "tls_key_secret_arn"), public_paths)
    if not _INDEX_URL.match(token.pip_index_url):
        # Not echoed: a URL with credentials in it is a secret, and user-data is readable.
        raise ValueError(
            f"{field}.pip_index_url must be an https:// URL without credentials (e.g. https://pypi.org/simple); "
            f"got a value of {len(token.pip_index_url)} characters that is not one."
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


def _validate_gate(gate: GateBoot, public_paths: list[str]) -> None:
    """The gate's fields: an ARN, a port, the host certificate's path, a config that holds no private key."""
    field = "HostBoot.gate"
    _check_service(field, gate, ("tls_key_secret_arn",), public_paths)
    if "PRIVATE KEY" in gate.config_yaml:
        raise ValueError(
            f"{field}.config_yaml holds a private key: user-data is readable; the gate needs a public key."
        )
    loaded = yaml.safe_load(gate.config_yaml)
    if not isinstance(loaded, dict) or not loaded.get("namespaces") or not loaded.get("public_keys"):
        raise ValueError(f"{field}.config_yaml must be the text host.gate_config.render_gate_config returns.")


def _validate_scan_events(events: ScanEventsBoot, public_paths: list[str]) -> None:
    """The forwarder's fields: ARNs, the host certificate's path, a public config, the endpoints' template."""
    field = "HostBoot.scan_events"
    _check_service(field, events, ("token_secret_arn", "tls_key_secret_arn"), public_paths)
    loaded = yaml.safe_load(events.config_yaml)
    if not isinstance(loaded, dict) or not loaded.get("queue_url") or "PRIVATE KEY" in events.config_yaml:
        raise ValueError(f"{field}.config_yaml must be the text host.scan_config.render_events_config returns.")
    if "PRIVATE KEY" in events.ca_cert_pem or not _PEM_CERTS.fullmatch(events.ca_cert_pem.strip() + "\n"):
        raise ValueError(f"{field}.ca_cert_pem must hold only PEM certificates (the internal CA), never a key.")
    template = events.endpoints_template
    if (
        template.count(BEARER_MARK) < 1
        or "'" in template
        or "\n" in template
        or "Bearer " + BEARER_MARK not in template
    ):
        raise ValueError(
            f"{field}.endpoints_template must be the registry's notification endpoints with the bearer as "
            f"{BEARER_MARK} (host.registry_config.notification_endpoints_env), on one line without a single quote."
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


@dataclass(frozen=True)
class FetchSet:
    """The secrets one unit's ExecStartPre=+ writes: files, and for the registry its HTTP secret."""

    unit: str
    secret_files: tuple[SecretFile, ...]
    http_secret_arn: str | None = None  # -> REGISTRY_HTTP_SECRET in ENV_FILE
    # (token ARN, endpoints template): the registry's notification endpoints in ENV_FILE, the token put in.
    notifications: tuple[str, str] | None = None


def render_fetch_script(region: str, sets: Sequence[FetchSet]) -> str:
    """The bash script at FETCH_SCRIPT_PATH (host/files/fetch-secrets.sh): `registry-fleet-fetch-secrets
    [UNIT]` writes UNIT's set (default: the first set's unit) from Secrets Manager. One script for all
    units, so user-data carries its functions once; a `case`, one branch per unit, follows them.

    It runs as root before each start of the unit (ExecStartPre=+) and never prints a secret: no
    tracing; values go only to files and shell builtins (printf: the HTTP secret is in no argv).
    write_secret ARN PATH MODE OWNER GROUP fetches into a temp file beside PATH, sets owner and mode,
    then renames it over PATH, so the service never reads a half-written or wrongly owned file.
    write_http_secret ARN writes REGISTRY_HTTP_SECRET for the registry's EnvironmentFile (root only, on
    tmpfs), refusing characters an EnvironmentFile would mangle; only a set with an http_secret_arn calls
    it (every host's registry set has one). Values must already be validated
    (validate_host_boot): the region, ARNs and paths are shell-quoted here, never checked.
    """
    if not sets:
        raise ValueError("render_fetch_script needs at least one unit's set of secrets.")
    functions = render_file(
        "fetch-secrets.sh",
        DEFAULT_UNIT=sets[0].unit,
        SCRIPT_NAME=_name(FETCH_SCRIPT_PATH),
        REGION_NAME=shlex.quote(region),
        ENV_DIR=shlex.quote(ENV_DIR),
        ENV_FILE=shlex.quote(ENV_FILE),
    )
    lines = [f"case ${{1:-{sets[0].unit}}} in"]
    for fetch_set in sets:
        lines.append(f"{fetch_set.unit})")
        if fetch_set.http_secret_arn is not None:
            lines.append(f"write_http_secret {shlex.quote(fetch_set.http_secret_arn)}")
        if fetch_set.notifications is not None:
            arn, template = fetch_set.notifications
            notify = (arn, NOTIFICATION_ENDPOINTS_ENV, template)
            lines.append("write_notifications " + " ".join(shlex.quote(a) for a in notify))
        for f in fetch_set.secret_files:
            user, group = f.owner.split(":")
            args = (f.secret_arn, f.path, f.mode, user, group)
            lines.append("write_secret " + " ".join(shlex.quote(a) for a in args))
        lines.append(";;")
    lines += ['*) fail "no secrets for unit $1" ;;', "esac"]
    return functions + "\n".join(lines) + "\n"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _sandbox() -> str:
    """The sandbox both services run in (host/files/sandbox.conf, systemd.exec(5)). The registry adds
    ReadWritePaths (its state) and MemoryDenyWriteExecute; the token service cannot have the latter
    (see _token_unit)."""
    return render_file("sandbox.conf").removesuffix("\n")


def _registry_dropin() -> str:
    """The drop-in for the Debian `docker-registry.service` unit (host/files/docker-registry-dropin.conf,
    installed at DROPIN_PATH).

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
    return render_file(
        "docker-registry-dropin.conf",
        FETCH_SCRIPT=FETCH_SCRIPT_PATH,
        ENV_FILE=ENV_FILE,
        SANDBOX=_sandbox(),
        STATE_DIR=STATE_DIR,
    )


def _token_install_script(region: str, token: TokenServiceBoot, gate: bool = False, scan_events: bool = False) -> str:
    """The token service's install script (host/files/install-token-service.sh, at TOKEN_INSTALL_SCRIPT_PATH).

    Compact (user-data holds at most 16 KB). Its design:
    - the artifact always comes through the AWS CLI (the registry bucket, through the VPC's S3 gateway
      endpoint) and its SHA-256, carried in user-data, is checked before anything is unpacked; `--prefix`
      (for tests: a temporary directory) changes where it installs, never how it verifies;
    - releases/<sha256>/{app,venv} is complete once the marker exists: a complete release is not
      installed again; on any failure the trap removes the partial release, so a rerun starts clean;
    - `current` is switched by renaming a new symlink over it (atomic); a running service keeps its files;
    - umask 022: root owns the code, the service user only reads it;
    - it creates no account: the service's account exists before the unit starts (_token_sysusers);
    - the gate's unit runs it too (one release, one venv): an exclusive lock (flock) on the install
      directory itself keeps two units from installing at once (no lock file: a rerun leaves the directory
      as it was), and with a gate on the host the import check covers the gate's config loader (its
      dependencies) as well as the token service.
    Hosts are replaced when the artifact changes (its SHA-256 is in user-data), so nothing prunes old
    releases.
    """
    # retention.run: what the maintenance window runs from this venv (its imports checked at install).
    modules = [
        "auth.serve",
        "retention.run",
        *(["gate.config"] if gate else []),
        *(["scanner.events"] if scan_events else []),
    ]
    return render_install_script(
        region, token.artifact_bucket, token.artifact_key, token.artifact_sha256, token.pip_index_url, modules
    )


def render_install_script(
    region: str, bucket: str, key: str, sha256: str, pip_index_url: str, import_check: Sequence[str]
) -> str:
    """The artifact's install script (host/files/install-token-service.sh) for any host that runs the release:
    registry hosts (_token_install_script) and scanner workers (host/scanner_host.py). `import_check`: the
    modules the new release must import before it counts as installed. Values must already be validated."""
    return render_file(
        "install-token-service.sh",
        SCRIPT_NAME=_name(TOKEN_INSTALL_SCRIPT_PATH),
        INSTALL_DIR=shlex.quote(TOKEN_SERVICE_DIR),
        REGION_NAME=shlex.quote(region),
        ARTIFACT_BUCKET=shlex.quote(bucket),
        ARTIFACT_KEY=shlex.quote(key),
        ARTIFACT_SHA256=shlex.quote(sha256),
        PIP_INDEX_URL=shlex.quote(pip_index_url),
        RELEASE_MARKER=TOKEN_RELEASE_MARKER,
        IMPORT_CHECK=", ".join(import_check),
    )


def _token_sysusers() -> str:
    """The token service's account (host/files/registry-token.sysusers.conf, at TOKEN_SYSUSERS_PATH), a
    systemd-sysusers(8) file: user and group TOKEN_USER, a system account with no home and no login.

    systemd resolves `User=`/`Group=` before it runs any command of a unit, `ExecStartPre=+` included: an
    account the unit's own commands create is one it never gets to create (every start fails with
    217/USER). So `runcmd` applies this file with `systemd-sysusers` before it enables the unit, and
    systemd-sysusers.service applies it again early at every boot. A static account, not `DynamicUser=`:
    the fetch script chowns the service's secrets (and their directory, once) to its group, which must
    exist by name when the script runs and keep its GID across restarts and reboots.
    """
    return render_file("registry-token.sysusers.conf", TOKEN_USER=TOKEN_USER)


def _token_unit(token: TokenServiceBoot) -> str:
    """The token service's systemd unit (host/files/registry-token.service, at TOKEN_UNIT_PATH).

    Like the registry's drop-in: retries forever (StartLimitIntervalSec=0), fetches its secrets as
    root outside the sandbox (ExecStartPre=+), the same hardening. The install script runs first,
    also as root: a no-op once the release is installed, and at first boot a failed download or pip
    install (S3 or the index unreachable) is retried with every restart instead of leaving the host
    without a token service until the load balancer's health check replaces it. It runs `python -m
    auth` (auth/serve.py) from the current release's venv. `reload` fetches the secrets again, then
    SIGHUP makes the service re-read its config, keeping the running one if the new one is invalid
    (auth/serve.py). MemoryDenyWriteExecute stays off: cffi (under cryptography) makes writable and
    executable memory for its callbacks, and a refusal would kill the service with SIGSYS at run
    time, not at start.
    """
    return render_file(
        "registry-token.service",
        TOKEN_USER=TOKEN_USER,
        TOKEN_UNIT=TOKEN_UNIT,
        INSTALL_SCRIPT=TOKEN_INSTALL_SCRIPT_PATH,
        FETCH_SCRIPT=FETCH_SCRIPT_PATH,
        SERVICE_DIR=TOKEN_SERVICE_DIR,
        CONFIG_FILE=TOKEN_CONFIG_FILE,
        PORT=str(token.port),
        TLS_CERT_FILE=token.tls_cert_file,
        TLS_KEY_FILE=TOKEN_TLS_KEY_FILE,
        SANDBOX=_sandbox(),
    )


def _gate_sysusers() -> str:
    """The gate's account (host/files/registry-gate.sysusers.conf, at GATE_SYSUSERS_PATH): user and group
    GATE_USER, a system account with no home and no login, created before the unit starts for the reasons
    _token_sysusers gives. Its own account, not the token service's: the gate must not read the token
    signing key or the token service's config, which only the token service's group may read."""
    return render_file("registry-gate.sysusers.conf", GATE_USER=GATE_USER)


def _gate_unit(gate: GateBoot) -> str:
    """The gate's systemd unit (host/files/registry-gate.service, at GATE_UNIT_PATH).

    The token service's unit, for the gate: the same retries, install step (the release both run from; the
    script's lock serialises them, and `After=` the token service orders their first starts), sandbox and
    reload. Its fetch step writes only the gate's set: its own copy of the host key, for its TLS. Its config
    (GATE_CONFIG_FILE) is public and written by user-data. No MemoryDenyWriteExecute, as for the token
    service: the gate verifies signatures with cryptography, whose cffi callbacks need it off.
    """
    return render_file(
        "registry-gate.service",
        TOKEN_UNIT=TOKEN_UNIT,
        GATE_USER=GATE_USER,
        GATE_UNIT=GATE_UNIT,
        INSTALL_SCRIPT=TOKEN_INSTALL_SCRIPT_PATH,
        FETCH_SCRIPT=FETCH_SCRIPT_PATH,
        SERVICE_DIR=TOKEN_SERVICE_DIR,
        CONFIG_FILE=GATE_CONFIG_FILE,
        PORT=str(gate.port),
        TLS_CERT_FILE=gate.tls_cert_file,
        TLS_KEY_FILE=GATE_TLS_KEY_FILE,
        SANDBOX=_sandbox(),
    )


def _scan_events_sysusers() -> str:
    """The forwarder's account (host/files/registry-scan-events.sysusers.conf, at SCAN_EVENTS_SYSUSERS_PATH),
    created before the unit starts for the reasons _token_sysusers gives. Its own account: it reads the bearer
    token and its copy of the host key, never the token service's secrets."""
    return render_file("registry-scan-events.sysusers.conf", SCAN_EVENTS_USER=SCAN_EVENTS_USER)


def _scan_events_dropin() -> str:
    """The registry's second drop-in (host/files/docker-registry-scan-events.conf, at SCAN_EVENTS_DROPIN_PATH):
    its notifications go to the forwarder over TLS, whose certificate the internal CA signed. distribution 2.8's
    endpoints have no CA option; Go reads SSL_CERT_DIR's directories besides the system bundle, so the registry
    trusts the system's CAs (S3) and, from REGISTRY_TRUST_DIR, the internal CA alone.

    distribution logs every endpoint's headers at start (configureEvents, at info), the bearer among them
    (`headers=map[Authorization:[Bearer T]]`): the registry runs through host/log_redact.py (at
    LOG_REDACT_SCRIPT_PATH), which masks the value of every Authorization header (Bearer or Basic, in the
    forms logs print one) before the journal, on Debian 12 as on 13 (systemd 252 has no LogFilterPatterns=).
    The lab runs its registries through it too, with the exact secrets it knows in REDACT_SECRETS. The
    filter drains the registry's output after a stop signal (systemd signals the whole group), then ends as
    the registry did (its status, or the same signal), so Restart= and a stop see the registry's own end.
    """
    return render_file(
        "docker-registry-scan-events.conf",
        CERT_DIRS=f"{SYSTEM_CERT_DIR}:{REGISTRY_TRUST_DIR}",
        REDACT_SCRIPT=LOG_REDACT_SCRIPT_PATH,
        CONFIG_FILE=CONFIG_PATH,
    )


def _log_redact_script() -> str:
    """host/log_redact.py as it is: the standard library only, run by the host's python3 (its `#!` line)."""
    return resources.files("host").joinpath("log_redact.py").read_text(encoding="utf-8")


def _scan_events_unit() -> str:
    """The forwarder's systemd unit (host/files/registry-scan-events.service, at SCAN_EVENTS_UNIT_PATH).

    The gate's unit, for the forwarder: the same retries, install step (the release all three run from),
    sandbox. Its fetch step writes its set: the bearer token and its copy of the host key. It listens on
    loopback only (its config), needs the queue only when events arrive (it starts without reaching SQS),
    and has no ExecReload: a new config comes with a new host. No MemoryDenyWriteExecute, like the other
    Python units (a dependency loading cffi would be killed with SIGSYS at run time, not at start).
    """
    return render_file(
        "registry-scan-events.service",
        TOKEN_UNIT=TOKEN_UNIT,
        SCAN_EVENTS_USER=SCAN_EVENTS_USER,
        SCAN_EVENTS_UNIT=SCAN_EVENTS_UNIT,
        INSTALL_SCRIPT=TOKEN_INSTALL_SCRIPT_PATH,
        FETCH_SCRIPT=FETCH_SCRIPT_PATH,
        SERVICE_DIR=TOKEN_SERVICE_DIR,
        CONFIG_FILE=SCAN_EVENTS_CONFIG_FILE,
        SANDBOX=_sandbox(),
    )


@dataclass(frozen=True)
class HostFile:
    """A file user-data writes: root-owned, in cloud-init's final stage (see the module docstring)."""

    path: str
    content: str
    permissions: str


@dataclass(frozen=True)
class RenderedHost:
    """A registry host as user-data makes it: its files, and the `#cloud-config` text that writes them
    (what EC2 receives is its gzip: host.user_data.encode_user_data)."""

    files: tuple[HostFile, ...]  # in the order user-data writes them
    user_data: str

    def content(self, path: str) -> str:
        """The content of the file at `path`; KeyError if the host gets no such file."""
        for f in self.files:
            if f.path == path:
                return f.content
        raise KeyError(path)


class BlockStyleDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as `|` blocks: readable user-data, fewer bytes."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


BlockStyleDumper.add_representer(str, _represent_str)


def render_host(boot: HostBoot) -> RenderedHost:
    """Render every file of a host and its `#cloud-config` user-data. Validates `boot` once, first
    (validate_host_boot); raises ValueError when it breaks a rule or when the user-data's gzip (what
    EC2 receives, see host.user_data) exceeds EC2's 16 KB user-data limit."""
    validate_host_boot(boot)
    token, gate, events = boot.token_service, boot.gate, boot.scan_events
    files = [HostFile(CONFIG_PATH, boot.registry_config_yaml, "0644")]  # the config holds no secret
    files += [HostFile(path, content, "0644") for path, content in boot.public_files]
    notifications = (events.token_secret_arn, events.endpoints_template) if events is not None else None
    sets = [FetchSet(REGISTRY_UNIT, boot.secret_files, boot.http_secret_arn, notifications)]
    if token is not None:
        sets.append(FetchSet(TOKEN_UNIT, token_secret_files(token)))
    if gate is not None:
        sets.append(FetchSet(GATE_UNIT, gate_secret_files(gate)))
    if events is not None:
        sets.append(FetchSet(SCAN_EVENTS_UNIT, scan_events_secret_files(events)))
    files += [
        HostFile(FETCH_SCRIPT_PATH, render_fetch_script(boot.region, sets), "0700"),
        HostFile(DROPIN_PATH, _registry_dropin(), "0644"),
    ]
    packages = list(REGISTRY_PACKAGES)
    token_steps: list[list[str]] = []
    if token is not None:
        # The signing certificate (the service's) and the trust bundle (the registry's rootcertbundle).
        files += [HostFile(path, content, "0644") for path, content in token_public_files(token)]
        files += [
            HostFile(
                TOKEN_INSTALL_SCRIPT_PATH,
                _token_install_script(boot.region, token, gate is not None, events is not None),
                "0700",
            ),
            HostFile(TOKEN_SYSUSERS_PATH, _token_sysusers(), "0644"),
            HostFile(TOKEN_UNIT_PATH, _token_unit(token), "0644"),
        ]
        packages += TOKEN_SERVICE_PACKAGES
        token_steps = [  # the unit's ExecStartPre installs the service (see _token_unit)
            ["systemd-sysusers", TOKEN_SYSUSERS_PATH],  # its User= must exist before it starts (_token_sysusers)
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", TOKEN_UNIT],
        ]
    if gate is not None:
        files += [
            HostFile(GATE_CONFIG_FILE, gate.config_yaml, "0644"),  # public: a public key and namespace names
            HostFile(GATE_SYSUSERS_PATH, _gate_sysusers(), "0644"),
            HostFile(GATE_UNIT_PATH, _gate_unit(gate), "0644"),
        ]
        token_steps += [
            ["systemd-sysusers", GATE_SYSUSERS_PATH],  # like the token service's account (_gate_sysusers)
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", GATE_UNIT],
        ]
    if events is not None:
        files += [
            HostFile(REGISTRY_TRUST_CA_FILE, events.ca_cert_pem, "0644"),
            HostFile(SCAN_EVENTS_DROPIN_PATH, _scan_events_dropin(), "0644"),
            HostFile(LOG_REDACT_SCRIPT_PATH, _log_redact_script(), "0755"),
            HostFile(SCAN_EVENTS_CONFIG_FILE, events.config_yaml, "0644"),  # public: the queue's URL, the listener
            HostFile(SCAN_EVENTS_SYSUSERS_PATH, _scan_events_sysusers(), "0644"),
            HostFile(SCAN_EVENTS_UNIT_PATH, _scan_events_unit(), "0644"),
        ]
        token_steps += [
            ["systemd-sysusers", SCAN_EVENTS_SYSUSERS_PATH],  # like the token service's account
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", SCAN_EVENTS_UNIT],
        ]
    ssm_install = (
        'set -eu; deb=$(mktemp --suffix=.deb); curl -fsSL --proto =https -o "$deb" '
        f'{shlex.quote(ssm_agent_url(boot.region, boot.architecture))}; dpkg -i "$deb"; rm -f "$deb"'
    )
    cloud_config = {
        # Host egress allows only 443: fetch packages over HTTPS. Debian's cloud.cfg sets
        # preserve_sources_list: true (keep the image's sources, whatever primary/security say): false
        # makes cloud-init write these mirrors (Debian 12: /etc/apt/sources.list; Debian 13: the deb822
        # /etc/apt/sources.list.d/debian.sources, the old sources.list removed).
        "apt": {
            "preserve_sources_list": False,
            "primary": [{"arches": ["default"], "uri": "https://deb.debian.org/debian"}],
            "security": [{"arches": ["default"], "uri": "https://deb.debian.org/debian-security"}],
        },
        "package_update": True,
        "packages": packages,
        # defer: written in cloud-init's final stage, after packages are installed (see module docstring).
        "write_files": [
            {"path": f.path, "content": f.content, "owner": "root:root", "permissions": f.permissions, "defer": True}
            for f in files
        ],
        "runcmd": [
            ["sh", "-c", ssm_install],
            ["systemctl", "enable", "--now", SSM_AGENT_UNIT],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", REGISTRY_UNIT],
            # The package started the registry with its default config before our files existed.
            ["systemctl", "restart", REGISTRY_UNIT],
            *token_steps,
        ],
    }
    text = "#cloud-config\n" + yaml.dump(cloud_config, Dumper=BlockStyleDumper, sort_keys=False, width=1000)
    size = len(compress_user_data(text))
    if size > USER_DATA_LIMIT_BYTES:
        raise ValueError(
            f"The cloud-init user-data is {size} bytes gzipped; EC2 allows {USER_DATA_LIMIT_BYTES} (16 KB before "
            "base64). Shrink HostBoot.public_files (e.g. ship large certificates through Secrets Manager or S3)."
        )
    return RenderedHost(tuple(files), text)
