"""The recording engine: run the real program for a stack under Pulumi mocks.

No Pulumi CLI or provider plugin runs here, so `plan`, the tests and the audit run
`infra.program.build(settings, secrets)` (with `infra.secrets.placeholder_access_secrets`: a plan
never needs or shows a real secret) against an in-process mock monitor that records every
registered resource as a `policy.graph.Res` (the model the policy rules read): its type, logical
name, parent, provider and inputs exactly as the engine would receive them. Providers' computed
outputs (ARNs, DNS names, generated keys) are faked deterministically, and any data-source lookup
the program was not expected to make fails loudly instead of returning an empty answer.

What this proves and what it does not: the resource graph and every input the program
sends are real; nothing here checks that AWS accepts them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, Mocks

from host.contract import DEBIAN_AMI_NAME, DEBIAN_AMI_OWNER
from infra.settings import PROJECT, Settings
from policy.graph import Res, is_secret, of_type, unwrap

ACCOUNT_ID = "123456789012"
REDACTED = "[secret]"

# Zones the mock reports per region: enough for every stack, and few enough that asking for
# more zones than a region has is caught.
_ZONES = {"us-east-1": "abcdef"}


def debian_ami_id(region: str, release: int, architecture: str) -> str:
    """The id the mock gives the newest Debian `release` image for `architecture` (Debian's name) in `region`."""
    return f"ami-{_digest(region, str(release), architecture, n=17)}"


def local_zone(region: str) -> str:
    """The Local Zone the mock lists unless the lookup asks for the region's own zones only."""
    return f"{region}-lcl-1a"


def _filter_values(args: Mapping[str, Any], name: str) -> list[str] | None:
    """The values of the lookup's filter `name`, or None when it has no such filter."""
    found = [f.get("values") for f in args.get("filters") or [] if f.get("name") == name]
    return list(found[0]) if found else None


class UnexpectedInvokeError(Exception):
    """The program made a data-source lookup that the recording engine does not know."""


@dataclass
class Recording:
    """What one run of the program registered, in registration order, and its stack outputs."""

    stack: str
    resources: list[Res]
    outputs: dict[str, Any]
    secret_outputs: set[str]

    def of_type(self, type_: str) -> list[Res]:
        return of_type(self.resources, type_)

    def named(self, name: str) -> Res:
        found = [r for r in self.resources if r.name == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r} (expected exactly one)")
        return found[0]

    def by_urn(self, urn: str) -> Res | None:
        return next((r for r in self.resources if r.urn == urn), None)

    def replaced(self, name: str, /, **changes: Any) -> Recording:
        """A copy with resource `name` changed (`dataclasses.replace`): how tests build broken variants."""
        target = self.named(name)
        changed = dataclasses.replace(target, **changes)
        return dataclasses.replace(self, resources=[changed if r is target else r for r in self.resources])

    def in_urn_order(self) -> list[Res]:
        """The resources sorted by URN: the program registers concurrently, so registration order varies
        between runs; what reads the resources in this order (the audit) reads the same every run."""
        return sorted(self.resources, key=lambda r: r.urn)


def redact(value: Any) -> Any:
    """Inputs with every secret shown as "[secret]" (for anything printed)."""
    if is_secret(value):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _digest(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def fake_pem(kind: str, name: str) -> str:
    return f"-----BEGIN {kind}-----\nMOCK{_digest(kind, name, n=40)}\n-----END {kind}-----\n"


def fake_secret(name: str) -> str:
    """The value the mock gives a generated secret: tests search for it where it must not be."""
    return f"mocksecret{_digest('secret', name, n=24)}"


class RecordingMocks(Mocks):
    """Fakes providers' computed outputs; answers only the lookups the program is known to make."""

    def __init__(self, default_region: str):
        self.default_region = default_region
        self.provider_regions: dict[str, str] = {}

    def region_of(self, provider_ref: str | None) -> str:
        if not provider_ref:
            return self.default_region
        urn = provider_ref.rsplit("::", 1)[0]
        return self.provider_regions.get(urn, self.default_region)

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        region = self.region_of(args.provider)
        token = args.token
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            letters = _ZONES.get(region, "abc")
            names = [f"{region}{c}" for c in letters]
            ids = [f"{region[:3]}-az{i + 1}" for i in range(len(names))]
            if _filter_values(args.args, "opt-in-status") != ["opt-in-not-required"]:
                # What an account that opted in to a Local Zone gets: its name sorts before the region's zones.
                names, ids = [local_zone(region), *names], [f"{region[:3]}-lcl1-az1", *ids]
            return {"names": names, "zoneIds": ids, "id": region}, []
        if token == "aws:ec2/getAmi:getAmi":
            return self._debian_ami(region, args.args), []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT_ID,
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/mock",
                "userId": "AIDAMOCK",
                "id": ACCOUNT_ID,
            }, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}, []
        if token == "aws:kms/getPublicKey:getPublicKey":
            return self._public_key(str(args.args.get("keyId", ""))), []
        if token == "aws:elb/getServiceAccount:getServiceAccount":
            return {"arn": "arn:aws:iam::156460612806:root", "id": "156460612806"}, []
        raise UnexpectedInvokeError(
            f"unexpected lookup {token} (args {args.args}): add it to fleet/engine.py only if the program must make it"
        )

    @staticmethod
    def _public_key(key_id: str) -> dict[str, Any]:
        """What KMS GetPublicKey gives for a signing key: a real P-256 public key (SubjectPublicKeyInfo),
        derived from the key id, so the same key always has the same public key and it loads like AWS's."""
        if not key_id:
            raise UnexpectedInvokeError("getPublicKey without a keyId")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        scalar = int(_digest("kms-public-key", key_id, n=60), 16)
        public = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {
            "id": key_id,
            "arn": key_id,
            "keyId": key_id,
            "customerMasterKeySpec": "ECC_NIST_P256",
            "keyUsage": "SIGN_VERIFY",
            "signingAlgorithms": ["ECDSA_SHA_256"],
            "encryptionAlgorithms": [],
            "publicKey": base64.b64encode(der).decode(),
            "publicKeyPem": pem.decode(),
        }

    @staticmethod
    def _debian_ami(region: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """The newest Debian image the lookup names: Debian's own, of one release and architecture."""
        arch = (_filter_values(args, "architecture") or ["x86_64"])[0]
        names = _filter_values(args, "name") or []
        match = re.fullmatch(r"debian-(\d+)-(arm64|amd64)-\*", names[0]) if len(names) == 1 else None
        if list(args.get("owners") or []) != [DEBIAN_AMI_OWNER] or match is None:
            raise UnexpectedInvokeError(
                f"AMI lookup {args}: the fleet boots Debian's own images (owner {DEBIAN_AMI_OWNER}, one name "
                f"filter like {DEBIAN_AMI_NAME!r})"
            )
        release, debian_arch = int(match[1]), match[2]
        return {
            "id": debian_ami_id(region, release, debian_arch),
            "name": f"debian-{release}-{debian_arch}-20261101-1234",
            "architecture": arch,
            "ownerId": DEBIAN_AMI_OWNER,
        }

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        name = args.name
        typ = args.typ
        if typ.startswith("pulumi:providers:"):
            return f"{name}-provider-id", inputs
        region = self.region_of(args.provider)
        service = typ.split(":")[1].split("/")[0] if typ.startswith("aws:") else ""
        rid = f"{name}-{_digest(typ, name)}"
        out = dict(inputs)
        if typ.startswith("aws:"):
            out.setdefault("arn", f"arn:aws:{service}:{region}:{ACCOUNT_ID}:{name}")
        if "name" not in inputs:
            # Autonaming: the engine would make a physical name from the prefix or logical name.
            out["name"] = f"{inputs.get('namePrefix', name + '-')}{_digest(name, n=7)}"
        out.update(self._computed(typ, name, rid, region, inputs))
        return out.pop("__id__", rid), out

    def _computed(self, typ: str, name: str, rid: str, region: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if typ == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket") or f"{inputs.get('bucketPrefix', name + '-')}{_digest(name)}"
            return {
                "__id__": bucket,
                "bucket": bucket,
                "arn": f"arn:aws:s3:::{bucket}",
                "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com",
                "region": region,
            }
        if typ == "aws:sqs/queue:Queue":
            queue = inputs.get("name") or f"{inputs.get('namePrefix', name + '-')}{_digest(name, n=7)}"
            url = f"https://sqs.{region}.amazonaws.com/{ACCOUNT_ID}/{queue}"
            return {"__id__": url, "url": url, "arn": f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{queue}"}
        if typ == "aws:kms/key:Key":
            key_id = f"{_digest(name, n=8)}-0000-4000-8000-{_digest(name, 'k', n=12)}"
            return {"__id__": key_id, "keyId": key_id, "arn": f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/{key_id}"}
        if typ == "aws:iam/role:Role":
            return {"arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{name}", "name": inputs.get("name", name)}
        if typ == "aws:iam/instanceProfile:InstanceProfile":
            return {"arn": f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{name}", "name": name}
        if typ == "aws:secretsmanager/secretVersion:SecretVersion":
            # A new value is a new version (the provider replaces the version): digest the value.
            value = unwrap(inputs.get("secretString", ""))
            return {"versionId": f"{_digest(name, n=8)}-{_digest('version', str(value), n=12)}"}
        if typ == "aws:secretsmanager/secret:Secret":
            arn = f"arn:aws:secretsmanager:{region}:{ACCOUNT_ID}:secret:{name}-{_digest(name, n=6)}"
            return {"__id__": arn, "arn": arn}
        if typ == "aws:lb/loadBalancer:LoadBalancer":
            return {
                "dnsName": f"{name}-{_digest(name)}.{region}.elb.amazonaws.com",
                "zoneId": "Z32O12XQLNTSW2",
                "arnSuffix": f"app/{name}/{_digest(name, n=16)}",
            }
        if typ == "aws:lb/targetGroup:TargetGroup":
            return {"arnSuffix": f"targetgroup/{name}/{_digest(name, n=16)}"}
        if typ == "aws:acm/certificate:Certificate":
            domains = [inputs.get("domainName", ""), *(inputs.get("subjectAlternativeNames") or [])]
            return {
                "domainValidationOptions": [
                    {
                        "domainName": d,
                        "resourceRecordName": f"_{_digest(d)}.{d}.",
                        "resourceRecordType": "CNAME",
                        "resourceRecordValue": f"_{_digest(d, 'v')}.acm-validations.aws.",
                    }
                    for d in domains
                ]
            }
        if typ == "aws:ec2/launchTemplate:LaunchTemplate":
            return {"__id__": f"lt-{_digest(name, n=17)}", "latestVersion": 1}
        if typ == "aws:ssm/document:Document":
            return {"latestVersion": "1"}
        if typ == "aws:cloudfront/distribution:Distribution":
            dist = f"E{_digest(name, n=13).upper()}"
            return {
                "__id__": dist,
                "domainName": f"d{_digest(name, n=13)}.cloudfront.net",
                "hostedZoneId": "Z2FDTNDATAQYW2",
                "arn": f"arn:aws:cloudfront::{ACCOUNT_ID}:distribution/{dist}",
            }
        if typ == "aws:cloudfront/publicKey:PublicKey":
            return {"__id__": f"K{_digest(name, n=13).upper()}"}
        if typ.startswith("aws:ec2/") and typ.split("/")[1].split(":")[0] in {"vpc", "subnet", "securityGroup"}:
            prefix = {"vpc": "vpc", "subnet": "subnet", "securityGroup": "sg"}[typ.split("/")[1].split(":")[0]]
            return {"__id__": f"{prefix}-{_digest(name, n=17)}"}
        if typ == "tls:index/privateKey:PrivateKey":
            algo = inputs.get("algorithm", "RSA")
            kind = "RSA PRIVATE KEY" if algo == "RSA" else "EC PRIVATE KEY"
            return {
                "privateKeyPem": fake_pem(kind, name),
                "privateKeyPemPkcs8": fake_pem("PRIVATE KEY", name),
                "publicKeyPem": fake_pem("PUBLIC KEY", name),
                "publicKeyOpenssh": f"ssh-rsa MOCK{_digest(name)}",
            }
        if typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            return {"certPem": fake_pem("CERTIFICATE", name)}
        if typ == "tls:index/certRequest:CertRequest":
            return {"certRequestPem": fake_pem("CERTIFICATE REQUEST", name)}
        if typ == "random:index/randomPassword:RandomPassword":
            # New keepers make a new password (the provider replaces it), so a new secret version downstream.
            # The value starts with fake_secret(name): a search for it by name still finds it anywhere.
            keepers = str(sorted(dict(unwrap(inputs.get("keepers")) or {}).items()))
            value = fake_secret(name) + (_digest("keepers", keepers) if inputs.get("keepers") else "")
            return {"result": value, "bcryptHash": f"$2a$10${_digest('bcrypt', name, keepers, n=53)}"}
        return {}


class RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping each registration's parent and provider."""

    def __init__(self, mocks: RecordingMocks):
        super().__init__(mocks)
        self.recording_mocks = mocks
        self.recorded: list[Res] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        urn = response.urn
        registration = self.resources[urn]
        state = registration.state
        inputs = plain_assets(pulumi.runtime.rpc.deserialize_properties(request.object))
        if request.type == "pulumi:providers:aws":
            self.recording_mocks.provider_regions[urn] = str(unwrap(inputs.get("region", "")))
        self.recorded.append(
            Res(
                type=request.type,
                name=request.name,
                urn=urn,
                inputs=dict(inputs),
                # Top-level resources have the stack as parent; record them as parentless.
                parent=(request.parent or None) if "::pulumi:pulumi:Stack::" not in request.parent else None,
                provider=request.provider.rsplit("::", 1)[0] if request.provider else None,
                id=str(registration.id or ""),
                outputs=plain_assets(dict(state)),
                custom=bool(request.custom),
                retain_on_delete=bool(request.retainOnDelete),
            )
        )
        return response


def plain_assets(value: Any) -> Any:
    """`value` with every Pulumi asset or archive (a Lambda function's code) as plain data: an archive's members
    by name; a file asset as its path under the repository and its SHA-256 (what the engine would send a hash of),
    so a plan is JSON and the same in every checkout."""
    if isinstance(value, pulumi.AssetArchive):
        return {"archive": {name: plain_assets(member) for name, member in sorted(value.assets.items())}}
    if isinstance(value, pulumi.FileAsset):
        path = Path(str(value.path)).resolve()
        root = Path(__file__).resolve().parent.parent
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        return {"file": shown, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    if isinstance(value, pulumi.StringAsset):
        return {"text": value.text}
    if isinstance(value, dict):
        return {k: plain_assets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_assets(v) for v in value]
    return value


def program_with_placeholders(settings: Settings) -> Mapping[str, Any]:
    """The real program, with fake secret inputs in the shape the stack needs."""
    from infra.program import build
    from infra.secrets import placeholder_access_secrets

    return build(settings, placeholder_access_secrets(settings))


def record(settings: Settings, build: Callable[[Settings], Mapping[str, Any]] | None = None) -> Recording:
    """Run the program for `settings` under mocks and return everything it registered."""
    if build is None:
        build = program_with_placeholders
    mocks = RecordingMocks(settings.region)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=settings.stack, preview=False, monitor=monitor)
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()

    async def collect(exports: Mapping[str, Any]) -> None:
        for key, value in exports.items():
            out = pulumi.Output.from_input(value)
            outputs[key] = await out.future()
            if await out.is_secret():
                secret_outputs.add(key)

    def run() -> Any:
        assert build is not None
        exports = build(settings)
        return pulumi.Output.from_input(asyncio.ensure_future(collect(exports)))

    pulumi.runtime.test(run)()
    if not monitor.recorded:
        raise RuntimeError("the program registered no resource: the mocks checked nothing")
    return Recording(settings.stack, list(monitor.recorded), outputs, secret_outputs)
