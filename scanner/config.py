"""The scanner's two configuration files, validated before anything starts; errors name the key.

events (`python -m scanner events --config FILE`, on each registry host):
    listen: 127.0.0.1:5004                             # host contract SCAN_EVENTS_PORT, loopback only
    cert_file: /etc/docker/registry/tls/host.crt       # TLS: the registry verifies it like any endpoint
    key_file: /etc/docker/registry/tls/host.key
    token_file: /etc/registry-fleet/scan-events.token  # secret: the bearer the registry sends
    queue_url: https://sqs.<region>.amazonaws.com/<account>/<name>
    region: <region>
    endpoint_url: null                                 # the lab: the moto server
    endpoint_ca_file: null                             # a CA for endpoint_url's certificate (the lab's)
    ignore_prefixes: ["mirror/"]                       # repositories never scanned (the Trivy DB mirror)
    max_body_bytes: 1048576                            # a larger notification envelope: 413

worker (`python -m scanner worker --config FILE`, on scanner hosts, never on registry hosts):
    queue_url, region, endpoint_url, endpoint_ca_file  # as above
    bucket: <registry bucket>                          # reports under registry-fleet/scan-reports/
    registry: registry.example.com                     # host[:port] Trivy pulls from (the fleet's name)
    ca_file: null                                      # a CA for the registry's certificate (lab, private CA)
    username: <scanner robot>
    password_file: /etc/registry-fleet/scanner-robot.token   # secret
    trivy: /usr/local/bin/trivy
    db_repository: <registry>/mirror/trivy-db:2
    findings_topic_arn: <arn>                          # null: publish nothing
    findings_threshold: HIGH                           # publish reports whose highest severity is at least this
    visibility_timeout_seconds: 900                    # what a received message is hidden for, extended while
                                                       # its scan runs
    cache_dir: /var/cache/registry-scanner
    ignore_prefixes: ["mirror/"]                       # rescan-all skips these repositories
    retry_delay_seconds: 60                            # a failed message comes back after this long
    scan_timeout_seconds: 600                          # one Trivy run; longer is a failure
    db_check_seconds: 300                              # how often the worker looks for a newer mirrored DB
    wait_seconds: 20                                   # SQS long polling

Unknown keys are refused. Secrets are read from their files (never from the config itself).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auth.config import ConfigError, describe_errors, read_document
from scanner.report import SEVERITIES

__all__ = ["ConfigError", "EventsConfig", "WorkerConfig", "load_events_config", "load_worker_config", "read_secret"]

_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:(?P<port>\d{1,5}))?$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _host_port(value: str, what: str, need_port: bool) -> str:
    match = _HOST_PORT.match(value)
    port = match.group("port") if match else None
    if not match or (need_port and port is None) or (port is not None and not 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not {what}")
    return value


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{value}: no such file")
    return value


class _Queue(_Frozen):
    queue_url: str
    region: str = Field(min_length=1)
    endpoint_url: str | None = None
    endpoint_ca_file: Path | None = None

    @field_validator("queue_url", "endpoint_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{value!r}: must be an https:// URL")
        return value

    @field_validator("endpoint_ca_file")
    @classmethod
    def _ca(cls, value: Path | None) -> Path | None:
        return _existing_file(value)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", value):
            raise ValueError(f"{value!r} is not an AWS region (e.g. eu-west-1)")
        return value

    def aws_client(self, service: str) -> Any:
        """A boto3 client of `service` in this region, at endpoint_url when set (credentials: the instance's)."""
        import boto3

        verify: str | bool = str(self.endpoint_ca_file) if self.endpoint_ca_file else True
        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint_url, verify=verify)


def _prefixes(value: tuple[str, ...]) -> tuple[str, ...]:
    for prefix in value:
        if not prefix.endswith("/") or not _REPOSITORY.match(prefix.rstrip("/")):
            raise ValueError(f"{prefix!r}: a repository path ending with / (e.g. mirror/)")
    return value


class EventsConfig(_Queue):
    listen: str = "127.0.0.1:5004"
    cert_file: Path
    key_file: Path
    token_file: Path
    ignore_prefixes: tuple[str, ...] = ("mirror/",)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _host_port(value, "HOST:PORT (e.g. 127.0.0.1:5004)", need_port=True)

    @field_validator("cert_file", "key_file", "token_file")
    @classmethod
    def _files(cls, value: Path) -> Path | None:
        return _existing_file(value)

    @field_validator("ignore_prefixes")
    @classmethod
    def _ignored(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _prefixes(value)

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class WorkerConfig(_Queue):
    bucket: str = Field(min_length=3, max_length=63)
    registry: str
    ca_file: Path | None = None
    username: str = Field(min_length=1)
    password_file: Path
    trivy: Path = Path("/usr/local/bin/trivy")
    db_repository: str
    findings_topic_arn: str | None = None
    findings_threshold: str = "HIGH"
    visibility_timeout_seconds: int = Field(default=900, ge=10, le=43_200)
    cache_dir: Path = Path("/var/cache/registry-scanner")
    ignore_prefixes: tuple[str, ...] = ("mirror/",)
    retry_delay_seconds: int = Field(default=60, ge=0, le=43_200)
    scan_timeout_seconds: int = Field(default=600, ge=5, le=43_200)
    db_check_seconds: int = Field(default=300, ge=0, le=86_400)
    wait_seconds: int = Field(default=20, ge=0, le=20)

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        return _host_port(value, "a registry HOST[:PORT] (e.g. registry.example.com)", need_port=False)

    @field_validator("ca_file", "password_file")
    @classmethod
    def _files(cls, value: Path | None) -> Path | None:
        return _existing_file(value)

    @field_validator("trivy")
    @classmethod
    def _trivy(cls, value: Path) -> Path:
        if not value.is_file() or not os.access(value, os.X_OK):
            raise ValueError(f"{value}: no executable Trivy there")
        return value

    @field_validator("db_repository")
    @classmethod
    def _db_repository(cls, value: str) -> str:
        host, _, rest = value.partition("/")
        repository, _, tag = rest.rpartition(":")
        try:
            _host_port(host, "", need_port=False)
        except ValueError:
            repository = ""
        if not repository or not _REPOSITORY.match(repository) or not _TAG.match(tag):
            raise ValueError(
                f"{value!r}: must be HOST[:PORT]/REPOSITORY:TAG (e.g. registry.example.com/mirror/trivy-db:2)"
            )
        return value

    @field_validator("findings_topic_arn")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}", value):
            raise ValueError(f"{value!r} is not an SNS topic ARN")
        return value

    @field_validator("findings_threshold")
    @classmethod
    def _threshold(cls, value: str) -> str:
        if value not in SEVERITIES:
            raise ValueError(f"{value!r}: one of {', '.join(SEVERITIES)}")
        return value

    @field_validator("ignore_prefixes")
    @classmethod
    def _ignored(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _prefixes(value)

    @model_validator(mode="after")
    def _timeouts(self) -> WorkerConfig:
        if self.scan_timeout_seconds >= 12 * 3600:
            raise ValueError("scan_timeout_seconds: must stay under 12 hours (SQS's longest visibility)")
        return self

    @property
    def db_repository_name(self) -> str:
        """`mirror/trivy-db` of `registry.example.com/mirror/trivy-db:2`."""
        return self.db_repository.partition("/")[2].rpartition(":")[0]

    @property
    def db_repository_tag(self) -> str:
        return self.db_repository.rpartition(":")[2]


def read_secret(path: Path, what: str) -> str:
    """A secret from its file, stripped; ConfigError naming the key when unreadable or empty."""
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"{what}: {path}: cannot read it ({err.strerror})") from None
    if not value:
        raise ConfigError(f"{what}: {path} is empty")
    return value


_PATH_KEYS = (
    "cert_file",
    "key_file",
    "token_file",
    "endpoint_ca_file",
    "ca_file",
    "password_file",
    "trivy",
    "cache_dir",
)


def _parse(model: type[_Queue], data: Any, base_dir: Path, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    resolved = dict(data)
    for key in _PATH_KEYS:
        value = resolved.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[key] = str(base_dir / value)
    try:
        return model.model_validate(resolved)
    except ValidationError as err:
        raise ConfigError(f"{source}:\n{describe_errors(err)}") from None


def parse_events_config(data: Any, base_dir: Path, source: str = "events config") -> EventsConfig:
    config: EventsConfig = _parse(EventsConfig, data, base_dir, source)
    return config


def parse_worker_config(data: Any, base_dir: Path, source: str = "worker config") -> WorkerConfig:
    config: WorkerConfig = _parse(WorkerConfig, data, base_dir, source)
    return config


def load_events_config(path: Path) -> EventsConfig:
    return parse_events_config(read_document(path), path.resolve().parent, str(path))


def load_worker_config(path: Path) -> WorkerConfig:
    return parse_worker_config(read_document(path), path.resolve().parent, str(path))
