"""What `make lab` shows a user: a sample image pushed, pulled back through the CDN edge, checked.

In token mode the demo signs in as an account that may push (lab/accounts.demo_account: a team's
developer, e.g. `team-a-developer`) and pushes to its team's namespace (`team-a/sample`): skopeo
gets its token from the realm through nginx, as a client of the fleet does.
"""

from __future__ import annotations

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
