"""The host contract: what a registry host is, as every other part of the project sees it.

A registry host is a Debian instance (13 by default, 12 on request) that runs the registry (the Debian
package `docker-registry`, CNCF distribution 2.8) and, in token mode, the token service (auth/) beside
it, and nothing else but the SSM agent. Its ports, paths, users, unit names, packages and services are
defined here once: the renderers in this package write them into the host's files, the load balancer
and the fleet open and route to them, the lab runs the same files, and the compliance rules check a
host against them.

Plain constants, no logic and no imports: changing a value here changes every host's user-data,
which rolls the fleet.
"""

# --- ports and routes -------------------------------------------------------------------------------
REGISTRY_PORT = 5000  # registry HTTPS listener on hosts (the ALB target port)
DEBUG_PORT = 5001  # http.debug.addr: /debug/health and /metrics (prometheus), on loopback
TOKEN_SERVICE_PORT = 5002  # HTTPS; the ALB's token target group
TOKEN_PATH = "/auth"  # the realm's path on the registry's public URL (an ALB listener rule)
TOKEN_HEALTH_PATH = "/healthz"  # the token service's health check (the ALB's token target group)
# What the registry's `/` answers: 200, or 503 (`UNAVAILABLE`, on every path) while its storage check fails
# (S3 or its KMS key unreachable). The ALB counts both as alive, so an S3 outage, which every host sees at
# once, replaces no host; a registry that does not answer fails the check and its host is replaced.
REGISTRY_HEALTH_CODES = "200,503"
GATE_PORT = 5003  # HTTPS; the ALB's gate target group (manifest GET/HEAD in protected namespaces)
GATE_HEALTH_PATH = "/healthz"  # the gate's health check (the ALB's gate target group)
# HTTPS on loopback only: the registry's notifications reach the scan events forwarder here (python -m scanner events).
SCAN_EVENTS_PORT = 5004
SCAN_EVENTS_PATH = "/events"

# --- the operating system --------------------------------------------------------------------------
# The Debian releases a host may boot (`fleet.debianRelease`), newest first, with their suites. Debian's
# official AMIs come from its own AWS account, named `debian-<release>-<arch>-<date>-<build>`.
DEBIAN_SUITES = {13: "trixie", 12: "bookworm"}
DEBIAN_AMI_OWNER = "136693071363"  # https://wiki.debian.org/Cloud/AmazonEC2Image
DEBIAN_AMI_NAME = "debian-{release}-{architecture}-*"  # the image lookup's name filter (Debian arch names)

# --- what a host installs and runs ------------------------------------------------------------------
REGISTRY_UNIT = "docker-registry"  # the Debian package's unit; the fetch script's default
TOKEN_UNIT = "registry-token"
GATE_UNIT = "registry-gate"  # token mode, and only on a stack that protects a namespace
SCAN_EVENTS_UNIT = "registry-scan-events"  # token mode: forwards the registry's push events to the scan queue
SSM_AGENT_UNIT = "amazon-ssm-agent"  # operators use Session Manager, not SSH
# The registry, what boots it (the AWS CLI reads its secrets, curl fetches the SSM agent) and, in token
# mode, the token service's venv (python3-venv holds its hash-pinned wheels). In install order.
REGISTRY_PACKAGES = ("docker-registry", "awscli", "ca-certificates", "curl")
TOKEN_SERVICE_PACKAGES = ("python3-venv",)
HOST_PACKAGES = frozenset(REGISTRY_PACKAGES + TOKEN_SERVICE_PACKAGES)  # all a registry host may install
HOST_SERVICES = frozenset(
    {REGISTRY_UNIT, TOKEN_UNIT, GATE_UNIT, SCAN_EVENTS_UNIT, SSM_AGENT_UNIT}
)  # all a registry host may enable
ARCHITECTURES = ("arm64", "amd64")  # Debian architecture names, as in the SSM agent's download path

# --- the registry's files ---------------------------------------------------------------------------
REGISTRY_GROUP = "docker-registry"  # the package's user and group; the registry reads its secrets through it
CONFIG_PATH = "/etc/docker/registry/config.yml"  # the Debian package's config path
STATE_DIR = "/var/lib/docker-registry"  # the Debian package's state directory (home of user docker-registry)
TLS_DIR = "/etc/docker/registry/tls"
HOST_CERT_FILE = f"{TLS_DIR}/host.crt"  # public: the host certificate (registry and token service)
HOST_KEY_FILE = f"{TLS_DIR}/host.key"  # secret
CA_CERT_FILE = f"{TLS_DIR}/ca.crt"  # public: the internal CA
HOST_INTERNAL_NAME = "registry.internal"  # a name in every host certificate besides the public one
HTPASSWD_FILE = "/etc/docker/registry/htpasswd"  # secret (htpasswd mode)
CLOUDFRONT_KEY_FILE = "/etc/docker/registry/cloudfront.pem"  # secret: the CDN's URL signing key
# S3 key prefix of blobs when rootdirectory is unset (CloudFront reads only this)
BLOB_PREFIX = "docker/registry/v2/blobs/"

# --- what boots a host ------------------------------------------------------------------------------
FETCH_SCRIPT_PATH = "/usr/local/sbin/registry-fleet-fetch-secrets"  # `... [UNIT]`: that unit's secrets
DROPIN_PATH = f"/etc/systemd/system/{REGISTRY_UNIT}.service.d/10-registry-fleet.conf"
ENV_DIR = "/run/registry-fleet"  # tmpfs: the HTTP secret never reaches a disk
ENV_FILE = f"{ENV_DIR}/registry.env"

# --- the token service's files (token mode) ---------------------------------------------------------
TOKEN_USER = "registry-token"  # and its group: created by systemd-sysusers before the unit starts
# systemd-sysusers(8) config: declares TOKEN_USER, so the account exists before the unit starts (systemd
# resolves User= before it runs any command of the unit) and is recreated at every boot if removed.
TOKEN_SYSUSERS_PATH = f"/etc/sysusers.d/{TOKEN_USER}.conf"
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
TOKEN_UNIT_PATH = f"/etc/systemd/system/{TOKEN_UNIT}.service"
TOKEN_INSTALL_SCRIPT_PATH = "/usr/local/sbin/registry-fleet-install-token-service"
TOKEN_RELEASE_MARKER = ".installed"  # in releases/<sha256>/: the release is complete

# --- the gate's files (token mode, a stack that protects a namespace) --------------------------------
# The gate (gate/, `python -m gate`) answers manifest GET/HEAD in protected namespaces only for signed
# digests, forwarding to the local registry. It runs from the token service's release (one artifact, one
# venv) as its own account, which reads the host key (its TLS) and nothing else secret.
GATE_USER = "registry-gate"  # and its group: created by systemd-sysusers before the unit starts
GATE_SYSUSERS_PATH = f"/etc/sysusers.d/{GATE_USER}.conf"
GATE_CONFIG_FILE = "/etc/registry-fleet/gate.yml"  # public: the signing key's public key, protected namespaces
GATE_TLS_KEY_FILE = "/etc/registry-gate/tls.key"  # secret: the host key, the gate's own copy
GATE_UNIT_PATH = f"/etc/systemd/system/{GATE_UNIT}.service"
GATE_CACHE_SECONDS = 300  # positive verification results, per (repository, digest)

# --- the scan events forwarder's files (token mode; issue 14) ----------------------------------------
# The forwarder (scanner/, `python -m scanner events`) runs from the token service's release as its own
# account: it reads the host key (its TLS on loopback) and the bearer token the registry sends, nothing else.
SCAN_EVENTS_USER = "registry-scan-events"  # and its group: created by systemd-sysusers before the unit starts
SCAN_EVENTS_SYSUSERS_PATH = f"/etc/sysusers.d/{SCAN_EVENTS_USER}.conf"
SCAN_EVENTS_CONFIG_FILE = "/etc/registry-fleet/scan-events.yml"  # public: the queue's URL, the listener
SCAN_EVENTS_TOKEN_FILE = "/etc/registry-fleet/scan-events.token"  # secret: the bearer the registry sends
SCAN_EVENTS_TLS_KEY_FILE = "/etc/registry-scan-events/tls.key"  # secret: the host key, the forwarder's own copy
SCAN_EVENTS_UNIT_PATH = f"/etc/systemd/system/{SCAN_EVENTS_UNIT}.service"
# Events the registry does not send to the forwarder: pulls and deletes, and blob (layer) pushes; the forwarder
# keeps image manifest and index pushes only.
SCAN_EVENTS_IGNORED_ACTIONS = ("pull", "delete")
SCAN_EVENTS_IGNORED_MEDIA_TYPES = (
    "application/octet-stream",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
)
SCAN_IGNORED_PREFIXES = ("mirror/",)  # platform repositories the scanner does not scan (the Trivy database)
# The registry's notifications reach the forwarder over TLS with the host certificate (internal CA, IP SAN
# 127.0.0.1): a drop-in adds a directory holding only the internal CA to the registry's trusted roots (Go reads
# SSL_CERT_DIR besides the system bundle), so the rest of the host's trust is unchanged.
SCAN_EVENTS_DROPIN_PATH = f"/etc/systemd/system/{REGISTRY_UNIT}.service.d/20-scan-events.conf"
# The registry logs its notification endpoints' headers (the forwarder's bearer) at start: with the forwarder,
# it runs through this filter (host/log_redact.py, as it is), which masks credentials in its output.
LOG_REDACT_SCRIPT_PATH = "/usr/local/sbin/registry-fleet-log-redact"
REGISTRY_TRUST_DIR = "/etc/registry-fleet/registry-trust"
REGISTRY_TRUST_CA_FILE = f"{REGISTRY_TRUST_DIR}/internal-ca.crt"
SYSTEM_CERT_DIR = "/etc/ssl/certs"
