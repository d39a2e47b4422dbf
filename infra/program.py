"""The registry-fleet program: one `build(settings)` composing the components.

Order follows the data: storage (buckets, keys, backups) -> network (its S3 endpoint admits
the registry bucket) -> internal TLS -> the registry's public certificate -> load balancer -> its WAF ->
CDN -> the primary bucket's policies (they name the distribution) -> the image signing key
(its public key goes to the gate) -> access (token mode: the token service's signing key,
robots, config and code) -> fleet -> access logs -> alarms and dashboard -> DNS.
Components never read config: everything comes from the typed settings and the validated
secret inputs (infra/secrets.py); the token service's from its spec (infra/token_service.py).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from components.access import RegistryAccess, RegistryAccessArgs
from components.access_logs import AccessLogs, AccessLogsArgs
from components.alarms import RegistryAlarms, RegistryAlarmsArgs, TargetGroupSignals
from components.cdn import BlobCdn, BlobCdnArgs
from components.certificates import DnsValidatedCertificate, DnsValidatedCertificateArgs
from components.dns import RegistryDns, RegistryDnsArgs
from components.firewall import EdgeFirewall, EdgeFirewallArgs
from components.fleet import ADMIN_USER, FleetCdn, FleetGate, FleetScanEvents, RegistryFleet, RegistryFleetArgs
from components.host_metrics import HostMetrics, HostMetricsArgs
from components.internal_tls import InternalTls, InternalTlsArgs
from components.loadbalancer import RegistryLoadBalancer, RegistryLoadBalancerArgs
from components.maintenance import RegistryMaintenance, RegistryMaintenanceArgs
from components.network import RegistryNetwork, RegistryNetworkArgs, subnet_plan
from components.scanning import RegistryScanning, RegistryScanningArgs, ScanQueue, ScanQueueArgs
from components.signing import ImageSigningKey, ImageSigningKeyArgs
from components.storage import (
    REPLICATION_RULE_ID,
    ObjectLock,
    RegistryBucketPolicies,
    RegistryBucketPoliciesArgs,
    RegistryStorage,
    RegistryStorageArgs,
)
from components.waivers import PolicyWaivers, WaiverArgs
from host.artifact import build_artifact
from host.contract import HOST_INTERNAL_NAME
from host.scan_config import MIRROR_ROBOT, SCAN_ROBOTS, SCANNER_ROBOT
from host.scanner_host import REGISTRY_HOST_ROLE, ROLE_TAG
from infra.gate_spec import gate_policies
from infra.retention import retention_policy_json
from infra.secrets import AccessSecrets
from infra.settings import Settings, protected_namespaces
from infra.token_service import lockout_table_name, token_service_spec

# CloudFront reads certificates for its aliases from us-east-1 only, whatever the stack's region.
CLOUDFRONT_CERT_REGION = "us-east-1"


def name_prefix(settings: Settings) -> str:
    """A short physical-name prefix unique per stack (AWS names must not collide in an account)."""
    return f"reg-{settings.stack}"[:24].rstrip("-")


def build(settings: Settings, secrets: AccessSecrets) -> dict[str, Any]:
    """Create every resource of one stack; return the stack outputs.

    `secrets` come from `infra.secrets.load_access_secrets_from_pulumi` (a real run) or
    `placeholder_access_secrets` (the recording engine); they are already validated.
    """
    s = settings
    tags = s.tags
    prefix = name_prefix(s)
    protect = s.environment != "dev"
    internal = s.network.load_balancer_scheme == "internal"
    public_cidrs, private_cidrs = subnet_plan(s.network.cidr, s.network.az_count)
    # The load balancer's nodes live in its subnets; the token service believes the
    # X-Forwarded-For they add (client addresses for its lockout and its logs).
    lb_cidrs = private_cidrs if internal else public_cidrs
    # Before anything is registered: a config the service would refuse, or no artifact, stops here.
    token_spec = token_service_spec(s, secrets, lb_cidrs, lockout_table_name(prefix))  # None in htpasswd mode
    token_mode = token_spec is not None
    # The namespaces whose pulls need a signature or a scan: the gate runs only where there is one (token mode).
    gated = protected_namespaces(s)
    artifact = build_artifact() if token_mode else None

    # Explicit providers: regions come from the settings (stack files set no aws:region), and a
    # stack pinned to an account refuses to run with another account's credentials.
    provider_args: Any = {
        "default_tags": {"tags": tags},
        "allowed_account_ids": [s.account_id] if s.account_id else None,
    }
    primary = aws.Provider("aws-primary", region=s.region, **provider_args)
    replica = aws.Provider("aws-replica", region=s.replica_region, **provider_args)
    in_primary = pulumi.ResourceOptions(providers={"aws": primary})
    identity = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(provider=primary))

    storage = RegistryStorage(
        "storage",
        RegistryStorageArgs(
            region=s.region,
            replica_region=s.replica_region,
            replica_provider=replica,
            bucket_prefix=f"{prefix}-blobs",
            noncurrent_version_days=s.storage.noncurrent_version_days,
            abort_incomplete_upload_days=s.storage.abort_incomplete_upload_days,
            replication_time_control=s.storage.replication_time_control,
            backup_schedule=s.backup.schedule,
            backup_retention_days=s.backup.retention_days,
            continuous_backup=s.backup.continuous,
            continuous_retention_days=s.backup.continuous_retention_days,
            vault_lock_mode=s.backup.vault_lock_mode,
            replica_object_lock=(
                ObjectLock(s.storage.object_lock.mode, s.storage.object_lock.days)
                if s.storage.object_lock.enabled
                else None
            ),
            protect=protect,
            tags=tags,
        ),
        opts=in_primary,
    )

    network = RegistryNetwork(
        "network",
        RegistryNetworkArgs(
            region=s.region,
            cidr=s.network.cidr,
            az_count=s.network.az_count,
            nat_gateways=s.network.nat_gateways,
            registry_bucket_arns=[storage.bucket.arn],
            # Token mode: the hosts reach the lockout table through a DynamoDB gateway endpoint.
            dynamodb_table_arns=(
                [
                    identity.account_id.apply(
                        lambda account: f"arn:aws:dynamodb:{s.region}:{account}:table/{lockout_table_name(prefix)}"
                    )
                ]
                if token_mode
                else []
            ),
            tags=tags,
        ),
        opts=in_primary,
    )

    internal_tls = InternalTls(
        "internal-tls",
        InternalTlsArgs(
            organization=f"registry-fleet {s.stack}",
            dns_names=[s.registry_host, HOST_INTERNAL_NAME],
            # Token mode: the registry notifies the scan events forwarder at https://127.0.0.1 (components/scanning.py).
            ip_addresses=["127.0.0.1"] if token_mode else [],
        ),
    )

    certificate = DnsValidatedCertificate(
        "registry-cert",
        DnsValidatedCertificateArgs(domain_name=s.registry_host, zone_id=s.cloudflare.zone_id, tags=tags),
        opts=in_primary,
    )

    lb = RegistryLoadBalancer(
        "lb",
        RegistryLoadBalancerArgs(
            region=s.region,
            account_id=identity.account_id,
            vpc_id=network.vpc_id,
            internal=internal,
            subnet_ids=network.private_subnet_ids if internal else network.public_subnet_ids,
            allowed_cidrs=list(s.network.allowed_cidrs),
            host_cidrs=network.private_cidrs,
            certificate_arn=certificate.certificate_arn,
            logged_bucket_arn=storage.bucket.arn,
            tls_policy=s.tls.policy,
            deletion_protection=protect,
            token_service=token_mode,
            gate_namespaces=gated,
            tags=tags,
        ),
        opts=in_primary,
    )

    firewall = EdgeFirewall(
        "waf",
        EdgeFirewallArgs(
            prefix=prefix,
            load_balancer_arn=lb.arn,
            mode=s.waf.mode,
            token_rate_limit=s.waf.token_rate_limit,
            tags=tags,
        ),
        opts=in_primary,
    )

    cdn = None
    us_east_1 = None
    if s.cdn.enabled:
        alias_cert = None
        if s.cdn_alias_host is not None:
            us_east_1 = aws.Provider("aws-us-east-1", region=CLOUDFRONT_CERT_REGION, **provider_args)
            alias_cert = DnsValidatedCertificate(
                "blobs-cert",
                DnsValidatedCertificateArgs(
                    domain_name=s.cdn_alias_host, zone_id=s.cloudflare.zone_id, tags=tags, provider=us_east_1
                ),
                opts=in_primary,
            )
        cdn = BlobCdn(
            "cdn",
            BlobCdnArgs(
                bucket_regional_domain_name=storage.bucket.bucket_regional_domain_name,
                name_prefix=prefix,
                price_class=s.cdn.price_class,
                alias=s.cdn_alias_host,
                alias_certificate_arn=alias_cert.certificate_arn if alias_cert else None,
                tags=tags,
            ),
            opts=in_primary,
        )

    RegistryBucketPolicies(
        "storage-policies",
        RegistryBucketPoliciesArgs(
            bucket_id=storage.bucket.id,
            bucket_arn=storage.bucket.arn,
            key_id=storage.key.key_id,
            account_id=identity.account_id,
            distribution_arn=cdn.distribution_arn if cdn else None,
        ),
        opts=in_primary,
    )

    signing = ImageSigningKey(
        "signing",
        ImageSigningKeyArgs(
            stack=s.stack,
            signer_roles=s.signing.roles,
            account_id=identity.account_id,
            protect=protect,
            tags=tags,
        ),
        opts=in_primary,
    )

    access = None
    token = None
    if token_spec is not None and artifact is not None:
        access = RegistryAccess(
            "access",
            RegistryAccessArgs(
                stack=s.stack,
                name_prefix=prefix,
                spec=token_spec,
                artifact=artifact,
                bucket_name=storage.bucket.bucket,
                kms_key_arn=storage.key.arn,
                tags=tags,
            ),
            opts=in_primary,
        )
        assert lb.token_target_group_arn is not None  # token mode: the load balancer made it
        token = access.fleet_token_service(lb.token_target_group_arn)

    # Token mode: the scan queue exists before the hosts that send to it (components/scanning.py).
    scan_queue = (
        ScanQueue(
            "scan-queue",
            ScanQueueArgs(
                name_prefix=prefix,
                region=s.region,
                account_id=identity.account_id,
                visibility_timeout_seconds=s.scanning.visibility_timeout_seconds,
                max_receive_count=s.scanning.max_receive_count,
                registry_kms_key_arn=storage.key.arn,
                tags=tags,
            ),
            opts=in_primary,
        )
        if token_mode
        else None
    )

    fleet = RegistryFleet(
        "fleet",
        RegistryFleetArgs(
            environment=s.environment,
            region=s.region,
            name_prefix=prefix,
            public_url=f"https://{s.registry_host}",
            instance_type=s.fleet.instance_type,
            architecture=s.fleet.architecture,
            min_size=s.fleet.min_size,
            max_size=s.fleet.max_size,
            desired_capacity=s.fleet.desired_capacity,
            root_volume_gib=s.fleet.root_volume_gib,
            debian_release=s.fleet.debian_release,
            image_id=s.fleet.image_id,
            http_secret_rotation=s.fleet.http_secret_rotation,
            vpc_id=network.vpc_id,
            private_subnet_ids=network.private_subnet_ids,
            lb_security_group_id=lb.security_group_id,
            target_group_arn=lb.target_group_arn,
            bucket_name=storage.bucket.bucket,
            bucket_arn=storage.bucket.arn,
            kms_key_arn=storage.key.arn,
            chunk_size_bytes=s.storage.chunk_size_mib * 1024 * 1024,
            ca_cert_pem=internal_tls.ca_cert_pem,
            host_cert_pem=internal_tls.host_cert_pem,
            host_key_pem=internal_tls.host_key_pem,
            cdn=(
                FleetCdn(
                    base_url=cdn.base_url,
                    key_pair_id=cdn.key_pair_id,
                    private_key_pem=cdn.private_key_pem,
                    duration_seconds=s.cdn.signed_url_seconds,
                )
                if cdn
                else None
            ),
            token=token,
            gate=(
                FleetGate(
                    namespaces=gated,
                    public_key_pem=signing.public_key_pem,
                    target_group_arn=lb.gate_target_group_arn,
                    policies=gate_policies(s),
                )
                if gated and lb.gate_target_group_arn is not None
                else None
            ),
            signing_key_arn=signing.key_arn,
            scan_events=(
                FleetScanEvents(
                    queue_url=scan_queue.queue_url,
                    queue_arn=scan_queue.queue_arn,
                    key_arn=scan_queue.key_arn,
                    token_secret_arn=scan_queue.events_token_secret_arn,
                    token_version_id=scan_queue.events_token_version_id,
                )
                if scan_queue is not None
                else None
            ),
            tags=tags,
        ),
        opts=in_primary,
    )

    AccessLogs(
        "request-logs",
        AccessLogsArgs(
            prefix=prefix,
            log_bucket=lb.log_bucket,
            log_bucket_arn=lb.log_bucket_arn,
            registry_bucket=storage.bucket.id,
            distribution_arn=cdn.distribution_arn if cdn else None,
            us_east_1=us_east_1,
            tags=tags,
        ),
        opts=in_primary,
    )

    host_metrics = HostMetrics(
        "host-metrics",
        HostMetricsArgs(
            prefix=prefix,
            role_name=fleet.role_name,
            asg_name=fleet.asg_name,
            token_service=token is not None,
            tags=tags,
        ),
        opts=in_primary,
    )

    alarms = RegistryAlarms(
        "alarms",
        RegistryAlarmsArgs(
            prefix=prefix,
            account_id=identity.account_id,
            region=s.region,
            load_balancer_arn_suffix=lb.arn_suffix,
            target_groups=[
                TargetGroupSignals("registry", lb.target_group_arn_suffix, p99_seconds=30),
                *(
                    [TargetGroupSignals("token", lb.token_target_group_arn_suffix, p99_seconds=2)]
                    if lb.token_target_group_arn_suffix is not None
                    else []
                ),
                *(
                    # A manifest read through the gate: one registry round trip plus a cached check.
                    [TargetGroupSignals("gate", lb.gate_target_group_arn_suffix, p99_seconds=5)]
                    if lb.gate_target_group_arn_suffix is not None
                    else []
                ),
            ],
            min_hosts=s.fleet.min_size,
            bucket=storage.bucket.bucket,
            replica_bucket=storage.replica_bucket.bucket,
            replication_rule_id=REPLICATION_RULE_ID,
            backup_vault_name=storage.vault.name,
            emails=s.alerts.emails,
            tags=tags,
            host_metrics_namespace=host_metrics.namespace,
            token_service=token is not None,
        ),
        opts=in_primary,
    )

    RegistryMaintenance(
        "maintenance",
        RegistryMaintenanceArgs(
            name_prefix=prefix,
            # The registry hosts' instances, not the scanner workers' (components/fleet.py tags them).
            host_tags={"stack": tags["stack"], "managed-by": tags["managed-by"], ROLE_TAG: REGISTRY_HOST_ROLE},
            tags=tags,
            retention_policies=retention_policy_json(s),
        ),
        opts=in_primary,
    )

    scanning = None
    if scan_queue is not None and access is not None and artifact is not None:
        scanning = RegistryScanning(
            "scanning",
            RegistryScanningArgs(
                name_prefix=prefix,
                region=s.region,
                account_id=identity.account_id,
                queue=scan_queue,
                registry_host=s.registry_host,
                host_role_arn=fleet.role_arn,
                alarm_topic_arn=alarms.topic_arn,
                vpc_id=network.vpc_id,
                private_subnet_ids=network.private_subnet_ids,
                lb_security_group_id=lb.security_group_id,
                bucket_name=storage.bucket.bucket,
                bucket_arn=storage.bucket.arn,
                registry_kms_key_arn=storage.key.arn,
                artifact_key=artifact.key,
                artifact_sha256=artifact.sha256,
                pip_index_url=token_spec.pip_index_url if token_spec else "",
                scanner_robot=SCANNER_ROBOT,
                scanner_robot_secret_arn=access.robot_secret_arns[SCANNER_ROBOT],
                mirror_robot=MIRROR_ROBOT,
                mirror_robot_token=access.robot_tokens[MIRROR_ROBOT],
                findings_threshold=s.scanning.findings_threshold,
                findings_emails=s.scanning.findings_emails,
                rescan_schedule=s.scanning.schedule,
                mirror_schedule=s.scanning.mirror_schedule,
                instance_type=s.scanning.worker_instance_type,
                architecture=s.scanning.worker_architecture,
                debian_release=s.fleet.debian_release,
                max_size=s.scanning.worker_max_size,
                root_volume_gib=s.scanning.worker_root_volume_gib,
                visibility_timeout_seconds=s.scanning.visibility_timeout_seconds,
                trivy_version=s.scanning.trivy.version,
                trivy_sha256=s.scanning.trivy.sha256.model_dump(),
                tags=tags,
            ),
            opts=in_primary,
        )

    PolicyWaivers("policy-waivers", [WaiverArgs(w.rule, w.reason, w.expires) for w in s.waivers])

    RegistryDns(
        "dns",
        RegistryDnsArgs(
            zone_id=s.cloudflare.zone_id,
            registry_host=s.registry_host,
            load_balancer_dns_name=lb.dns_name,
            cdn_alias_host=s.cdn_alias_host,
            cdn_domain=cdn.distribution_domain if cdn and s.cdn_alias_host else None,
        ),
    )

    outputs: dict[str, Any] = {
        "registryUrl": f"https://{s.registry_host}",
        "registryHost": s.registry_host,
        "loadBalancerDnsName": lb.dns_name,
        "cdnDomain": (cdn.base_url.apply(lambda u: u.removeprefix("https://").rstrip("/")) if cdn else None),
        "bucketName": storage.bucket.bucket,
        "replicaBucketName": storage.replica_bucket.bucket,
        # `fleet restore --from-backup`: the role AWS Backup restores with and the key the new bucket uses.
        "backupRoleArn": storage.backup_role.arn,
        "bucketKeyArn": storage.key.arn,
        "caCertificate": internal_tls.ca_cert_pem,
        "autoScalingGroup": fleet.asg_name,
        "accessMode": s.access.mode,
        "webAclArn": firewall.web_acl_arn,
        # What consumers verify signatures with (python -m fleet trust-policy), and the key CI signs with.
        "signingPublicKeyPem": signing.public_key_pem,
        "signingKeyArn": signing.key_arn,
        "signingKeyAlias": signing.alias_name,
        "protectedNamespaces": list(gated),
    }
    if scanning is not None and scan_queue is not None:
        # Where scans go and come from (python -m fleet scan-report reads the reports in bucketName).
        outputs |= {
            "scanQueueUrl": scan_queue.queue_url,
            "scanFindingsTopicArn": scanning.findings_topic_arn,
            "scanWorkerAutoScalingGroup": scanning.worker_asg_name,
        }
    if access is not None:
        outputs |= {
            "tokenRealm": fleet.token_realm,
            "tokenService": s.registry_host,
            "tokenIssuer": s.token_issuer,
            # CI reads its robot's token from its secret (user name: the robot's name).
            "robotTokenSecretArns": {r: a for r, a in access.robot_secret_arns.items() if r not in SCAN_ROBOTS},
        }
    else:
        outputs |= {"adminUser": ADMIN_USER, "adminPassword": fleet.admin_password}
    return outputs
