"""host/log_redact.py, the filter a registry host (and the lab) runs the registry through: credentials in the
registry's output are masked before the journal, and the filter ends as the command did."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host.log_redact import MASK, SECRETS_VAR, redact
from lab import supervisor
from tests.helpers.registry import REGISTRY_BINARY

SCRIPT = Path(__file__).resolve().parent.parent / "host" / "log_redact.py"
TOKEN = "k3y-Abc_def.ghi~jkl+mno/pqr=="


@pytest.mark.parametrize(
    "line",
    [
        f"headers=map[Authorization:[Bearer {TOKEN}]]",  # distribution's configureEvents
        f"Authorization: Bearer {TOKEN}",
        f'{{"authorization": "Bearer {TOKEN}"}}',
        f"AUTHORIZATION:[BASIC {TOKEN}]",
    ],
)
def test_every_form_of_a_credential_header_is_masked(line: str) -> None:
    out = redact(line.encode(), [])
    assert TOKEN.encode() not in out and MASK in out, out


def test_listed_secrets_are_masked_anywhere_and_other_text_is_kept() -> None:
    line = b'level=info msg="secret s3cr3t-value in a message" go.version=go1.19 Authorization-free text'
    assert redact(line, [b"s3cr3t-value"]) == line.replace(b"s3cr3t-value", MASK)
    assert redact(b"authorization required\n", []) == b"authorization required\n"  # no scheme: nothing to mask


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv], env={"PATH": "/usr/bin:/bin", **(env or {})}, capture_output=True,
        timeout=30,
    )  # fmt: skip


def test_the_commands_output_and_status_pass_through_masked() -> None:
    program = f"echo 'Authorization: Bearer {TOKEN}'; echo the-secret >&2; echo plain; exit 3"
    done = run(["--", "sh", "-c", program], {SECRETS_VAR: json.dumps(["the-secret"])})
    assert done.returncode == 3
    assert done.stdout == b"Authorization: Bearer [masked]\n[masked]\nplain\n"  # stderr joins stdout, in order
    secrets = run(["--", "sh", "-c", f'echo "${{{SECRETS_VAR}:-unset}}"'], {SECRETS_VAR: '["x1"]'})
    assert secrets.stdout == b"unset\n", "the command never sees the secrets list"


def test_bad_use_is_a_clear_error() -> None:
    usage = run(["sh", "-c", "true"])
    assert usage.returncode == 2 and b"usage: registry-fleet-log-redact -- COMMAND" in usage.stderr
    bad = run(["--", "true"], {SECRETS_VAR: '{"not": "a list"}'})
    assert bad.returncode == 2 and f"{SECRETS_VAR} must be a JSON list of strings".encode() in bad.stderr
    missing = run(["--", "/nonexistent/registry"])
    assert missing.returncode == 127 and b"cannot run /nonexistent/registry" in missing.stderr


def test_a_group_stop_lets_the_last_lines_through_and_ends_by_the_commands_signal() -> None:
    """systemd stops the unit by signalling every process of it: the command drains, logs, and ends by the
    signal; the filter passes its last line, then ends by the same signal (systemd: a clean stop)."""
    program = "trap 'echo drained; trap - TERM; kill -TERM $$' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--", "sh", "-c", program], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.stdout.read().endswith(b"drained\n")  # after the shell's note on its killed `sleep`
    assert proc.wait(timeout=10) == -signal.SIGTERM


def registry_output(tmp_path: Path, through_filter: bool) -> str:
    """The real registry's output for a config whose notification endpoint sends a bearer, until it listens."""
    port = supervisor.free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem: {{rootdirectory: {tmp_path / 'data'}}}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "notifications:\n  endpoints:\n    - name: scan-events\n      url: https://127.0.0.1:9/events\n"
        f"      headers: {{Authorization: [Bearer {TOKEN}]}}\n      timeout: 1s\n      threshold: 5\n"
        "      backoff: 1s\n"
    )
    prefix = [sys.executable, str(SCRIPT), "--"] if through_filter else []
    log = tmp_path / f"registry-{through_filter}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*prefix, REGISTRY_BINARY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while "listening on" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
    return log.read_text()


def test_the_real_registry_logs_the_bearer_and_the_filter_masks_it(tmp_path: Path) -> None:
    bare = registry_output(tmp_path, through_filter=False)
    assert "configuring endpoint scan-events" in bare and TOKEN in bare, "distribution 2.8 logs endpoint headers"
    filtered = registry_output(tmp_path, through_filter=True)
    assert "listening on" in filtered
    (line,) = [line for line in filtered.splitlines() if "configuring endpoint scan-events" in line]
    assert TOKEN not in filtered and "Authorization:[Bearer [masked]]" in line, line
