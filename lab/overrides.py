"""The one place where the lab departs from the fleet: endpoints, ports, paths, credentials.

Everything else in a lab registry's config.yml, and in the token service's config, comes from the
stack's settings through the same renderers the fleet's hosts use (host/registry_config.py,
host/token_config.py). If a value below is not an endpoint, a port, a path or a credential,
it does not belong here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from auth.ldap import LdapSettings
from host.contract import TOKEN_PATH
from host.gate_config import ReportsLocation, dump_gate_config, gate_config
from host.registry_config import CloudFrontSettings, NotificationEndpoint, RegistryConfig, TokenAuth
from host.token_config import render_token_service_config
from infra.gate_spec import gate_policies
from infra.secrets import AccessSecrets
from infra.settings import DirectorySettings, Settings, TokenAccess
from infra.token_service import token_service_spec
from lab.scanning import SCANNER_ACCOUNT
from lab.slapd import SlapdHandle

# Lab-only credentials: moto accepts any; the registry reads them from its environment, as it
# reads the instance role's on a host.
S3_ACCESS_KEY = "lab-access-key"
S3_SECRET_KEY = "lab-secret-key"
LAB_USER = "lab"
LAB_BUCKET = "registry-lab"
# nginx stands in for the ALB in front of the token service: it connects from its own loopback
# address, and only that address may name the client in X-Forwarded-For (lab clients are 127.0.0.1).
LAB_LB_ADDRESS = "127.0.0.2"
LAB_TRUSTED_PROXIES = (f"{LAB_LB_ADDRESS}/32",)


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
    token_signing_cert_file: Path | None = None  # token mode: the registry's rootcertbundle


def lab_registry_config(
    settings: Settings, endpoints: LabEndpoints, listen_port: int, debug_port: int
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
        token=lab_token_auth(settings, endpoints),
        cloudfront=cloudfront,
        notifications=(NotificationEndpoint("lab-events", endpoints.events_url, endpoints.events_token),),
    )


def lab_token_auth(settings: Settings, endpoints: LabEndpoints) -> TokenAuth | None:
    """`auth.token` as the fleet renders it; only the realm's host (nginx) and the certificate's path differ."""
    if not isinstance(settings.access, TokenAccess):
        return None
    if endpoints.token_signing_cert_file is None:
        raise ValueError("lab_token_auth: token mode needs the lab's token signing certificate")
    return TokenAuth(
        realm=f"{endpoints.public_url}{TOKEN_PATH}",
        service=settings.registry_host,
        issuer=settings.token_issuer,
        rootcertbundle=str(endpoints.token_signing_cert_file),
    )


def lab_ldap_settings(directory: DirectorySettings, slapd: SlapdHandle, ca_file: str | None = None) -> LdapSettings:
    """The stack's directory settings pointed at the lab slapd: its URL (same scheme), CA (`ca_file`: where
    the service finds it, by default the lab's own copy), service account and base DNs. Filters,
    attributes, group mode and timeouts stay the stack's."""
    ldaps = directory.url.lower().startswith("ldaps://")
    moved = directory.model_copy(
        update={
            "url": slapd.url_ldaps if ldaps else slapd.url_ldap,
            "bind_dn": slapd.bind_dn,
            "user_base_dn": slapd.people_dn,
            # memberOf mode without a base keeps every group; otherwise the lab's groups OU.
            "group_base_dn": slapd.groups_dn if directory.group_base_dn is not None else None,
        }
    )
    return moved.ldap_settings(ca_file or str(slapd.ca_file), slapd.bind_password)


def lab_token_service_config(
    settings: Settings,
    *,
    signing_key_file: Path,
    signing_cert_file: Path,
    user_hashes: Mapping[str, str],
    robot_token_hashes: Mapping[str, str],
    slapd: SlapdHandle | None,
    ldap_ca_file: str | None = None,
) -> str:
    """The token service's config file, from the fleet's spec and renderer; lab paths, hashes and directory
    (`ldap_ca_file`: where the service finds the lab CA, by default the lab's own copy)."""
    access = settings.access
    if not isinstance(access, TokenAccess):
        raise ValueError("lab_token_service_config: the stack runs htpasswd mode; it has no token service")
    if access.ldap is not None and slapd is None:
        raise ValueError("lab_token_service_config: the stack names a directory; the lab needs its slapd")
    secrets = AccessSecrets(user_hashes=user_hashes, ldap_bind_password=slapd.bind_password if slapd else None)
    spec = token_service_spec(settings, secrets, LAB_TRUSTED_PROXIES)
    assert spec is not None  # token mode
    # The scanner's robots (infra.token_service.scan_robots) are the lab's only when it seeds them a token.
    robots = {n: r for n, r in spec.robots.items() if n in access.robots or n in robot_token_hashes}
    spec = dataclasses.replace(spec, robots=robots)
    if access.ldap is not None and slapd is not None:
        spec = dataclasses.replace(spec, ldap=lab_ldap_settings(access.ldap, slapd, ldap_ca_file))
    return render_token_service_config(
        spec,
        signing_key_file=str(signing_key_file),
        signing_cert_file=str(signing_cert_file),
        robot_token_hashes=robot_token_hashes,
    )


def lab_gate_config(
    settings: Settings, upstream_port: int, ca_file: Path, public_key_pem: str, s3_endpoint: str
) -> str:
    """A lab gate's config file, rendered as the fleet renders a host's (host/gate_config.py: the stack's
    protected namespaces and their policies, the stack's public key, the cache); only where its registry and
    its reports are differ: the lab instance on `upstream_port`, verified with the lab CA under the lab
    certificate's name `localhost`, the lab bucket in the lab's moto S3 (`s3_endpoint`, the lab CA), and the
    lab's stand-in for the scanner's robot (lab/scanning.py SCANNER_ACCOUNT)."""
    reports = ReportsLocation(LAB_BUCKET, settings.region)
    data = gate_config(gate_policies(settings), [public_key_pem], reports=reports, scanner_accounts=(SCANNER_ACCOUNT,))
    data.update(
        upstream=f"https://127.0.0.1:{upstream_port}", upstream_ca_file=str(ca_file), upstream_server_name="localhost"
    )
    if "reports" in data:
        data["reports"].update(endpoint_url=s3_endpoint, ca_bundle=str(ca_file))
    return dump_gate_config(data)


# --- a booted host (lab/host_lab.py) ---------------------------------------------------------------
# The host runs the fleet's user-data unchanged; these files, copied into its root before it boots,
# are its only departures: AWS's endpoints are the lab's, and the lab CA is trusted.
LAB_HOST_CA_FILE = "/usr/local/share/ca-certificates/registry-fleet-lab.crt"  # update-ca-certificates keeps it
LAB_HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # the machine's bundle, with the lab CA appended
LAB_HOST_MACHINE_CA_DIR = "/usr/local/share/ca-certificates/machine"  # the machine's own CAs
LAB_HOST_AWS_CLI = "/usr/local/bin/aws"  # before /usr/bin on every PATH of the host (systemd's, cloud-init's)
LAB_HOST_REGISTRY_DROPIN = "/etc/systemd/system/docker-registry.service.d/90-registry-fleet-lab.conf"
# The AWS download host (the SSM agent's bucket) as the host resolves it: a lab server on this address.
LAB_AWS_DOWNLOAD_ADDRESS = "127.0.0.3"


def aws_download_host(region: str) -> str:
    """The host name in host.boot.ssm_agent_url: the region's S3 endpoint."""
    return f"s3.{region}.amazonaws.com"


def lab_host_files(
    *, region: str, s3_endpoint: str, ca_pem: str, machine_ca_bundle: str, machine_local_cas: Mapping[str, str]
) -> dict[str, tuple[str, int]]:
    """(content, mode) of each file the lab adds to a booted host's root.

    - the lab CA, in the CA bundle (curl, apt, pip, the registry) and where update-ca-certificates finds it;
      the bundle is this machine's (Debian's CAs and the machine's own, `machine_local_cas` by file name:
      the host's apt and pip go out through the machine's egress, which may intercept TLS, as CI's does);
    - `aws`: the AWS CLI with the lab's S3/KMS/Secrets Manager endpoint and credentials (an instance
      role's on a host), first on PATH; the fleet's scripts call `aws` unchanged;
    - the registry's environment: the lab's S3 endpoint (config.yml stays the fleet's) and credentials;
    - /etc/hosts: the region's S3 host (the SSM agent's download) is the lab's download server.
    """
    aws = f"""#!/bin/sh
# registry-fleet lab (lab/overrides.py): the AWS CLI against the lab's moto.
export AWS_ACCESS_KEY_ID={S3_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={S3_SECRET_KEY} AWS_CA_BUNDLE={LAB_HOST_CA_FILE}
exec /usr/bin/aws --endpoint-url {s3_endpoint} "$@"
"""
    dropin = f"""# registry-fleet lab (lab/overrides.py): the lab's S3 endpoint and credentials.
[Service]
Environment=AWS_ACCESS_KEY_ID={S3_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={S3_SECRET_KEY}
Environment=REGISTRY_STORAGE_S3_REGIONENDPOINT={s3_endpoint}
"""
    hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
    hosts += f"{LAB_AWS_DOWNLOAD_ADDRESS} {aws_download_host(region)}\n"
    bundle = machine_ca_bundle if machine_ca_bundle.endswith("\n") else machine_ca_bundle + "\n"
    local = {f"{LAB_HOST_MACHINE_CA_DIR}/{name}": (pem, 0o644) for name, pem in machine_local_cas.items()}
    return {
        **local,
        LAB_HOST_CA_FILE: (ca_pem, 0o644),
        LAB_HOST_CA_BUNDLE: (bundle + ca_pem, 0o644),
        LAB_HOST_AWS_CLI: (aws, 0o755),
        LAB_HOST_REGISTRY_DROPIN: (dropin, 0o644),
        "/etc/hosts": (hosts, 0o644),
    }
