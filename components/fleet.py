"""RegistryFleet: the dedicated registry hosts (practices 1, 7 and 8).

Creates an Auto Scaling group of single-purpose Debian hosts (the newest official image of
`fleet.debianRelease`, 13 by default) in the private subnets of at least two zones: a launch
template with IMDSv2 required (hop limit 1), an encrypted root volume, no public IP, no SSH key
(operators use SSM Session Manager); an instance role that may touch only the registry bucket, its
KMS key and the fleet's own secrets; a security group that admits only the load balancer. ELB health
checks replace a host whose registry or token service stops answering; while S3 is unreachable the
registry answers `503 UNAVAILABLE`, which the load balancer counts as alive, so an S3 outage leaves
every host in place. Any launch-template change rolls the fleet through an instance
refresh, and every secret a host reads at boot is tagged on its instances by version, so rotating
one (`fleet.httpSecretRotation`, a token signing generation) rolls the fleet onto it.

Access (practices 3 and 4): in token mode the registry trusts tokens signed by the token service
that runs beside it on every host (`auth.token`; realm `https://<registry host>/auth`, which the
load balancer routes to the service), and the hosts admit the load balancer on the service's port
and may reach the company directory on its port. In htpasswd mode (small non-prod stacks) one
generated admin account signs in with a password.

Signed images (practice 6): on a token-mode stack that protects a namespace, the signature gate runs
beside the token service (`host.boot.GateBoot`): the hosts admit the load balancer on its port, join
its target group, and get its public config (the stack's public signing key, the protected namespaces)
in user-data. The instance role may read the signing key's public half, never sign.

Vulnerability scans (practice 5, token mode): the registry notifies the scan events forwarder on each host's
loopback (`host.boot.ScanEventsBoot`; its bearer from Secrets Manager into the registry's environment at each
start, never in user-data), and the instance role may send to the scan queue (components/scanning.py).

Secrets (the shared `http.secret`, the TLS host key, the htpasswd file, the CloudFront signing
key; in token mode the service's config and signing key, made by `components.access`) are Pulumi
secrets stored in Secrets Manager; hosts read them at boot. User-data holds only their ARNs, never
a value: it is rendered by the pure functions of `host.registry_config` and `host.boot` from
resolved, non-secret outputs; the ports and paths are the host contract's (`host.contract`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from auth.shared_lockout import TABLE_ACTIONS
from components.errors import ComponentInputError
from components.iam import assume_role_policy, policy_document
from components.stored_secret import stored_secret
from host.boot import BEARER_MARK, GateBoot, HostBoot, ScanEventsBoot, SecretFile, TokenServiceBoot, render_host
from host.contract import (
    CA_CERT_FILE,
    CLOUDFRONT_KEY_FILE,
    DEBIAN_AMI_NAME,
    DEBIAN_AMI_OWNER,
    DEBIAN_SUITES,
    GATE_PORT,
    HOST_CERT_FILE,
    HOST_KEY_FILE,
    HTPASSWD_FILE,
    REGISTRY_PORT,
    SCAN_EVENTS_IGNORED_ACTIONS,
    SCAN_EVENTS_IGNORED_MEDIA_TYPES,
    SCAN_EVENTS_PATH,
    SCAN_EVENTS_PORT,
    TOKEN_PATH,
    TOKEN_SERVICE_PORT,
    TOKEN_TRUST_BUNDLE_FILE,
)
from host.gate_config import GatePolicy, ReportsLocation, render_gate_config
from host.registry_config import (
    CloudFrontSettings,
    NotificationEndpoint,
    RegistryConfig,
    TokenAuth,
    notification_endpoints_env,
    render_registry_config,
)
from host.scan_config import render_events_config
from host.scanner_host import REGISTRY_HOST_ROLE, ROLE_TAG
from host.user_data import encode_user_data

SSM_CORE_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
ADMIN_USER = "admin"

# Instance tag naming the token service config version a host booted with: a new version (a user,
# a team, a rotated robot token) changes the launch template, so the fleet rolls onto it.
TOKEN_CONFIG_VERSION_TAG = "registry-fleet:token-config-version"
# Likewise the signing key's version. Hosts read the key at each start of the service, so the fleet must
# roll only once the secret holds the current generation's key: the tag makes the launch template wait
# for the new secret version (a host that booted earlier would pair the old key with the new certificate).
TOKEN_SIGNING_KEY_VERSION_TAG = "registry-fleet:token-signing-key-version"
# And the version of each of the fleet's own secrets (`http-secret`, `tls-key`, `htpasswd`, `cloudfront-key`):
# a host reads them at each start of the registry, so without the tag a new value (a rotated http.secret)
# would reach a host only when its registry restarts, and hosts would disagree on the shared http.secret.
HOST_SECRET_VERSION_TAG = "registry-fleet:{label}-version"


def token_realm(public_url: str) -> str:
    """Where clients get tokens: the realm path on the registry's own URL (the ALB routes it)."""
    return f"{public_url.rstrip('/')}{TOKEN_PATH}"


def hardened_host_template(root_volume_gib: int, security_group_id: pulumi.Input[str]) -> dict[str, Any]:
    """The launch template inputs every host of the stack shares (registry hosts and scanner workers): IMDSv2
    only (one hop, no instance tags), an encrypted gp3 root volume, no public address, detailed monitoring."""
    return {
        "ebs_optimized": "true",
        "metadata_options": {
            "http_endpoint": "enabled",
            "http_tokens": "required",
            "http_put_response_hop_limit": 1,
            "instance_metadata_tags": "disabled",
        },
        "block_device_mappings": [
            {
                "device_name": "/dev/xvda",
                "ebs": {
                    "volume_size": root_volume_gib,
                    "volume_type": "gp3",
                    "encrypted": "true",
                    "delete_on_termination": "true",
                },
            }
        ],
        "network_interfaces": [
            {
                "associate_public_ip_address": "false",
                "security_groups": [security_group_id],
                "delete_on_termination": "true",
            }
        ],
        "monitoring": {"enabled": True},
    }


@dataclass
class FleetCdn:
    base_url: pulumi.Input[str]
    key_pair_id: pulumi.Input[str]
    private_key_pem: pulumi.Input[str]
    duration_seconds: int


@dataclass
class FleetTokenService:
    """Token mode: the token service beside the registry, as `RegistryAccess.fleet_token_service` gives it
    (components.access made its secrets)."""

    service: str  # auth.token.service, the tokens' aud: the registry's host name
    issuer: str  # auth.token.issuer, the tokens' iss
    target_group_arn: pulumi.Input[str]  # the load balancer's token target group
    config_secret_arn: pulumi.Input[str]
    config_version_id: pulumi.Input[str]
    signing_key_secret_arn: pulumi.Input[str]  # the current generation's: named in user-data
    # Every live generation's key secret: the role may read them all (hosts from an older template
    # version, e.g. mid-rotation or after a rolled-back refresh, read the generation it names).
    signing_key_secret_arns: Sequence[pulumi.Input[str]]
    signing_key_version_id: pulumi.Input[str]
    signing_cert_pem: pulumi.Input[str]  # the current generation's: the service's signing_cert
    trust_bundle_pem: pulumi.Input[str]  # every live generation's: the registry's rootcertbundle
    artifact_key: str
    artifact_sha256: str
    pip_index_url: str
    ldap_ca_pem: str | None = None
    # The directory servers: the only ranges hosts may reach on the directory's port.
    ldap_cidrs: Sequence[str] = ()
    ldap_port: int | None = None
    # The lockout table the service shares with every host (auth/shared_lockout.py).
    lockout_table_arn: pulumi.Input[str] | None = None


@dataclass
class FleetGate:
    """Token mode with protected namespaces: the signature gate beside the token service on every host."""

    namespaces: tuple[str, ...]  # the protected namespaces (infra.settings.protected_namespaces)
    public_key_pem: pulumi.Input[str]  # the stack's signing key's public key (components.signing)
    target_group_arn: pulumi.Input[str]  # the load balancer's gate target group
    # Each namespace's policy (infra/gate_spec.py); None: every namespace requires signatures only. A policy
    # that reads scan reports points the gate at the registry bucket (the instance role reads it already).
    policies: Mapping[str, GatePolicy] | None = None


@dataclass
class FleetScanEvents:
    """Token mode: the scan events forwarder on every host (components.scanning.ScanQueue made the queue and
    the bearer token); the registry notifies it of every push."""

    queue_url: pulumi.Input[str]
    queue_arn: pulumi.Input[str]
    key_arn: pulumi.Input[str]  # the scanning key: sending to the encrypted queue needs GenerateDataKey
    token_secret_arn: pulumi.Input[str]
    token_version_id: pulumi.Input[str]


@dataclass
class RegistryFleetArgs:
    environment: str
    region: str
    name_prefix: str
    public_url: str
    instance_type: str
    architecture: str  # "arm64" | "amd64"
    debian_release: int  # a key of host.contract.DEBIAN_SUITES: the newest image of it boots
    min_size: int
    max_size: int
    desired_capacity: int
    root_volume_gib: int
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    lb_security_group_id: pulumi.Input[str]
    target_group_arn: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    chunk_size_bytes: int
    ca_cert_pem: pulumi.Input[str]
    host_cert_pem: pulumi.Input[str]
    host_key_pem: pulumi.Input[str]
    tags: dict[str, str]
    cdn: FleetCdn | None = None
    # Set: token auth with the token service; None: htpasswd with one generated admin account.
    token: FleetTokenService | None = None
    # Set (token mode only): the signature gate runs on every host; None: no gate.
    gate: FleetGate | None = None
    # The stack's signing key: the instance role may read its public key (never sign).
    signing_key_arn: pulumi.Input[str] | None = None
    # Set (token mode only): the registry notifies the scan events forwarder, which sends to the scan queue.
    scan_events: FleetScanEvents | None = None
    # A pinned AMI; None: the newest Debian image of `debian_release` for the architecture (looked up at each up).
    image_id: str | None = None
    # Bump it for a new http.secret (the generated value is replaced; the fleet rolls onto it).
    http_secret_rotation: int = 1


def instance_policy(
    bucket_arn: str,
    kms_key_arn: str,
    secret_arns: list[str],
    signing_key_arn: str | None = None,
    lockout_table_arn: str | None = None,
    scan_queue_arn: str | None = None,
    scan_key_arn: str | None = None,
) -> str:
    """Only what the registry does: its bucket, its key, its own secrets; the public half of the stack's
    signing key (the gate's key comes in its config; reading it from KMS is a check, not a need); in token
    mode the token service's lockout table (the four item calls it makes, on that table only)."""
    signing: list[dict[str, Any]] = []
    if signing_key_arn is not None:
        signing.append(
            {
                "Sid": "SigningPublicKey",
                "Effect": "Allow",
                "Action": ["kms:GetPublicKey", "kms:DescribeKey"],
                "Resource": signing_key_arn,
            }
        )
    lockout = (
        [
            {
                "Sid": "LockoutTable",
                "Effect": "Allow",
                "Action": list(TABLE_ACTIONS),
                "Resource": lockout_table_arn,
            }
        ]
        if lockout_table_arn
        else []
    )
    scan: list[dict[str, Any]] = (
        [
            {"Sid": "ScanQueueSend", "Effect": "Allow", "Action": "sqs:SendMessage", "Resource": scan_queue_arn},
            {
                "Sid": "ScanQueueKey",
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": scan_key_arn,
            },
        ]
        if scan_queue_arn and scan_key_arn
        else []
    )
    return policy_document(
        {
            "Sid": "RegistryBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
            "Resource": bucket_arn,
        },
        {
            "Sid": "RegistryObjects",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:ListMultipartUploadParts",
                "s3:AbortMultipartUpload",
            ],
            "Resource": f"{bucket_arn}/*",
        },
        {
            "Sid": "RegistryKey",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt"],
            "Resource": kms_key_arn,
        },
        {
            "Sid": "OwnSecrets",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret_arns,
        },
        *signing,
        *lockout,
        *scan,
    )


class RegistryFleet(pulumi.ComponentResource):
    security_group_id: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    asg_name: pulumi.Output[str]
    role_name: pulumi.Output[str]  # the hosts' instance role (components/host_metrics.py adds the agent's policy)
    user_data: pulumi.Output[str]
    # htpasswd mode only (a secret); None in token mode.
    admin_password: pulumi.Output[str] | None
    # Token mode only; None in htpasswd mode.
    token_realm: str | None
    secret_arns: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: RegistryFleetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryFleet", name, None, opts)
        if args.token is not None and args.token.ldap_cidrs and args.token.ldap_port is None:
            raise ComponentInputError("RegistryFleet: token.ldap_cidrs is set without token.ldap_port")
        if args.gate is not None and args.token is None:
            raise ComponentInputError("RegistryFleet: gate is set without token: the gate runs in token mode only")
        if args.scan_events is not None and args.token is None:
            raise ComponentInputError(
                "RegistryFleet: scan_events is set without token: the forwarder runs in token mode only"
            )
        if args.debian_release not in DEBIAN_SUITES:
            raise ComponentInputError(
                f"RegistryFleet: debian_release is {args.debian_release!r}; hosts run one of "
                f"{', '.join(map(str, DEBIAN_SUITES))} (host.contract.DEBIAN_SUITES)"
            )
        tags = args.tags
        child = pulumi.ResourceOptions(parent=self)
        token = args.token

        # --- secrets: generated or handed in as Pulumi secrets, stored in Secrets Manager ---
        # One http.secret for every host: uploads hop between hosts behind the load balancer.
        http_secret = random.RandomPassword(
            f"{name}-http-secret-random",
            length=64,
            special=False,
            # A new rotation replaces the value; its new secret version rolls the fleet (HOST_SECRET_VERSION_TAG).
            # None for the first: the value stacks generated before the setting existed stays.
            keepers={"rotation": str(args.http_secret_rotation)} if args.http_secret_rotation > 1 else None,
            opts=child,
        )
        values: dict[str, pulumi.Input[str]] = {
            "http-secret": http_secret.result,
            "tls-key": args.host_key_pem,
        }
        self.admin_password = None
        if token is None:
            admin = random.RandomPassword(f"{name}-admin-password-random", length=32, special=False, opts=child)
            values["htpasswd"] = admin.bcrypt_hash.apply(lambda h: f"{ADMIN_USER}:{h}\n")
            self.admin_password = pulumi.Output.secret(admin.result)
        if args.cdn is not None:
            values["cloudfront-key"] = args.cdn.private_key_pem
        secrets: dict[str, aws.secretsmanager.Secret] = {}
        secret_versions: dict[str, pulumi.Output[str]] = {}
        for label, value in values.items():
            secrets[label], version = stored_secret(
                f"{name}-{label}",
                name_prefix=f"{args.name_prefix}/{label}-",
                description=f"registry-fleet {args.name_prefix}: {label} (read by registry hosts at boot)",
                value=value,
                kms_key_arn=args.kms_key_arn,
                tags=tags,
                opts=child,
            )
            secret_versions[label] = version.version_id
        self.secret_arns = {label: s.arn for label, s in secrets.items()}

        # --- network identity: only the load balancer gets in ---
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args.vpc_id,
            description="registry hosts: registry port from the load balancer only",
            tags={**tags, "Name": f"{name}-sg"},
            opts=child,
        )
        # Only the load balancer gets in, on the port of each service it forwards to.
        inbound = [("in-from-lb", REGISTRY_PORT, "registry (HTTPS) from the load balancer")]
        if token is not None:
            inbound.append(("in-token-from-lb", TOKEN_SERVICE_PORT, "token service (HTTPS) from the load balancer"))
        if args.gate is not None:
            inbound.append(("in-gate-from-lb", GATE_PORT, "signature gate (HTTPS) from the load balancer"))
        for rule, port, description in inbound:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{rule}",
                security_group_id=sg.id,
                referenced_security_group_id=args.lb_security_group_id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                description=description,
                tags=tags,
                opts=child,
            )
        if token is not None:
            for i, cidr in enumerate(token.ldap_cidrs):
                aws.vpc.SecurityGroupEgressRule(
                    f"{name}-out-ldap-{i}",
                    security_group_id=sg.id,
                    ip_protocol="tcp",
                    from_port=token.ldap_port,
                    to_port=token.ldap_port,
                    cidr_ipv4=cidr,
                    description=f"the company directory (LDAP over TLS, port {token.ldap_port})",
                    tags=tags,
                    opts=child,
                )
        # HTTPS out only: S3 (gateway endpoint), Secrets Manager, SSM and Debian's mirrors over https.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out-https",
            security_group_id=sg.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4="0.0.0.0/0",
            description="HTTPS to AWS APIs and Debian mirrors",
            tags=tags,
            opts=child,
        )

        # --- instance role: least privilege ---
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
            tags=tags,
            opts=child,
        )
        # The hosts' own secrets, and in token mode the service's config and signing key. Never a
        # robot's token: hosts check robots against bcrypt hashes in the config.
        own_secrets: list[pulumi.Input[str]] = [s.arn for s in secrets.values()]
        if token is not None:
            own_secrets += [token.config_secret_arn, *token.signing_key_secret_arns]
        events = args.scan_events
        if events is not None:
            own_secrets.append(events.token_secret_arn)
        aws.iam.RolePolicy(
            f"{name}-role-policy",
            role=role.id,
            policy=pulumi.Output.all(
                args.bucket_arn,
                args.kms_key_arn,
                args.signing_key_arn,
                token.lockout_table_arn if token else None,
                events.queue_arn if events else None,
                events.key_arn if events else None,
                *own_secrets,
            ).apply(lambda a: instance_policy(a[0], a[1], list(a[6:]), a[2], a[3], a[4], a[5])),
            opts=child,
        )
        aws.iam.RolePolicyAttachment(f"{name}-ssm", role=role.name, policy_arn=SSM_CORE_POLICY, opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)

        # --- what runs on a host: rendered once, from resolved non-secret values ---
        cdn = args.cdn
        self.user_data = pulumi.Output.all(
            bucket=args.bucket_name,
            key=args.kms_key_arn,
            ca=args.ca_cert_pem,
            cert=args.host_cert_pem,
            arns={label: s.arn for label, s in secrets.items()},
            cdn_url=cdn.base_url if cdn else "",
            cdn_key_id=cdn.key_pair_id if cdn else "",
            token_config_arn=token.config_secret_arn if token else "",
            token_signing_key_arn=token.signing_key_secret_arn if token else "",
            token_signing_cert=token.signing_cert_pem if token else "",
            token_trust_bundle=token.trust_bundle_pem if token else "",
            gate_public_key=args.gate.public_key_pem if args.gate else "",
            scan_queue_url=events.queue_url if events else "",
            scan_token_arn=events.token_secret_arn if events else "",
        ).apply(lambda v: self._render(args, v))

        image_id: pulumi.Input[str] = args.image_id or self._newest_debian(args.debian_release, args.architecture)
        instance_tags: dict[str, pulumi.Input[str]] = {
            **tags,
            "Name": f"{args.name_prefix}-registry",
            ROLE_TAG: REGISTRY_HOST_ROLE,  # the GC window's target: registry hosts, not scanner workers
        }
        # Hosts read their secrets at each registry start: a new version of any of them rolls the fleet.
        for label, version_id in secret_versions.items():
            instance_tags[HOST_SECRET_VERSION_TAG.format(label=label)] = version_id
        if token is not None:
            # Hosts read the service's config at boot only: a new config version rolls the fleet.
            instance_tags[TOKEN_CONFIG_VERSION_TAG] = token.config_version_id
            instance_tags[TOKEN_SIGNING_KEY_VERSION_TAG] = token.signing_key_version_id
        if events is not None:
            # Hosts read the bearer at each start of the registry and the forwarder: a new one rolls the fleet.
            instance_tags[HOST_SECRET_VERSION_TAG.format(label="scan-events-token")] = events.token_version_id
        template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            name_prefix=f"{args.name_prefix}-registry-",
            description="registry-fleet registry host",
            image_id=image_id,
            instance_type=args.instance_type,
            iam_instance_profile={"arn": profile.arn},
            **hardened_host_template(args.root_volume_gib, sg.id),
            # gzipped: cloud-init unpacks it, and the 16 KB limit applies to what EC2 receives.
            user_data=self.user_data.apply(encode_user_data),
            update_default_version=True,
            tag_specifications=[
                {"resource_type": "instance", "tags": instance_tags},
                {"resource_type": "volume", "tags": tags},
            ],
            tags=tags,
            opts=child,
        )
        refresh: Any = {
            "strategy": "Rolling",
            "preferences": {
                # Launch before terminate: never below desired capacity during a roll.
                "min_healthy_percentage": 100,
                "max_healthy_percentage": 200,
                "instance_warmup": "120",
                "auto_rollback": True,
            },
        }
        group_tags: Any = [{"key": k, "value": v, "propagate_at_launch": True} for k, v in tags.items()]
        # The template's current version, not "$Latest": a new version then starts a refresh.
        launch_template: Any = {"id": template.id, "version": template.latest_version.apply(str)}
        metrics: Any = ["GroupInServiceInstances", "GroupDesiredCapacity", "GroupTotalInstances"]
        group = aws.autoscaling.Group(
            f"{name}-asg",
            name_prefix=f"{args.name_prefix}-registry-",
            vpc_zone_identifiers=args.private_subnet_ids,
            min_size=args.min_size,
            max_size=args.max_size,
            desired_capacity=args.desired_capacity,
            health_check_type="ELB",
            health_check_grace_period=300,
            default_instance_warmup=120,
            target_group_arns=[
                args.target_group_arn,
                *([token.target_group_arn] if token else []),
                *([args.gate.target_group_arn] if args.gate else []),
            ],
            launch_template=launch_template,
            instance_refresh=refresh,
            capacity_rebalance=True,
            enabled_metrics=metrics,
            tags=group_tags,
            opts=child,
        )

        self.security_group_id = sg.id
        self.role_arn = role.arn
        self.asg_name = group.name
        self.role_name = role.name
        self.token_realm = token_realm(args.public_url) if token else None
        self.register_outputs({"asgName": group.name, "securityGroupId": sg.id})

    def _newest_debian(self, release: int, architecture: str) -> pulumi.Output[str]:
        arch = "arm64" if architecture == "arm64" else "x86_64"
        ami = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[DEBIAN_AMI_OWNER],
            filters=[
                {"name": "name", "values": [DEBIAN_AMI_NAME.format(release=release, architecture=architecture)]},
                {"name": "architecture", "values": [arch]},
                {"name": "virtualization-type", "values": ["hvm"]},
            ],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        return ami.id

    @staticmethod
    def _render(args: RegistryFleetArgs, v: dict[str, Any]) -> str:
        arns: dict[str, str] = v["arns"]
        cloudfront = None
        if args.cdn is not None:
            cloudfront = CloudFrontSettings(
                base_url=v["cdn_url"],
                private_key_file=CLOUDFRONT_KEY_FILE,
                key_pair_id=v["cdn_key_id"],
                duration_seconds=args.cdn.duration_seconds,
            )
        token = args.token
        config = RegistryConfig(
            environment=args.environment,
            public_url=args.public_url,
            bucket=v["bucket"],
            region=args.region,
            tls_cert_file=HOST_CERT_FILE,
            tls_key_file=HOST_KEY_FILE,
            kms_key_id=v["key"],
            chunk_size_bytes=args.chunk_size_bytes,
            htpasswd_file=HTPASSWD_FILE,
            token=(
                TokenAuth(
                    realm=token_realm(args.public_url),
                    service=token.service,
                    issuer=token.issuer,
                    # Every live signing generation: hosts of a rolling fleet accept each other's tokens.
                    rootcertbundle=TOKEN_TRUST_BUNDLE_FILE,
                )
                if token
                else None
            ),
            cloudfront=cloudfront,
            notifications=(scan_events_endpoint(),) if args.scan_events is not None else (),
        )
        secret_files = [SecretFile(arns["tls-key"], HOST_KEY_FILE, mode="0640")]
        if "htpasswd" in arns:
            secret_files.append(SecretFile(arns["htpasswd"], HTPASSWD_FILE, mode="0640"))
        if "cloudfront-key" in arns:
            secret_files.append(SecretFile(arns["cloudfront-key"], CLOUDFRONT_KEY_FILE, mode="0640"))
        token_service = None
        if token is not None:
            token_service = TokenServiceBoot(
                artifact_bucket=v["bucket"],
                artifact_key=token.artifact_key,
                artifact_sha256=token.artifact_sha256,
                pip_index_url=token.pip_index_url,
                config_secret_arn=v["token_config_arn"],
                signing_key_secret_arn=v["token_signing_key_arn"],
                # The service terminates the load balancer's HTTPS with the host's own certificate.
                tls_key_secret_arn=arns["tls-key"],
                signing_cert_pem=v["token_signing_cert"],
                trust_bundle_pem=v["token_trust_bundle"],
                tls_cert_file=HOST_CERT_FILE,
                ldap_ca_pem=token.ldap_ca_pem,
            )
        gate = None
        if args.gate is not None:
            gate = GateBoot(
                config_yaml=render_gate_config(
                    args.gate.policies if args.gate.policies is not None else args.gate.namespaces,
                    [v["gate_public_key"]],
                    reports=ReportsLocation(v["bucket"], args.region),
                ),
                # The gate terminates the load balancer's HTTPS with the host's own certificate, as the service does.
                tls_key_secret_arn=arns["tls-key"],
                tls_cert_file=HOST_CERT_FILE,
            )
        scan_events = None
        if args.scan_events is not None:
            scan_events = ScanEventsBoot(
                config_yaml=render_events_config(v["scan_queue_url"], args.region),
                token_secret_arn=v["scan_token_arn"],
                # The forwarder serves the registry's notifications over TLS with the host's certificate.
                tls_key_secret_arn=arns["tls-key"],
                tls_cert_file=HOST_CERT_FILE,
                ca_cert_pem=v["ca"],
                endpoints_template=notification_endpoints_env(config.notifications, BEARER_MARK),
            )
        boot = HostBoot(
            region=args.region,
            registry_config_yaml=render_registry_config(config),
            http_secret_arn=arns["http-secret"],
            secret_files=tuple(secret_files),
            public_files=((HOST_CERT_FILE, v["cert"]), (CA_CERT_FILE, v["ca"])),
            architecture=args.architecture,
            token_service=token_service,
            gate=gate,
            scan_events=scan_events,
        )
        return render_host(boot).user_data


def scan_events_endpoint() -> NotificationEndpoint:
    """The registry's one notification endpoint on a host: the forwarder on loopback, its bearer from the
    registry's environment (host.registry_config.NotificationEndpoint), pulls, deletes and blobs not sent."""
    return NotificationEndpoint(
        name="scan-events",
        url=f"https://127.0.0.1:{SCAN_EVENTS_PORT}{SCAN_EVENTS_PATH}",
        bearer_token=None,
        ignore_actions=SCAN_EVENTS_IGNORED_ACTIONS,
        ignore_media_types=SCAN_EVENTS_IGNORED_MEDIA_TYPES,
    )
