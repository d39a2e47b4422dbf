"""skopeo as a client of a running lab (lab/lab.py), for the tests that start one (test_lab_access.py,
test_lab_clients.py): the registry's host as clients name it, an account's lab-only password from the
lab state, skopeo run with a throwaway HOME and none of the caller's environment, trusting only the
lab CA, and `push`, which copies an image into the lab's registry as an account (or anonymously), so
that a test can check what the registry accepts or seed the repository it then pulls from.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from lab.lab import LabState


def host(state: LabState) -> str:
    return state.registry_url.removeprefix("https://")


def password(state: LabState, account: str) -> str:
    return str(state.account(account)["password"])


def skopeo(state: LabState, *args: str) -> subprocess.CompletedProcess[str]:
    """skopeo with a throwaway HOME (no blob-info cache between calls) and none of the caller's env."""
    home = Path(state.state_dir) / f"home-{secrets.token_hex(4)}"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, env=env, timeout=60)


def push(
    state: LabState, source: str, account: str | None, repo: str, secret: str | None = None
) -> subprocess.CompletedProcess[str]:
    if account is None:
        creds = ["--dest-no-creds"]
    else:
        creds = ["--dest-creds", f"{account}:{secret or password(state, account)}"]
    dest = f"docker://{host(state)}/{repo}"
    return skopeo(state, "copy", "--quiet", "--dest-cert-dir", state.cert_dir, *creds, source, dest)
