"""A registry host booted for real: the fleet's user-data, run by cloud-init and systemd, with the lab as AWS.

`HostLab(settings, state_dir).up()` starts the lab (lab/lab.py: moto as S3, KMS and Secrets Manager
over TLS, slapd, the CDN edge, the lab CA) and puts there what a stack's `pulumi up` puts in AWS for
its hosts: the host's secrets in Secrets Manager (the HTTP secret, the host key, the CDN key, the
token service's config and signing key) and the token service's artifact in the bucket. It renders
the user-data exactly as the fleet does (`components.fleet.RegistryFleet._render`, through
`host.boot.render_host`), from the lab's ARNs, bucket, key and certificates. `host_files()` is what
a boot copies into its root: that user-data as the NoCloud seed, and the lab's overrides; the boot
test (tests/test_host_boot.py) boots a Debian root (lab/host_root.py) with them in a container
(lab/nspawn.py). nginx stands in for the load balancer in front of the host (the registry's port,
and the token service's for the realm's path), as it does for the lab's own registries. On a stack
that protects namespaces the host runs the signature gate: its config in user-data names the public key
of the lab's signing key (what the recording takes from the mock KMS: here the key the lab made in moto,
so what `fleet sign --lab` signs is what the booted gate trusts), and nginx sends the gate (port
GATE_PORT) what the ALB's gate rules send it.

The departures, all in lab/overrides.py or named here:
- endpoints: the registry's public URL is the stand-in load balancer's; the AWS CLI and the registry
  reach the lab's moto; the SSM agent's download host resolves to a lab server (LAB_AWS_DOWNLOAD_ADDRESS)
  that serves a stand-in agent package (a unit that only sleeps: the real agent cannot register with
  the lab);
- the lab CA (and this machine's CAs: the host's apt and pip go out through its egress) is trusted by
  the host, and the directory is the lab's slapd (its CA in user-data);
- the hosts' architecture is this machine's (the stack's may be arm64).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.fleet import (
    FleetCdn,
    FleetGate,
    FleetScanEvents,
    FleetTokenService,
    RegistryFleet,
    RegistryFleetArgs,
)
from host.artifact import build_artifact
from host.boot import ssm_agent_url
from host.contract import (
    GATE_PORT,
    HOST_INTERNAL_NAME,
    REGISTRY_PORT,
    SSM_AGENT_UNIT,
    TOKEN_LDAP_CA_FILE,
    TOKEN_SERVICE_PORT,
    TOKEN_SIGNING_CERT_FILE,
    TOKEN_SIGNING_KEY_FILE,
)
from infra.gate_spec import gate_policies
from infra.settings import Settings, TokenAccess
from lab import nspawn, supervisor
from lab.accounts import LabAccount, secret_hashes
from lab.host_root import host_root
from lab.lab import Lab, LabState, s3_client
from lab.nginx import NginxSite, write_nginx_conf
from lab.overrides import (
    LAB_AWS_DOWNLOAD_ADDRESS,
    LAB_BUCKET,
    LAB_HOST_CA_BUNDLE,
    LAB_LB_ADDRESS,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    aws_download_host,
    lab_host_files,
    lab_token_service_config,
)

NGINX_BINARY = "/usr/sbin/nginx"
SEED_DIR = "/var/lib/cloud/seed/nocloud"
MACHINE_LOCAL_CA_DIR = "/usr/local/share/ca-certificates"  # this machine's own CAs (update-ca-certificates)
DOWNLOAD_PORT = 443  # host.boot.ssm_agent_url has no port


def machine_architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class HostLabState:
    lab: LabState
    user_data: str
    files: dict[str, nspawn.FileSpec]  # the seed and the lab's overrides, copied into each boot's upper layer
    lb_url: str  # the stand-in load balancer in front of the booted host
    secret_values: dict[str, str]  # label -> every secret value the host gets; none may leak
    services: list[supervisor.Service] = field(default_factory=list)


class HostLab:
    """The lab around one booted host at a time (hosts share the machine's network and ports)."""

    def __init__(self, settings: Settings, state_dir: Path):
        self.settings = settings
        self.architecture = machine_architecture()  # the stack's instance type may be Graviton (arm64)
        self.state_dir = state_dir.resolve()
        self.state: HostLabState | None = None

    def up(self) -> HostLabState:
        s = self.settings
        # The host certificate also names HOST_INTERNAL_NAME: the host's gate checks its registry under it.
        lab = Lab(s, self.state_dir / "lab", hostnames=(aws_download_host(s.region), HOST_INTERNAL_NAME)).up()
        services: list[supervisor.Service] = []
        try:
            self.state = self._prepare(lab, services)
        except BaseException:
            for service in reversed(services):
                supervisor.stop(service)
            Lab.down(Path(lab.state_dir))
            raise
        return self.state

    def down(self) -> None:
        if self.state is None:
            return
        for service in reversed(self.state.services):
            supervisor.stop(service)
        Lab.down(Path(self.state.lab.state_dir))
        self.state = None

    # --- what `pulumi up` puts in AWS for the hosts -------------------------------------------------

    def _aws(self, service: str, lab: LabState) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=lab.s3_endpoint,
            region_name=self.settings.region,
            verify=lab.ca_file,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )

    def _prepare(self, lab: LabState, services: list[supervisor.Service]) -> HostLabState:
        s = self.settings
        pki = Path(lab.state_dir) / "pki"
        ca_pem = Path(lab.ca_file).read_text()
        cert_pem = (pki / "server.crt").read_text()
        values = {
            "http-secret": secrets.token_hex(32),  # the fleet's: 64 letters and digits
            "tls-key": (pki / "server.key").read_text(),
        }
        if s.cdn.enabled:
            values["cloudfront-key"] = (pki / "cdn-signing.pem").read_text()
        token = None
        secret_values = dict(values)  # label -> value; the config's own secrets are listed one by one
        if isinstance(s.access, TokenAccess):
            # The bearer the registry sends to the scan events forwarder (components/scanning.py makes one per stack).
            values["scan-events-token"] = secrets.token_hex(24)
            secret_values["scan-events token"] = values["scan-events-token"]
            accounts = [LabAccount(e["name"], e["kind"], e["password"], tuple(e["groups"])) for e in lab.accounts]
            slapd = lab.slapd() if lab.directory else None
            user_hashes = secret_hashes(accounts, "local")
            robot_hashes = secret_hashes(accounts, "robot")
            values["token-config"] = lab_token_service_config(
                s,
                signing_key_file=Path(TOKEN_SIGNING_KEY_FILE),
                signing_cert_file=Path(TOKEN_SIGNING_CERT_FILE),
                user_hashes=user_hashes,
                robot_token_hashes=robot_hashes,
                slapd=slapd,
                ldap_ca_file=TOKEN_LDAP_CA_FILE,
            )
            values["token-signing-key"] = Path(lab.token["signing_key"]).read_text()
            secret_values["token-signing-key"] = values["token-signing-key"]
            secret_values.update({f"bcrypt hash of user {n}": h for n, h in user_hashes.items()})
            secret_values.update({f"token hash of robot {n}": h for n, h in robot_hashes.items()})
            secret_values.update({f"password of {a.kind} {a.name}": a.password for a in accounts})
            if slapd is not None:
                secret_values["directory bind password"] = slapd.bind_password
        manager = self._aws("secretsmanager", lab)
        arns = {
            label: str(manager.create_secret(Name=f"registry-fleet/{s.stack}/{label}", SecretString=value)["ARN"])
            for label, value in values.items()
        }
        s3 = s3_client(lab.s3_endpoint, lab.ca_file, s.region)
        rule = s3.get_bucket_encryption(Bucket=LAB_BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
        kms_key_arn = str(rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"])

        lb_url = self._start_lb(lab, services)
        if isinstance(s.access, TokenAccess):
            artifact = build_artifact()
            s3.put_object(Bucket=LAB_BUCKET, Key=artifact.key, Body=artifact.content)
            signing_cert = Path(lab.token["signing_cert"]).read_text()
            token = FleetTokenService(
                service=s.registry_host,
                issuer=s.token_issuer,
                target_group_arn="lab",
                config_secret_arn=arns["token-config"],
                config_version_id="lab",
                signing_key_secret_arn=arns["token-signing-key"],
                signing_key_secret_arns=[arns["token-signing-key"]],
                signing_key_version_id="lab",
                signing_cert_pem=signing_cert,
                trust_bundle_pem=signing_cert,
                artifact_key=artifact.key,
                artifact_sha256=artifact.sha256,
                pip_index_url=s.access.pip_index_url,
                # The lab's directory: its CA (the stack's would be its own directory's).
                ldap_ca_pem=ca_pem if s.access.ldap is not None else None,
            )
        gate = None
        if lab.signing:  # the lab made the stack's signing key: the stack protects namespaces
            public_key = Path(lab.signing["public_key_file"]).read_text()
            gate = FleetGate(
                tuple(lab.signing["namespaces"]), public_key, target_group_arn="lab", policies=gate_policies(s)
            )
        scan_events = None
        if token is not None:
            # The forwarder needs the queue only when events arrive: a queue URL of the stack's shape is enough to
            # boot (the boot test checks the unit, its files and its TLS; the scan pipeline is the lab's).
            scan_events = FleetScanEvents(
                queue_url=f"https://sqs.{s.region}.amazonaws.com/{LAB_ACCOUNT}/reg-{s.stack}-scan",
                queue_arn=f"arn:aws:sqs:{s.region}:{LAB_ACCOUNT}:reg-{s.stack}-scan",
                key_arn=kms_key_arn,
                token_secret_arn=arns["scan-events-token"],
                token_version_id="lab",
            )
        args = RegistryFleetArgs(
            environment=s.environment,
            region=s.region,
            name_prefix=f"reg-{s.stack}",
            public_url=lb_url,  # the stand-in load balancer: clients and the realm use it
            instance_type=s.fleet.instance_type,
            architecture=self.architecture,
            debian_release=s.fleet.debian_release,
            min_size=1,
            max_size=1,
            desired_capacity=1,
            root_volume_gib=s.fleet.root_volume_gib,
            vpc_id="lab",
            private_subnet_ids=[],
            lb_security_group_id="lab",
            target_group_arn="lab",
            bucket_name=LAB_BUCKET,
            bucket_arn=f"arn:aws:s3:::{LAB_BUCKET}",
            kms_key_arn=kms_key_arn,
            chunk_size_bytes=s.storage.chunk_size_mib * 1024 * 1024,
            ca_cert_pem=ca_pem,
            host_cert_pem=cert_pem,
            host_key_pem="(in Secrets Manager)",
            tags={},
            cdn=(
                FleetCdn(lab.edge_url, lab.key_pair_id, "(in Secrets Manager)", s.cdn.signed_url_seconds)
                if s.cdn.enabled
                else None
            ),
            token=token,
            gate=gate,
            scan_events=scan_events,
        )
        user_data = RegistryFleet._render(
            args,
            {
                "bucket": LAB_BUCKET,
                "key": kms_key_arn,
                "ca": ca_pem,
                "cert": cert_pem,
                "arns": {k: v for k, v in arns.items() if not k.startswith(("token-", "scan-events-"))},
                "cdn_url": lab.edge_url if s.cdn.enabled else "",
                "cdn_key_id": lab.key_pair_id if s.cdn.enabled else "",
                "token_config_arn": arns.get("token-config", ""),
                "token_signing_key_arn": arns.get("token-signing-key", ""),
                "token_signing_cert": token.signing_cert_pem if token else "",
                "token_trust_bundle": token.trust_bundle_pem if token else "",
                "gate_public_key": gate.public_key_pem if gate else "",
                "scan_queue_url": scan_events.queue_url if scan_events else "",
                "scan_token_arn": scan_events.token_secret_arn if scan_events else "",
            },
        )
        self._start_download_server(lab, services)

        files = {
            f"{SEED_DIR}/user-data": nspawn.FileSpec(user_data.encode(), 0o600),
            f"{SEED_DIR}/meta-data": nspawn.FileSpec(
                f"instance-id: i-lab-{s.stack}\nlocal-hostname: {s.stack}-registry-host\n".encode(), 0o600
            ),
        }
        return HostLabState(lab, user_data, files, lb_url, secret_values, services)

    def _start_lb(self, lab: LabState, services: list[supervisor.Service]) -> str:
        """nginx as the load balancer: the host's registry port, and its token service's for the realm."""
        d = self.state_dir / "lb"
        pki = Path(lab.state_dir) / "pki"
        ports = {"https": supervisor.free_port(), "http": supervisor.free_port()}
        conf = write_nginx_conf(
            NginxSite(
                https_port=ports["https"],
                http_port=ports["http"],
                upstreams=(REGISTRY_PORT,),
                cert_file=pki / "server.crt",
                key_file=pki / "server.key",
                ca_file=Path(lab.ca_file),
                state_dir=d,
                token_port=TOKEN_SERVICE_PORT if isinstance(self.settings.access, TokenAccess) else None,
                source_address=LAB_LB_ADDRESS,
                worker_user="root" if os.geteuid() == 0 else None,
                gate_upstreams=(GATE_PORT,) if lab.signing else (),
                gate_namespaces=tuple(lab.signing["namespaces"]) if lab.signing else (),
            )
        )
        service = supervisor.Service(
            "host-lb",
            [NGINX_BINARY, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"), "-g", "daemon off;"],
            str(d / "nginx.log"),
            ports,
            env=supervisor.clean_env({}),
        )
        supervisor.start(service, cwd=d)
        services.append(service)
        supervisor.wait_ready(service, lambda: supervisor.port_open(ports["https"]))
        return f"https://127.0.0.1:{ports['https']}"

    def _start_download_server(self, lab: LabState, services: list[supervisor.Service]) -> None:
        """The SSM agent's download: a stand-in package at the path host.boot.ssm_agent_url names."""
        s = self.settings
        root = self.state_dir / "downloads"
        url = ssm_agent_url(s.region, self.architecture)
        path = url.split(aws_download_host(s.region), 1)[1]
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        build_stand_in_ssm_agent(target, self.architecture)
        if _address_in_use(LAB_AWS_DOWNLOAD_ADDRESS, DOWNLOAD_PORT):
            raise RuntimeError(f"{LAB_AWS_DOWNLOAD_ADDRESS}:{DOWNLOAD_PORT} is taken: another host lab runs?")
        pki = Path(lab.state_dir) / "pki"
        service = supervisor.Service(
            "aws-downloads",
            [
                sys.executable, "-m", "lab.host_lab", "--address", LAB_AWS_DOWNLOAD_ADDRESS,
                "--port", str(DOWNLOAD_PORT), "--cert", str(pki / "server.crt"), "--key", str(pki / "server.key"),
                "--root", str(root),
            ],
            str(self.state_dir / "aws-downloads.log"),
            {"https": DOWNLOAD_PORT},
            env=supervisor.clean_env({}),
        )  # fmt: skip
        supervisor.start(service, cwd=Path(__file__).resolve().parent.parent)
        services.append(service)
        supervisor.wait_ready(service, lambda: _address_in_use(LAB_AWS_DOWNLOAD_ADDRESS, DOWNLOAD_PORT))

    # --- booting ------------------------------------------------------------------------------------

    def host_files(self) -> dict[str, nspawn.FileSpec]:
        """The seed and the overrides for a boot (copies: nothing of the machine is mounted)."""
        assert self.state is not None, "HostLab.up() first"
        lab = self.state.lab
        local = Path(MACHINE_LOCAL_CA_DIR)
        overrides = lab_host_files(
            region=self.settings.region,
            s3_endpoint=lab.s3_endpoint,
            ca_pem=Path(lab.ca_file).read_text(),
            machine_ca_bundle=Path(LAB_HOST_CA_BUNDLE).read_text(),
            machine_local_cas={p.name: p.read_text() for p in sorted(local.rglob("*.crt"))} if local.is_dir() else {},
        )
        files = {path: nspawn.FileSpec(content.encode(), mode) for path, (content, mode) in overrides.items()}
        return {**files, **self.state.files}


LAB_ACCOUNT = "123456789012"  # moto's account: the ARNs of the lab's secrets name it


def build_stand_in_ssm_agent(target: Path, architecture: str) -> None:
    """A package named like the SSM agent whose unit only sleeps (the real agent cannot reach SSM here)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(
            f"Package: amazon-ssm-agent\nVersion: 0.0.0-lab\nArchitecture: {architecture}\n"
            "Maintainer: registry-fleet lab <lab@localhost>\n"
            "Description: registry-fleet lab stand-in for the SSM agent (a unit that sleeps)\n"
        )
        unit = root / "lib" / "systemd" / "system" / f"{SSM_AGENT_UNIT}.service"
        unit.parent.mkdir(parents=True)
        unit.write_text(
            "[Unit]\nDescription=registry-fleet lab stand-in for the SSM agent\n\n"
            "[Service]\nExecStart=/bin/sleep infinity\nDynamicUser=yes\n\n[Install]\nWantedBy=multi-user.target\n"
        )
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(root), str(target)],
            check=True,
            capture_output=True,
            timeout=60,
        )


def secret_needles(value: str) -> list[str]:
    """What of a secret value to look for in a text: the value, or for a multi-line one (a PEM key) each
    line long enough to be its own (a base64 line of the key; armour lines are public)."""
    lines = [line.strip() for line in value.strip().splitlines()]
    if len(lines) == 1:
        return [lines[0]]
    return [line for line in lines if len(line) >= 16 and not line.startswith("-----")]


def find_leaks(texts: dict[str, str], secret_values: dict[str, str]) -> list[str]:
    """`"LABEL in NAME"` for every secret (by label, never by value) found in a text (by name)."""
    found = []
    for label, value in secret_values.items():
        needles = secret_needles(value)
        for name, text in texts.items():
            if any(needle in text for needle in needles):
                found.append(f"{label} in {name}")
    return found


def listening_sockets(ss_output: str) -> set[tuple[str, str]]:
    """(process, local address) of every listening socket a process of the host holds. The host shares
    the machine's network: `ss` lists the machine's sockets too, but names only the host's processes."""
    found = set()
    for line in ss_output.splitlines():
        process = re.search(r'users:\(\("([^"]+)"', line)
        if process:
            found.add((process.group(1), line.split()[4]))
    return found


# An Authorization header with its credential, as the registry logs a notification endpoint's headers
# (`headers=map[Authorization:[Bearer ...]]`) or a client's request.
_CREDENTIAL_HEADER = re.compile(r"(authorization\W{0,12}(?:bearer|basic)\s+)([A-Za-z0-9._~+/=-]{8,})", re.I)


def credential_headers(log: str) -> list[str]:
    """The lines of `log` that carry an Authorization header's credential, the credential masked."""
    return [_CREDENTIAL_HEADER.sub(r"\1[masked]", line) for line in log.splitlines() if _CREDENTIAL_HEADER.search(line)]


def _address_in_use(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def unpack_root(suite: str, into: Path) -> Path:
    """A fresh copy of the cached root of `suite` at `into` (the overlay's lower layer)."""
    if into.exists():
        shutil.rmtree(into)
    return host_root(suite, into)


# --- the download server (python -m lab.host_lab) ------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="serve files over HTTPS (the AWS download host of a booted host)")
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.root)
    server = http.server.ThreadingHTTPServer((args.address, args.port), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"serving {args.root} on https://{args.address}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
