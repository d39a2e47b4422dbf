"""shellcheck reads the shell scripts a registry host runs: the templates in host/files/ (with
host/files/.shellcheckrc, which lets a placeholder stand unquoted) and, with every rule, the scripts
a token-mode host gets from user-data, rendered.

Needs Debian's `shellcheck` (a system package). What this cannot prove: that the scripts work on a
host; tests/test_token_service_host.py runs the rendered install and fetch scripts for real.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from host.boot import HostBoot, SecretFile, TokenServiceBoot, render_host
from host.contract import FETCH_SCRIPT_PATH, HOST_CERT_FILE, HOST_KEY_FILE, TOKEN_INSTALL_SCRIPT_PATH
from host.registry_config import RegistryConfig, render_registry_config

pytestmark = pytest.mark.lab  # needs Debian's shellcheck

FILES = Path(str(resources.files("host") / "files"))
CERT = "-----BEGIN CERTIFICATE-----\nMIIBfakecert\n-----END CERTIFICATE-----\n"
SHA256 = "0123456789abcdef" * 4


def arn(name: str) -> str:
    return f"arn:aws:secretsmanager:eu-west-1:111122223333:secret:registry-fleet/dev/{name}-AbCdEf"


def token_mode_host() -> HostBoot:
    cfg = RegistryConfig(environment="dev", public_url="https://registry.example.com", bucket="b-1", region="eu-west-1")
    token = TokenServiceBoot(
        artifact_bucket="registry-fleet-dev-blobs",
        artifact_key=f"registry-fleet/token-service/auth-{SHA256}.tar.gz",
        artifact_sha256=SHA256,
        pip_index_url="https://pypi.org/simple",
        config_secret_arn=arn("token-config"),
        signing_key_secret_arn=arn("token-signing-key"),
        tls_key_secret_arn=arn("tls-key"),
        signing_cert_pem=CERT,
        tls_cert_file=HOST_CERT_FILE,
    )
    return HostBoot(
        region="eu-west-1",
        registry_config_yaml=render_registry_config(cfg),
        http_secret_arn=arn("http-secret"),
        secret_files=(SecretFile(arn("tls-key"), HOST_KEY_FILE),),
        public_files=((HOST_CERT_FILE, CERT),),
        token_service=token,
    )


def shellcheck(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("shellcheck")
    assert found, "shellcheck is not installed (Debian package shellcheck)"
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_script_templates_pass_shellcheck() -> None:
    templates = sorted(str(path) for path in FILES.glob("*.sh"))
    assert len(templates) >= 2, f"no script templates in {FILES}"
    result = shellcheck("--severity=style", *templates)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("path", [FETCH_SCRIPT_PATH, TOKEN_INSTALL_SCRIPT_PATH])
def test_the_rendered_scripts_pass_every_shellcheck_rule(path: str, tmp_path: Path) -> None:
    script = tmp_path / Path(path).name
    script.write_text(render_host(token_mode_host()).content(path))
    result = shellcheck("--norc", "--severity=style", str(script))
    assert result.returncode == 0, f"{path}:\n{result.stdout}"


def test_the_rendered_maintenance_script_passes_every_shellcheck_rule(tmp_path: Path) -> None:
    from host.maintenance import render_maintenance_script

    script = tmp_path / "registry-maintenance.sh"
    script.write_text(render_maintenance_script())
    result = shellcheck("--norc", "--severity=style", str(script))
    assert result.returncode == 0, result.stdout
