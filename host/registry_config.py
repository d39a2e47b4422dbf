"""Render the registry's `config.yml` (CNCF distribution 2.8, Debian package `docker-registry`).

A pure, deterministic renderer: plain values in, YAML text out, no Pulumi import. The fleet
component feeds it resolved outputs inside one `apply`; the lab feeds it local values (loopback
addresses, a moto S3 endpoint). Every environment-specific value is therefore a field of
:class:`RegistryConfig`, the "effective config" in which every value is already resolved.

Practices served: TLS everywhere (2: the hosts listen with TLS 1.2+), private registry (7: no
credential or secret in the file; S3 access comes from the instance role, `http.secret` from the
REGISTRY_HTTP_SECRET environment variable, key material from files written at boot), replicated
across servers (8: the same config on every host; a storage health check, so while S3 is unreachable every
request gets a clear `503 UNAVAILABLE`, which the load balancer counts as alive: an S3 outage replaces no
host) and
CDN for blobs (9: the `cloudfront` storage middleware redirects blob GETs to signed CloudFront URLs).

Option names were checked against the distribution 2.8 configuration reference
(`docs/configuration.md`) and `configuration/configuration.go`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import yaml

from host.contract import DEBUG_PORT, HOST_CERT_FILE, HOST_KEY_FILE, HTPASSWD_FILE, REGISTRY_PORT

# The environment override of `storage.maintenance.readonly` (distribution's parser reads a YAML value for a
# map key: `..._READONLY_ENABLED=true` panics at start, "readonly config key must contain additional keys").
READ_ONLY_ENV = "REGISTRY_STORAGE_MAINTENANCE_READONLY"
READ_ONLY_VALUE = '{"enabled":true}'
MIN_CHUNK_SIZE_BYTES = 5 * 1024 * 1024  # the S3 driver refuses a chunksize below the S3 multipart minimum
LOG_LEVELS = ("error", "warn", "info", "debug")  # what the registry accepts for log.level


@dataclass(frozen=True)
class CloudFrontSettings:
    """The `cloudfront` storage middleware: blob GETs become redirects to signed CloudFront URLs."""

    base_url: str  # e.g. "https://d111111abcdef8.cloudfront.net/" (must end with "/")
    private_key_file: str  # path of a PKCS#1 PEM on disk (never the key itself)
    key_pair_id: str  # CloudFront public key id
    duration_seconds: int  # lifetime of a signed URL


@dataclass(frozen=True)
class TokenAuth:
    """`auth.token`: the registry trusts JWTs from the token service (auth/) and nothing else.

    `service` is the token's `aud` and `issuer` its `iss`; `rootcertbundle` is the path of the
    signing certificate(s) on the host (public), whose key signs every token (leaf in `x5c`).
    """

    realm: str  # https://registry.example.com/auth: where clients get tokens (the ALB routes it to the service)
    service: str
    issuer: str
    rootcertbundle: str


@dataclass(frozen=True)
class NotificationEndpoint:
    """A receiver of the registry's events (the scan events forwarder).

    distribution reads endpoint headers only from its configuration. With `bearer_token` the header is in
    config.yml, which must then stay readable by the registry alone (0600: the lab). With `bearer_token=None`
    (registry hosts, whose config.yml is public user-data) config.yml holds the endpoint without its header
    and the registry's environment replaces the whole list (`notification_endpoints_env`), written from
    Secrets Manager at each start on tmpfs, so the token never reaches user-data or a disk.
    `ignore_actions` and `ignore_media_types` are distribution's `ignore` (events it never sends).
    """

    name: str
    url: str
    bearer_token: str | None
    timeout: str = "5s"
    threshold: int = 5
    backoff: str = "1s"
    ignore_actions: tuple[str, ...] = ()
    ignore_media_types: tuple[str, ...] = ()


# The environment variable that replaces `notifications.endpoints` (distribution reads a YAML value for it).
NOTIFICATION_ENDPOINTS_ENV = "REGISTRY_NOTIFICATIONS_ENDPOINTS"


def notification_endpoint_dict(e: NotificationEndpoint, bearer_token: str | None = None) -> dict[str, Any]:
    """One `notifications.endpoints` entry; the Authorization header with `bearer_token` (or the endpoint's)."""
    token = bearer_token if bearer_token is not None else e.bearer_token
    entry: dict[str, Any] = {"name": e.name, "url": e.url}
    if token is not None:
        entry["headers"] = {"Authorization": [f"Bearer {token}"]}
    entry |= {"timeout": e.timeout, "threshold": e.threshold, "backoff": e.backoff}
    if e.ignore_actions or e.ignore_media_types:
        entry["ignore"] = {"mediatypes": list(e.ignore_media_types), "actions": list(e.ignore_actions)}
    return entry


def notification_endpoints_env(endpoints: tuple[NotificationEndpoint, ...], bearer_token: str) -> str:
    """The value of NOTIFICATION_ENDPOINTS_ENV: every endpoint, with `bearer_token` (JSON, which YAML reads)."""
    return json.dumps([notification_endpoint_dict(e, bearer_token) for e in endpoints], separators=(",", ":"))


@dataclass(frozen=True)
class RegistryConfig:
    """The effective registry config: every value already resolved, secure defaults for the rest."""

    environment: str
    public_url: str  # "https://registry.dev.example.com" -> http.host
    bucket: str
    region: str
    listen_addr: str = f":{REGISTRY_PORT}"
    debug_addr: str = f"127.0.0.1:{DEBUG_PORT}"  # loopback: the debug server exposes metrics and health details
    tls_cert_file: str = HOST_CERT_FILE
    tls_key_file: str = HOST_KEY_FILE
    kms_key_id: str | None = None  # set -> s3 `encrypt: true` + `keyid`
    s3_endpoint: str | None = None  # lab only: sets `regionendpoint` AND `forcepathstyle: true`
    chunk_size_bytes: int = 16 * 1024 * 1024
    htpasswd_file: str = HTPASSWD_FILE
    htpasswd_realm: str = "registry"
    token: TokenAuth | None = None  # set: token auth (htpasswd_* unused); None: htpasswd
    cloudfront: CloudFrontSettings | None = None
    log_level: str = "info"
    notifications: tuple[NotificationEndpoint, ...] = ()
    # `storage.maintenance.readonly.enabled`: writes answer 405 (GC and restore windows, fleet/maintenance.py).
    # The fleet renders False; its hosts switch with READ_ONLY_ENV in a drop-in, the lab renders True.
    read_only: bool = False


def validate_registry_config(cfg: RegistryConfig) -> None:
    """Raise ValueError naming the field, the bad value and the fix, before anything is rendered."""
    for name in ("environment", "public_url", "bucket", "region", "listen_addr", "debug_addr"):
        if not getattr(cfg, name):
            raise ValueError(f"RegistryConfig.{name} must not be empty.")
    for name in ("kms_key_id", "s3_endpoint"):
        if getattr(cfg, name) == "":
            raise ValueError(f"RegistryConfig.{name} must be None (unset) or a non-empty string, not ''.")
    url = urlparse(cfg.public_url)
    if url.scheme != "https" or not url.netloc:
        raise ValueError(
            f"RegistryConfig.public_url must be an https:// URL (it becomes http.host, the address clients use); "
            f"got {cfg.public_url!r}. Use e.g. 'https://registry.dev.example.com'."
        )
    if cfg.chunk_size_bytes < MIN_CHUNK_SIZE_BYTES:
        raise ValueError(
            f"RegistryConfig.chunk_size_bytes must be at least {MIN_CHUNK_SIZE_BYTES} (5 MiB, the S3 multipart "
            f"minimum); got {cfg.chunk_size_bytes}."
        )
    for endpoint in cfg.notifications:
        if urlparse(endpoint.url).scheme != "https" or endpoint.bearer_token == "":
            raise ValueError(
                f"RegistryConfig.notifications[{endpoint.name}] needs an https:// url and a bearer token (or None: "
                "from the registry's environment): events name every repository and user"
            )
    if cfg.token is not None:
        realm = urlparse(cfg.token.realm)
        if realm.scheme != "https" or not realm.netloc:
            raise ValueError(
                "RegistryConfig.token.realm must be an https:// URL (clients send passwords there); "
                f"got {cfg.token.realm!r}."
            )
        if not cfg.token.service or not cfg.token.issuer:
            raise ValueError("RegistryConfig.token.service and .issuer must not be empty (they are the aud and iss).")
        if not cfg.token.rootcertbundle.startswith("/"):
            raise ValueError(
                f"RegistryConfig.token.rootcertbundle must be an absolute path; got {cfg.token.rootcertbundle!r}."
            )
    if cfg.log_level not in LOG_LEVELS:
        raise ValueError(f"RegistryConfig.log_level must be one of {', '.join(LOG_LEVELS)}; got {cfg.log_level!r}.")
    if cfg.cloudfront is not None:
        if not cfg.cloudfront.base_url.endswith("/"):
            raise ValueError(
                f"RegistryConfig.cloudfront.base_url must end with '/' (the middleware appends the S3 key to it); "
                f"got {cfg.cloudfront.base_url!r}. Use {cfg.cloudfront.base_url + '/'!r}."
            )
        key_file = cfg.cloudfront.private_key_file
        if not key_file.startswith("/") or "\n" in key_file or "PRIVATE KEY" in key_file:
            raise ValueError(
                "RegistryConfig.cloudfront.private_key_file must be the absolute path of the PEM on the host; "
                "the key itself never goes into config.yml (write it from Secrets Manager at boot)."
            )
        if cfg.cloudfront.duration_seconds <= 0:
            raise ValueError(
                f"RegistryConfig.cloudfront.duration_seconds must be a positive number of seconds; "
                f"got {cfg.cloudfront.duration_seconds}."
            )


def registry_config_dict(cfg: RegistryConfig) -> dict[str, Any]:
    """Return the registry config as a dict (what `render_registry_config` dumps). Validates first."""
    validate_registry_config(cfg)

    # No accesskey/secretkey: the S3 driver falls back to the instance role (or the lab's environment).
    s3: dict[str, Any] = {
        "region": cfg.region,
        "bucket": cfg.bucket,
        "secure": True,
        "v4auth": True,
        "chunksize": cfg.chunk_size_bytes,
    }
    if cfg.kms_key_id is not None:
        s3["encrypt"] = True
        s3["keyid"] = cfg.kms_key_id
    if cfg.s3_endpoint is not None:
        # 2.8 forces path style whenever regionendpoint is set; 3.x needs forcepathstyle said explicitly.
        s3["regionendpoint"] = cfg.s3_endpoint
        s3["forcepathstyle"] = True

    storage: dict[str, Any] = {
        "s3": s3,
        "delete": {"enabled": True},
        "maintenance": {"uploadpurging": {"enabled": True, "age": "168h", "interval": "24h", "dryrun": False}},
        "cache": {"blobdescriptor": "inmemory"},
    }

    config: dict[str, Any] = {
        "version": 0.1,
        "log": {
            "level": cfg.log_level,
            "formatter": "json",
            "fields": {"service": "registry", "environment": cfg.environment},
        },
        "storage": storage,
    }

    # Without the CDN the registry streams blobs itself: a redirect would send clients to a
    # presigned S3 URL, outside the load balancer (and outside a private network).
    if cfg.read_only:  # only when set: the fleet's config.yml (and so its user-data) stays as it was
        storage["maintenance"]["readonly"] = {"enabled": True}
    storage["redirect"] = {"disable": cfg.cloudfront is None}
    if cfg.cloudfront is not None:
        config["middleware"] = {
            "storage": [
                {
                    "name": "cloudfront",
                    "options": {
                        "baseurl": cfg.cloudfront.base_url,
                        "privatekey": cfg.cloudfront.private_key_file,  # a path: the key itself never enters this file
                        "keypairid": cfg.cloudfront.key_pair_id,
                        "duration": f"{cfg.cloudfront.duration_seconds}s",
                    },
                }
            ]
        }

    # No `secret` key: every host gets the same one from REGISTRY_HTTP_SECRET, so this file holds no secret.
    config["http"] = {
        "addr": cfg.listen_addr,
        "host": cfg.public_url,
        "relativeurls": False,
        "draintimeout": "60s",
        "tls": {"certificate": cfg.tls_cert_file, "key": cfg.tls_key_file, "minimumtls": "tls1.2"},
        "headers": {
            "X-Content-Type-Options": ["nosniff"],
            "Strict-Transport-Security": ["max-age=63072000"],
        },
        "debug": {"addr": cfg.debug_addr, "prometheus": {"enabled": True, "path": "/metrics"}},
    }
    if cfg.token is not None:
        config["auth"] = {
            "token": {
                "realm": cfg.token.realm,
                "service": cfg.token.service,
                "issuer": cfg.token.issuer,
                "rootcertbundle": cfg.token.rootcertbundle,
            }
        }
    else:
        config["auth"] = {"htpasswd": {"realm": cfg.htpasswd_realm, "path": cfg.htpasswd_file}}
    if cfg.notifications:
        config["notifications"] = {
            "events": {"includereferences": True},
            "endpoints": [notification_endpoint_dict(e) for e in cfg.notifications],
        }
    # The storage check: `Stat("/")` on the driver every 5 s; after 3 failures in a row every path answers
    # `503 UNAVAILABLE` ("health check failed") instead of each request failing with `500 UNKNOWN`, and the
    # first success clears it. The load balancer counts 503 as alive (host.contract.REGISTRY_HEALTH_CODES):
    # S3 is shared by every host, so its outage must not make the Auto Scaling group replace the fleet.
    config["health"] = {"storagedriver": {"enabled": True, "interval": "5s", "threshold": 3}}
    return config


def render_registry_config(cfg: RegistryConfig) -> str:
    """Return the text of `config.yml` for `cfg`. Raises ValueError if `cfg` breaks a rule."""
    return yaml.safe_dump(registry_config_dict(cfg), sort_keys=False)
