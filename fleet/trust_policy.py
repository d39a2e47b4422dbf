"""`python -m fleet trust-policy STACK --format containers|kyverno|policy-controller`: what a consumer
needs to verify the stack's signatures itself.

Each format requires a valid signature by the stack's public key for the stack's registry host and its
protected namespaces (`access.pullPolicies.*.requireSigned`, or `--namespace`), and for nothing else:

- `containers`: a containers-policy.json(5) for podman, CRI-O, skopeo and buildah hosts, with a
  `sigstoreSigned` requirement (`keyData`: the base64 of the PEM; `signedIdentity: matchRepository`) scoped to
  `<registry host>/<namespace>` under the `docker` transport, and a containers-registries.d(5) file turning on
  `use-sigstore-attachments` for the registry host (where cosign's `sha256-<hex>.sig` signatures live). Its
  `default` is `insecureAcceptAnything`, what Debian and Fedora ship: merge `transports.docker` into a host's
  own policy.json to keep a stricter default;
- `kyverno`: a `ClusterPolicy` with a `verifyImages` rule (the public key as the attestor; no Rekor, no CT
  log: signatures are not uploaded to a transparency log), required, tags mutated to the verified digest;
- `policy-controller`: a sigstore policy-controller `ClusterImagePolicy` whose key authority has no `ctlog`
  (no transparency log lookup).

The public key comes from the deployed stack's output `signingPublicKeyPem` (through the Automation API,
fleet/runner.py), from `--public-key FILE`, or with `--lab` from the running lab (`lab status --json`:
`signing.publicKeyFile`). The pure functions here take a :class:`TrustTarget`; the command builds it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from host.gate_config import check_public_key

FORMATS = ("containers", "kyverno", "policy-controller")
PUBLIC_KEY_OUTPUT = "signingPublicKeyPem"


class TrustPolicyError(ValueError):
    """A user mistake: no protected namespace, no public key, a key that is not one."""


@dataclass(frozen=True)
class TrustTarget:
    """What a trust policy covers: the stack's registry host, its protected namespaces, its public key."""

    stack: str
    registry_host: str  # registry.<domain> (or the lab's host:port)
    namespaces: tuple[str, ...]  # sorted, at least one
    public_key_pem: str  # validated: one SubjectPublicKeyInfo PEM

    def __post_init__(self) -> None:
        if not self.namespaces:
            raise TrustPolicyError(
                f"stack {self.stack} protects no namespace (access.pullPolicies.<namespace>.requireSigned): name the "
                "namespaces consumers should require signatures for with --namespace"
            )

    @property
    def scopes(self) -> list[str]:
        """`<host>/<namespace>` per namespace: a repository scope covers it and everything under it."""
        return [f"{self.registry_host}/{ns}" for ns in self.namespaces]


def public_key_from_outputs(stack: str, outputs: Mapping[str, Any]) -> str:
    pem = outputs.get(PUBLIC_KEY_OUTPUT)
    if not isinstance(pem, str) or not pem:
        raise TrustPolicyError(
            f"stack {stack} has no output {PUBLIC_KEY_OUTPUT}: it was last deployed before it had a signing key "
            "(pulumi up with this version), or pass the key with --public-key FILE"
        )
    return checked_key(pem, f"the output {PUBLIC_KEY_OUTPUT} of stack {stack}")


def public_key_from_file(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as err:
        raise TrustPolicyError(f"cannot read the public key file {path}: {err.strerror or err}") from None
    return checked_key(text, str(path))


def public_key_from_lab_status(status: Mapping[str, Any]) -> str:
    signing = status.get("signing")
    key_file = signing.get("publicKeyFile") if isinstance(signing, Mapping) else None
    if not isinstance(key_file, str) or not key_file:
        raise TrustPolicyError(
            "the running lab reports no signing.publicKeyFile (lab status --json): start a lab with signing, or "
            "pass --public-key FILE"
        )
    return public_key_from_file(Path(key_file))


def checked_key(pem: str, source: str) -> str:
    try:
        return check_public_key(pem)
    except ValueError as err:
        raise TrustPolicyError(f"{source}: {err}") from None


# --- the formats ---------------------------------------------------------------------------------


def containers_policy(t: TrustTarget) -> dict[str, Any]:
    """containers-policy.json(5): a signature by the key for each protected namespace; elsewhere the default."""
    requirement = {
        "type": "sigstoreSigned",
        "keyData": base64.b64encode(t.public_key_pem.encode()).decode(),
        "signedIdentity": {"type": "matchRepository"},
    }
    return {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {scope: [requirement] for scope in t.scopes}},
    }


def registries_d(t: TrustTarget) -> dict[str, Any]:
    """containers-registries.d(5): read (and write) sigstore signatures as attachments in the registry."""
    return {"docker": {t.registry_host: {"use-sigstore-attachments": True}}}


def registries_d_name(t: TrustTarget) -> str:
    return f"registry-fleet-{t.stack}.yaml"


def _references(t: TrustTarget, deep: str) -> list[str]:
    """Patterns for every repository of each namespace: the namespace itself and everything under it."""
    out = []
    for scope in t.scopes:
        out += [f"{scope}:*", f"{scope}@*", f"{scope}/{deep}"]
    return out


def kyverno_policy(t: TrustTarget) -> dict[str, Any]:
    """A Kyverno ClusterPolicy (kyverno.io/v1) with one verifyImages rule (Kyverno 1.13 or newer:
    `failureAction` per rule; `*` in imageReferences matches across `/`)."""
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {
            "name": f"registry-fleet-{t.stack}-signed-images",
            "annotations": {
                "policies.kyverno.io/title": f"Signed images from {t.registry_host}",
                "policies.kyverno.io/description": (
                    f"Images of {', '.join(t.namespaces)} on {t.registry_host} run only with a valid signature by "
                    f"the registry-fleet {t.stack} signing key (python -m fleet trust-policy {t.stack})."
                ),
            },
        },
        "spec": {
            "background": False,
            "webhookTimeoutSeconds": 30,
            "rules": [
                {
                    "name": "require-registry-fleet-signature",
                    "match": {"any": [{"resources": {"kinds": ["Pod"]}}]},
                    "verifyImages": [
                        {
                            "imageReferences": _references(t, "*"),
                            "failureAction": "Enforce",
                            "type": "Cosign",
                            "mutateDigest": True,
                            "verifyDigest": True,
                            "required": True,
                            "attestors": [
                                {
                                    "count": 1,
                                    "entries": [
                                        {
                                            "keys": {
                                                "publicKeys": t.public_key_pem,
                                                "signatureAlgorithm": "sha256",
                                                # Signatures live in the registry only: no Rekor, no CT log.
                                                "rekor": {"ignoreTlog": True},
                                                "ctlog": {"ignoreSCT": True},
                                            }
                                        }
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ],
        },
    }


def policy_controller_policy(t: TrustTarget) -> dict[str, Any]:
    """A sigstore policy-controller ClusterImagePolicy (policy.sigstore.dev/v1beta1): globs match the
    repository (`**` across `/`); a key authority without `ctlog` looks nothing up in a transparency log."""
    globs = []
    for scope in t.scopes:
        globs += [{"glob": scope}, {"glob": f"{scope}/**"}]
    return {
        "apiVersion": "policy.sigstore.dev/v1beta1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": f"registry-fleet-{t.stack}-signed-images"},
        "spec": {
            "images": globs,
            "authorities": [
                {"name": f"registry-fleet-{t.stack}", "key": {"data": t.public_key_pem, "hashAlgorithm": "sha256"}}
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """PEMs and other multi-line strings as `|` blocks."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000)


def render(t: TrustTarget, fmt: str) -> str:
    """The text the command prints for `fmt`."""
    if fmt == "kyverno":
        return dump_yaml(kyverno_policy(t))
    if fmt == "policy-controller":
        return dump_yaml(policy_controller_policy(t))
    if fmt == "containers":
        return (
            "# /etc/containers/policy.json: merge transports.docker into the host's own file to keep its default\n"
            + json.dumps(containers_policy(t), indent=2)
            + f"\n# /etc/containers/registries.d/{registries_d_name(t)}\n"
            + dump_yaml(registries_d(t))
        )
    raise TrustPolicyError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def write_containers(t: TrustTarget, directory: Path) -> list[Path]:
    """policy.json and registries.d/<name>.yaml under `directory` (skopeo --policy / --registries.d)."""
    policy = directory / "policy.json"
    registries = directory / "registries.d" / registries_d_name(t)
    registries.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(json.dumps(containers_policy(t), indent=2) + "\n")
    registries.write_text(dump_yaml(registries_d(t)))
    return [policy, registries]
