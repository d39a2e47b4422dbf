"""RegistryAccess: who may pull, push and delete, in token mode (practices 3 and 4).

Creates what the token service on every registry host needs, and nothing it runs itself:
- per live signing generation (access.tokenSigning.generations) a token signing key (pulumi-tls RSA
  2048) and its self-signed certificate: the service signs every token with the current generation's
  key (RS256, its certificate in `x5c`), the registry trusts every live generation's certificate
  (`auth.token.rootcertbundle`), so a rotation never refuses a token (see SIGNING_CERT_VALIDITY_HOURS);
- per CI robot a generated token (pulumi-random), kept in its own Secrets Manager secret for CI to
  read; only its SHA-256 (`sha256:<hex>`, auth/local.py) reaches the service;
- the service's configuration (auth/config.py), rendered by `host.token_config` from the
  token service's spec (settings + secret inputs, built once by `infra/token_service.py`) and the
  robots' hashes inside one `apply`, and stored as a Secrets Manager secret (it holds password
  and token hashes and the directory password);
- each generation's signing key PEM in its own Secrets Manager secret; a host's user-data names the
  current generation's secret, so a host always reads the key that matches the certificate its
  template wrote (a restart or a rolled-back refresh never pairs a new key with an old certificate);
- the service's code (host.artifact) as an object in the registry bucket, SSE-KMS, named by
  its SHA-256, which hosts check before unpacking;
- the lockout's table (auth/shared_lockout.py): DynamoDB, on demand, TTL on `expires_at`,
  point-in-time recovery, encrypted with an AWS-owned key (it holds short-lived counters, account
  names, client addresses and HMACs, no secret; a key of the stack's in the path of every login would
  add a KMS grant that, once broken, turns the fleet's lockout into per-process counters). Only the
  fleet's instance role may read or write it (components/fleet.py), through the VPC's gateway
  endpoint (components/network.py).

The fleet gets the service's host-side values in one call, :meth:`RegistryAccess.fleet_token_service`.
Every secret is encrypted with the registry's KMS key. Hosts read the config and the signing key at
boot (their instance role names these two secrets, never a robot's token). Everything here is a
child of the component; no resource is created inside an `apply`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random
import pulumi_tls as tls

from auth.local import robot_token_hash
from components.fleet import FleetTokenService
from components.stored_secret import stored_secret
from host.artifact import Artifact
from host.contract import TOKEN_SIGNING_CERT_FILE, TOKEN_SIGNING_KEY_FILE
from host.token_config import TokenServiceSpec, render_token_service_config

# Five years. Rotation is deliberate, never automatic (no early_renewal_hours): a new certificate
# must be in every host's rootcertbundle before any host signs tokens with it, or the hosts that
# still trust only the old one refuse every token the new one signed (a roll of the fleet makes
# both kinds of hosts answer side by side). access.tokenSigning drives it, one `pulumi up` (one roll)
# per step: generations [1, 2] current 1 (every host trusts both, signs with 1); current 2 (hosts sign
# with 2 and still trust 1, whose tokens live token_lifetime_seconds at most); generations [2].
SIGNING_CERT_VALIDITY_HOURS = 5 * 365 * 24
# 48 alphanumerics are about 285 bits (at least 128 are required: the service stores a plain SHA-256).
ROBOT_TOKEN_LENGTH = 48


def signing_names(name: str, generation: int) -> tuple[str, str]:
    """Logical names of a generation's key and certificate. Generation 1 keeps the names the stack had
    before generations existed: a name is a resource's identity, so a new name would replace the key of
    every existing stack in one step, the very change a rotation exists to avoid."""
    suffix = "" if generation == 1 else f"-g{generation}"
    return f"{name}-signing-key{suffix}", f"{name}-signing-cert{suffix}"


def signing_key_secret_label(generation: int) -> str:
    """The label of a generation's key secret (generation 1 keeps the name it had before generations)."""
    return "token-signing-key" if generation == 1 else f"token-signing-key-g{generation}"


def trust_bundle(cert_pems: Sequence[str]) -> str:
    """The registry's rootcertbundle: the certificates in generation order, each ending with a newline."""
    return "".join(pem if pem.endswith("\n") else pem + "\n" for pem in cert_pems)


@dataclass
class RegistryAccessArgs:
    stack: str
    # Physical-name prefix of the stack (secret names: f"{name_prefix}/robots/{robot}-"...).
    name_prefix: str
    spec: TokenServiceSpec  # validated: infra/token_service.py
    artifact: Artifact
    bucket_name: pulumi.Input[str]  # the registry bucket: the artifact lives beside the images
    kms_key_arn: pulumi.Input[str]  # the registry key: secrets and the artifact are encrypted with it
    tags: dict[str, str]


class RegistryAccess(pulumi.ComponentResource):
    spec: TokenServiceSpec
    # The current generation's certificate (the service's signing_cert, in each token's x5c).
    signing_cert_pem: pulumi.Output[str]
    # Every live generation's certificate, in generation order (the registry's rootcertbundle).
    trust_bundle_pem: pulumi.Output[str]
    config_secret_arn: pulumi.Output[str]
    # Changes whenever the config's value does: the fleet rolls on it, so hosts read the new config.
    config_version_id: pulumi.Output[str]
    # The current generation's key secret (named in user-data), and every live generation's (the hosts'
    # role may read them all: hosts launched from an older template read the generation it names).
    signing_key_secret_arn: pulumi.Output[str]
    signing_key_secret_arns: list[pulumi.Output[str]]
    # The current generation's secret version: the launch template waits for it (an instance tag).
    signing_key_version_id: pulumi.Output[str]
    robot_secret_arns: dict[str, pulumi.Output[str]]
    robot_tokens: dict[str, pulumi.Output[str]]
    artifact_key: str
    artifact_sha256: str

    def __init__(self, name: str, args: RegistryAccessArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryAccess", name, None, opts)
        spec = self.spec = args.spec
        tags = args.tags
        child = pulumi.ResourceOptions(parent=self)

        def access_secret(
            label: str, prefix: str, description: str, value: pulumi.Input[str]
        ) -> tuple[aws.secretsmanager.Secret, aws.secretsmanager.SecretVersion]:
            return stored_secret(
                f"{name}-{label}",
                name_prefix=prefix,
                description=f"registry-fleet {args.name_prefix}: {description}",
                value=value,
                kms_key_arn=args.kms_key_arn,
                tags=tags,
                opts=child,
            )

        # --- per live generation a signing key and its certificate; the registry trusts them all ---
        keys: dict[int, tls.PrivateKey] = {}
        certs: dict[int, tls.SelfSignedCert] = {}
        for generation in spec.signing_generations:
            key_name, cert_name = signing_names(name, generation)
            # Generation 1's subject is the one it always had: a changed input would re-issue the certificate.
            common_name = f"registry-fleet {args.stack} token signing"
            if generation != 1:
                common_name += f" g{generation}"
            keys[generation] = tls.PrivateKey(key_name, algorithm="RSA", rsa_bits=2048, opts=child)
            certs[generation] = tls.SelfSignedCert(
                cert_name,
                private_key_pem=keys[generation].private_key_pem,
                subject={"common_name": common_name, "organization": "registry-fleet"},
                validity_period_hours=SIGNING_CERT_VALIDITY_HOURS,
                allowed_uses=["digital_signature"],
                opts=child,
            )
        key_secrets: dict[int, tuple[aws.secretsmanager.Secret, aws.secretsmanager.SecretVersion]] = {}
        for generation in spec.signing_generations:
            label = signing_key_secret_label(generation)
            key_secrets[generation] = access_secret(
                label,
                f"{args.name_prefix}/{label}-",
                f"token signing key, generation {generation} (read by registry hosts at boot)",
                keys[generation].private_key_pem,
            )
        signing_key_secret, signing_key_version = key_secrets[spec.signing_generation]
        bundle = pulumi.Output.all(*[certs[g].cert_pem for g in spec.signing_generations]).apply(trust_bundle)

        # --- CI robots: a generated token each, for CI to read; the service gets its SHA-256 ---
        robot_passwords: dict[str, random.RandomPassword] = {}
        robot_secrets: dict[str, aws.secretsmanager.Secret] = {}
        for robot, settings in spec.robots.items():
            password = random.RandomPassword(
                f"{name}-robot-{robot}-random",
                length=ROBOT_TOKEN_LENGTH,
                special=False,
                # Bump access.robots.<name>.rotation to issue a new token (the old one stops working
                # once the fleet has rolled onto the new config).
                keepers={"rotation": str(settings.rotation)},
                opts=child,
            )
            robot_passwords[robot] = password
            robot_secrets[robot], _ = access_secret(
                f"robot-{robot}",
                f"{args.name_prefix}/robots/{robot}-",
                f"registry token of CI robot {robot} (user name {robot}; namespace {settings.namespace})",
                password.result,
            )

        # --- the service's config: rendered once from resolved values, stored as a secret ---
        names = list(robot_passwords)
        config = pulumi.Output.all(*[robot_passwords[n].result for n in names]).apply(
            lambda tokens: render_token_service_config(
                spec,
                signing_key_file=TOKEN_SIGNING_KEY_FILE,
                signing_cert_file=TOKEN_SIGNING_CERT_FILE,
                robot_token_hashes={n: robot_token_hash(t) for n, t in zip(names, tokens, strict=True)},
            )
        )
        config_secret, config_version = access_secret(
            "token-config",
            f"{args.name_prefix}/token-config-",
            "token service config: password and token hashes, directory password (read by registry hosts at boot)",
            config,
        )

        # --- the service's code, beside the images (hosts reach the bucket through the S3 endpoint) ---
        # Its key names its SHA-256, so new code is a new object. The old one stays (retain_on_delete):
        # a rolled-back instance refresh launches the previous template version, whose hosts fetch it.
        aws.s3.BucketObjectv2(
            f"{name}-token-service-artifact",
            bucket=args.bucket_name,
            key=args.artifact.key,
            content_base64=args.artifact.content_base64,
            content_type="application/gzip",
            server_side_encryption="aws:kms",
            kms_key_id=args.kms_key_arn,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )

        # --- the lockout's shared counters (the config above names the table) ---
        self.lockout_table_arn: pulumi.Output[str] | None = None
        if spec.lockout_table is not None:
            table = aws.dynamodb.Table(
                f"{name}-lockout-table",
                name=spec.lockout_table,
                billing_mode="PAY_PER_REQUEST",
                hash_key="pk",
                attributes=[{"name": "pk", "type": "S"}],
                ttl={"enabled": True, "attribute_name": "expires_at"},
                point_in_time_recovery={"enabled": True},
                server_side_encryption={"enabled": False},  # AWS-owned key (see the module doc)
                tags=tags,
                opts=child,
            )
            self.lockout_table_arn = table.arn

        self.signing_cert_pem = certs[spec.signing_generation].cert_pem
        self.trust_bundle_pem = bundle
        self.config_secret_arn = config_secret.arn
        self.config_version_id = config_version.version_id
        self.signing_key_secret_arn = signing_key_secret.arn
        self.signing_key_secret_arns = [key_secrets[g][0].arn for g in spec.signing_generations]
        self.signing_key_version_id = signing_key_version.version_id
        self.robot_secret_arns = {robot: s.arn for robot, s in robot_secrets.items()}
        # The tokens themselves (secrets), for what stores a robot's token in another shape (components/scanning.py).
        self.robot_tokens = {robot: pulumi.Output.secret(p.result) for robot, p in robot_passwords.items()}
        self.artifact_key = args.artifact.key
        self.artifact_sha256 = args.artifact.sha256
        self.register_outputs(
            {
                "signingCertPem": self.signing_cert_pem,
                "trustBundlePem": bundle,
                "configSecretArn": config_secret.arn,
                "signingKeySecretArn": signing_key_secret.arn,
                "robotSecretArns": self.robot_secret_arns,
                "artifactKey": args.artifact.key,
                "artifactSha256": args.artifact.sha256,
            }
        )

    def fleet_token_service(self, target_group_arn: pulumi.Input[str]) -> FleetTokenService:
        """What the fleet's hosts need to run the service: its secrets, certificates, code and directory."""
        spec = self.spec
        return FleetTokenService(
            service=spec.service,
            issuer=spec.issuer,
            target_group_arn=target_group_arn,
            config_secret_arn=self.config_secret_arn,
            config_version_id=self.config_version_id,
            signing_key_secret_arn=self.signing_key_secret_arn,
            signing_key_secret_arns=self.signing_key_secret_arns,
            signing_key_version_id=self.signing_key_version_id,
            signing_cert_pem=self.signing_cert_pem,
            trust_bundle_pem=self.trust_bundle_pem,
            artifact_key=self.artifact_key,
            artifact_sha256=self.artifact_sha256,
            pip_index_url=spec.pip_index_url,
            ldap_ca_pem=spec.ldap_ca_pem,
            ldap_cidrs=spec.ldap_cidrs,
            ldap_port=spec.ldap.port if spec.ldap else None,
            lockout_table_arn=self.lockout_table_arn,
        )
