"""What `make lab` shows a user: a sample image pushed, pulled back through the CDN edge, checked.

In token mode the demo signs in as an account that may push (lab/accounts.demo_account: a team's
developer, e.g. `team-a-developer`) and pushes to its team's namespace (`team-a/sample`): skopeo
gets its token from the realm through nginx, as a client of the fleet does.

On a stack that protects a namespace the demo account may push to (dev: `team-a/release`), `signed_pull`
copies the sample there, shows skopeo's pull of it refused by the signature gate (DENIED, unsigned), signs
it as `python -m fleet sign STACK IMAGE --lab` does (the lab's KMS key) and shows the same pull served.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.image import build_image, layer_digests, skopeo_copy, skopeo_digest
from lab.lab import LabState


@dataclass(frozen=True)
class DemoResult:
    image: str
    digest: str
    layers: int
    edge_bytes: int


def edge_bytes(state: LabState) -> int:
    try:
        return int(json.loads(Path(state.edge_stats_file).read_text())["bytes"])
    except (OSError, ValueError, KeyError):
        return 0


def push_and_pull(state: LabState, tag: str = "1") -> DemoResult:
    creds = f"{state.username}:{state.password}"
    host = state.registry_url.removeprefix("https://")
    remote = f"docker://{host}/{state.sample_repo}:{tag}"
    with tempfile.TemporaryDirectory(prefix="registry-lab-") as tmp:
        layout = Path(tmp) / "sample"
        source = build_image(layout, tag, [{"hello.txt": 4096}, {"payload.bin": 2 * 1024 * 1024}])
        pushed = skopeo_digest(source, state.cert_dir, None)
        skopeo_copy(source, remote, state.cert_dir, creds)
        before = edge_bytes(state)
        back = Path(tmp) / "pulled"
        skopeo_copy(remote, f"oci:{back}:{tag}", state.cert_dir, creds)
        pulled = skopeo_digest(f"oci:{back}:{tag}", state.cert_dir, None)
        if pulled != pushed or layer_digests(back, tag) != layer_digests(layout, tag):
            raise RuntimeError(f"pulled image differs: pushed {pushed}, pulled {pulled}")
        return DemoResult(
            f"{host}/{state.sample_repo}:{tag}", pushed, len(layer_digests(layout, tag)), edge_bytes(state) - before
        )


@dataclass(frozen=True)
class SignedPullResult:
    image: str  # HOST/REPO:TAG in the protected namespace
    digest: str
    refused: str  # skopeo's error for the unsigned pull (the gate's DENIED message)
    signed: str  # what signing printed


def demo_protected_repository(state: LabState) -> str | None:
    """`<ns>/sample` in the first namespace requiring signatures the demo account may push to (its namespace or
    under it); None when the lab protects none of those."""
    from infra.settings import Settings, signed_namespaces

    settings = Settings.model_validate_json((Path(state.state_dir) / "settings.json").read_text())
    signed = signed_namespaces(settings)
    for ns in state.signing.get("namespaces", []) if state.signing else []:
        if ns in signed and (ns == state.namespace or ns.startswith(state.namespace + "/")):
            return f"{ns}/sample"
    return None


def signed_pull(state: LabState, repository: str, tag: str = "1") -> SignedPullResult:
    """Copy the demo's sample (`push_and_pull` first) into `repository`, pull it unsigned (refused), sign
    it with the lab's key, pull it again (served). RuntimeError when the gate does not behave so."""
    from fleet.signing import lab_target, sign
    from signing.references import ImageRef

    creds = f"{state.username}:{state.password}"
    host = state.registry_url.removeprefix("https://")
    remote = f"docker://{host}/{repository}:{tag}"
    skopeo_copy(f"docker://{host}/{state.sample_repo}:{tag}", remote, state.cert_dir, creds)
    with tempfile.TemporaryDirectory(prefix="registry-lab-") as tmp:
        try:
            skopeo_copy(remote, f"oci:{Path(tmp) / 'unsigned'}:{tag}", state.cert_dir, creds)
        except RuntimeError as err:
            refused = str(err)
        else:
            raise RuntimeError(f"{repository}:{tag} is unsigned, yet its pull was served: the gate is not in the way")
        if "denied" not in refused.lower() or "no valid signature" not in refused:
            raise RuntimeError(
                f"the unsigned pull of {repository}:{tag} failed, but not with the gate's DENIED: {refused}"
            )
        out = io.StringIO()
        (digest,) = sign(lab_target(state, None), ImageRef(repository, tag, None), recursive=True, out=out)[:1]
        back = Path(tmp) / "signed"
        skopeo_copy(remote, f"oci:{back}:{tag}", state.cert_dir, creds)
        pulled = skopeo_digest(f"oci:{back}:{tag}", state.cert_dir, None)
    if pulled != digest:
        raise RuntimeError(f"signed {digest}, pulled {pulled}")
    refusal = refused[refused.lower().find("denied") :].strip().rstrip('"')
    return SignedPullResult(f"{host}/{repository}:{tag}", digest, refusal, out.getvalue().strip())
