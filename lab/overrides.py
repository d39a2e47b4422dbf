"""The one place where the lab departs from the fleet: endpoints, ports, paths, credentials.

Everything else in a lab registry's config.yml comes from the stack's settings through the same
renderer the fleet's hosts use (components/registry_config.py). If a value below is not an
endpoint, a port, a path or a credential, it does not belong here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.registry_config import CloudFrontSettings, NotificationEndpoint, RegistryConfig
from infra.settings import Settings

# Lab-only credentials: moto accepts any; the registry reads them from its environment, as it
# reads the instance role's on a host.
S3_ACCESS_KEY = "lab-access-key"
S3_SECRET_KEY = "lab-secret-key"
LAB_USER = "lab"
LAB_BUCKET = "registry-lab"


@dataclass(frozen=True)
class LabEndpoints:
    """Where each lab process listens and keeps its files."""

    public_url: str  # nginx, standing in for the ALB
    s3_endpoint: str  # moto, standing in for S3
    edge_url: str  # the CDN edge, standing in for CloudFront (ends with "/")
    events_url: str  # the event receiver
    events_token: str
    kms_key_id: str  # a key made in moto's KMS
    key_pair_id: str  # the lab CDN key's id
    cert_file: Path
    key_file: Path
    htpasswd_file: Path
    cdn_private_key_file: Path


def lab_registry_config(
    settings: Settings, endpoints: LabEndpoints, listen_port: int, debug_port: int, drain_file: Path
) -> RegistryConfig:
    cloudfront = None
    if settings.cdn.enabled:
        cloudfront = CloudFrontSettings(
            base_url=endpoints.edge_url,
            private_key_file=str(endpoints.cdn_private_key_file),
            key_pair_id=endpoints.key_pair_id,
            duration_seconds=settings.cdn.signed_url_seconds,
        )
    return RegistryConfig(
        environment=settings.environment,
        public_url=endpoints.public_url,
        bucket=LAB_BUCKET,
        region=settings.region,
        listen_addr=f"127.0.0.1:{listen_port}",
        debug_addr=f"127.0.0.1:{debug_port}",
        tls_cert_file=str(endpoints.cert_file),
        tls_key_file=str(endpoints.key_file),
        kms_key_id=endpoints.kms_key_id,
        s3_endpoint=endpoints.s3_endpoint,
        chunk_size_bytes=settings.storage.chunk_size_mib * 1024 * 1024,
        htpasswd_file=str(endpoints.htpasswd_file),
        drain_file=str(drain_file),
        cloudfront=cloudfront,
        notifications=(NotificationEndpoint("lab-events", endpoints.events_url, endpoints.events_token),),
    )
