"""The scanning's host side and its inputs (issue 14): the configs the forwarder and the workers read, the
registry's notification endpoint and its environment override, a scanner worker's boot (Trivy pinned and
verified, run for real with a stand-in curl), the robots that pull everything and push the mirror only, and the
`scanning` settings. The deployed graph is tests/test_scanning_graph.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from auth.access import AccessControl, Robot, Team
from auth.identity import Identity
from auth.scopes import Scope
from host.boot import BEARER_MARK, FetchSet, render_fetch_script
from host.registry_config import (
    NotificationEndpoint,
    RegistryConfig,
    notification_endpoints_env,
    registry_config_dict,
)
from host.scan_config import WorkerConfig, events_config, render_worker_config, worker_config
from host.scanner_host import SCANNER_PASSWORD_FILE, ScannerBoot, _trivy_script, render_scanner_host
from infra.settings import SettingsError, deep_merge, settings_from_config
from tests.helpers import stack_config

QUEUE = "https://sqs.eu-west-1.amazonaws.com/111122223333/reg-dev-scan"
TOPIC = "arn:aws:sns:eu-west-1:111122223333:reg-dev-scan-findings"
SECRET = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:reg-dev/robots/registry-scanner-AbCdEf"


def worker(**changes: Any) -> WorkerConfig:
    cfg = WorkerConfig(
        queue_url=QUEUE,
        region="eu-west-1",
        bucket="reg-dev-blobs-1234",
        registry="registry.dev.example.com",
        username="registry-scanner",
        password_file=SCANNER_PASSWORD_FILE,
        trivy="/usr/local/bin/trivy",
        findings_topic_arn=TOPIC,
        findings_threshold="HIGH",
        visibility_timeout_seconds=900,
        cache_dir="/var/cache/registry-scanner",
    )
    return dataclasses.replace(cfg, **changes)


def scanner_boot(**changes: Any) -> ScannerBoot:
    boot = ScannerBoot(
        region="eu-west-1",
        architecture="amd64",
        worker_config_yaml=render_worker_config(worker()),
        robot_secret_arn=SECRET,
        artifact_bucket="reg-dev-blobs-1234",
        artifact_key="registry-fleet/token-service/auth-" + "a" * 64 + ".tar.gz",
        artifact_sha256="a" * 64,
        pip_index_url="https://pypi.org/simple",
        trivy_version="0.59.1",
        trivy_sha256="b" * 64,
    )
    return dataclasses.replace(boot, **changes)


# --- the configs ---------------------------------------------------------------------------------------


def test_the_events_config_has_the_contracts_keys_and_no_secret() -> None:
    assert events_config(QUEUE, "eu-west-1") == {
        "listen": "127.0.0.1:5004",
        "cert_file": "/etc/docker/registry/tls/host.crt",
        "key_file": "/etc/registry-scan-events/tls.key",
        "token_file": "/etc/registry-fleet/scan-events.token",
        "queue_url": QUEUE,
        "region": "eu-west-1",
        "endpoint_url": None,
        "ignore_prefixes": ["mirror/"],
    }


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"queue_url": "http://sqs.eu-west-1.amazonaws.com/1/q"}, "worker.queue_url must be an SQS queue URL"),
        ({"findings_threshold": "SEVERE"}, "worker.findings_threshold must be one of UNKNOWN"),
        ({"registry": "https://registry.dev.example.com"}, "worker.registry must be a registry host[:port]"),
        ({"password_file": "robot.token"}, "worker.password_file must be an absolute path"),
        ({"visibility_timeout_seconds": 30}, "worker.visibility_timeout_seconds must be 60..43200"),
    ],
)
def test_a_bad_worker_value_is_named(change: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError) as info:
        worker_config(worker(**change))
    assert str(info.value).startswith(says), info.value


def test_an_events_config_refuses_a_queue_that_is_not_sqs() -> None:
    with pytest.raises(ValueError, match=r"events\.queue_url must be an SQS queue URL"):
        events_config("https://example.com/q", "eu-west-1")


# --- the registry's notification endpoint --------------------------------------------------------------

ENDPOINT = NotificationEndpoint(
    "scan-events",
    "https://127.0.0.1:5004/events",
    None,
    ignore_actions=("pull", "delete"),
    ignore_media_types=("application/octet-stream",),
)


def test_the_endpoint_in_config_yml_has_no_header_and_the_environment_adds_it() -> None:
    cfg = RegistryConfig(
        environment="dev",
        public_url="https://registry.dev.example.com",
        bucket="b-1",
        region="eu-west-1",
        notifications=(ENDPOINT,),
    )
    (in_file,) = registry_config_dict(cfg)["notifications"]["endpoints"]
    assert "headers" not in in_file
    assert in_file["ignore"] == {"mediatypes": ["application/octet-stream"], "actions": ["pull", "delete"]}
    template = notification_endpoints_env((ENDPOINT,), BEARER_MARK)
    # What the fetch script writes: the template with the token in, single-quoted in the EnvironmentFile.
    value = template.replace(BEARER_MARK, "Tok3n")
    assert "'" not in template and "\n" not in template
    (from_env,) = yaml.safe_load(value)  # distribution reads the variable's value as YAML
    assert from_env == {**in_file, "headers": {"Authorization": ["Bearer Tok3n"]}}


def test_the_fetch_script_puts_the_token_into_the_registrys_environment_and_never_prints_it() -> None:
    script = render_fetch_script(
        "eu-west-1", [FetchSet("docker-registry", (), SECRET, (SECRET, '["Bearer @BEARER@"]'))]
    )
    assert "write_notifications " + SECRET + " REGISTRY_NOTIFICATIONS_ENDPOINTS '[\"Bearer @BEARER@\"]'" in script
    function = script[script.index("write_notifications() {") :]
    assert "*[!A-Za-z0-9]*) fail" in function  # a token that could break out of the quotes is refused
    assert "echo" not in function.split("}")[0] and "set -x" not in script


def test_a_config_with_an_http_endpoint_is_refused() -> None:
    cfg = RegistryConfig(
        environment="dev",
        public_url="https://registry.dev.example.com",
        bucket="b-1",
        region="eu-west-1",
        notifications=(dataclasses.replace(ENDPOINT, url="http://127.0.0.1:5004/events"),),
    )
    with pytest.raises(ValueError, match="needs an https:// url"):
        registry_config_dict(cfg)


# --- a scanner worker's boot ---------------------------------------------------------------------------


def test_a_scanner_boot_refuses_a_secret_where_an_arn_belongs() -> None:
    with pytest.raises(ValueError) as info:
        render_scanner_host(scanner_boot(robot_secret_arn="hunter2-the-robot-token"))
    assert "robot_secret_arn must be a Secrets Manager secret ARN" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"trivy_version": "v0.59.1"}, "trivy_version must be a release like 0.59.1"),
        ({"trivy_sha256": "B" * 64}, "trivy_sha256 must be 64 lower-case hex digits"),
        ({"architecture": "x86_64"}, "architecture must be one of arm64, amd64"),
        ({"pip_index_url": "https://user:pw@pypi.example.com/simple"}, "pip_index_url must be an https:// URL"),
        ({"worker_config_yaml": "queue_url: x\n"}, "worker_config_yaml must be the text"),
    ],
)
def test_a_bad_scanner_boot_is_named(change: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        render_scanner_host(scanner_boot(**change))


def trivy_tarball(tmp_path: Path) -> Path:
    """A release asset as GitHub serves it: a tar.gz holding `trivy` (here a script) and its docs."""
    out = tmp_path / "asset.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for name, data in (("trivy", b"#!/bin/sh\necho 'Version: 0.59.1'\n"), ("LICENSE", b"Apache-2.0\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return out


def run_trivy_script(tmp_path: Path, asset: Path, sha256: str) -> subprocess.CompletedProcess[str]:
    """The rendered install script, with a stand-in curl that serves `asset` for the pinned URL only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    url = "https://github.com/aquasecurity/trivy/releases/download/v0.59.1/trivy_0.59.1_Linux-64bit.tar.gz"
    curl = bin_dir / "curl"
    curl.write_text(
        "#!/bin/bash\nout=''\nwhile [ $# -gt 1 ]; do [ \"$1\" = -o ] && out=$2; shift; done\n"
        f'[ "$1" = {url} ] || exit 22\ncp {asset} "$out"\n'
    )
    curl.chmod(0o755)
    script = tmp_path / "install-trivy"
    script.write_text(_trivy_script(scanner_boot(trivy_sha256=sha256)))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    prefix = tmp_path / "root"
    return subprocess.run(
        ["bash", str(script), "--prefix", str(prefix)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_trivy_is_installed_only_when_its_checksum_matches(tmp_path: Path) -> None:
    asset = trivy_tarball(tmp_path)
    wrong = run_trivy_script(tmp_path, asset, "c" * 64)
    assert wrong.returncode == 1 and "expected " + "c" * 64 + ": not installed" in wrong.stderr
    assert not (tmp_path / "root/usr/local/bin/trivy").exists()  # fail closed: nothing installed
    good = run_trivy_script(tmp_path, asset, hashlib.sha256(asset.read_bytes()).hexdigest())
    assert good.returncode == 0, good.stderr
    installed = tmp_path / "root/usr/local/bin/trivy"
    assert installed.read_bytes().startswith(b"#!/bin/sh") and os.access(installed, os.X_OK)
    assert not (tmp_path / "root/usr/local/bin/LICENSE").exists()  # only the binary
    # Installed once: the next start (the asset gone, the download failing) does not download again.
    sha256 = hashlib.sha256(asset.read_bytes()).hexdigest()
    asset.unlink()
    assert run_trivy_script(tmp_path, asset, sha256).returncode == 0


# --- the robots ----------------------------------------------------------------------------------------

EXPIRES = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
HASH = "sha256:" + "0" * 64


def robot(namespace: str, actions: tuple[str, ...], exact: bool = False) -> Robot:
    return Robot(namespace=namespace, actions=actions, expires=EXPIRES, token_hash=HASH, exact=exact)  # type: ignore[arg-type]


def permitted(control: AccessControl, name: str, repository: str) -> frozenset[str]:
    return control.permitted(Identity(name=name, kind="robot"), Scope("repository", repository, ("pull",)), "10.0.0.1")


def test_a_robot_on_every_repository_pulls_everything_and_nothing_more() -> None:
    control = AccessControl(teams={"a": Team(namespaces=("team-a",))}, robots={"scanner": robot("*", ("pull",))})
    for repository in ("team-a/app", "base/debian", "mirror/trivy-db", "x"):
        assert permitted(control, "scanner", repository) == {"pull"}, repository
    with pytest.raises(ValidationError, match="allows actions \\[pull\\] only"):
        robot("*", ("pull", "push"))


def test_an_exact_robot_works_in_its_one_repository() -> None:
    control = AccessControl(robots={"mirror": robot("mirror/trivy-db", ("pull", "push"), exact=True)})
    assert permitted(control, "mirror", "mirror/trivy-db") == {"pull", "push"}
    assert permitted(control, "mirror", "mirror/trivy-db/x") == frozenset()
    assert permitted(control, "mirror", "mirror/other") == frozenset()


def test_no_team_may_own_the_platform_namespace() -> None:
    with pytest.raises(ValidationError, match="overlaps the platform namespace 'mirror'"):
        AccessControl(teams={"a": Team(namespaces=("mirror",))})


# --- the settings --------------------------------------------------------------------------------------


def problems(overrides: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        settings_from_config("dev", deep_merge(stack_config("dev"), overrides))
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"scanning": {"schedule": "every night"}}, "scanning.schedule"),
        ({"scanning": {"findingsThreshold": "SEVERE"}}, "scanning.findingsThreshold"),
        ({"scanning": {"trivy": {"version": "v0.60.0"}}}, "not a Trivy release like 0.59.1"),
        ({"scanning": {"trivy": {"sha256": {"arm64": "ABC"}}}}, "scanning.trivy.sha256.arm64"),
        ({"scanning": {"workerMaxSize": 0}}, "is outside 1..20 workers"),
        ({"scanning": {"visibilityTimeoutSeconds": 50000}}, "SQS allows at most 12 hours"),
        ({"scanning": {"findingsEmails": ["not-an-address"]}}, "'not-an-address' is not an email address"),
        ({"access": {"users": ["registry-scanner"]}}, "is the name of one of the scanner's robots"),
        (
            {"access": {"teams": {"platform": {"namespaces": ["platform", "mirror"]}}}},
            "overlaps the platform namespace",
        ),
    ],
)
def test_bad_scanning_settings_are_named(overrides: dict[str, Any], says: str) -> None:
    found = problems(overrides)
    assert any(says in p for p in found), found


def test_the_scanning_defaults_and_an_override() -> None:
    s = settings_from_config("dev", stack_config("dev"))
    assert (s.scanning.findings_threshold, s.scanning.worker_architecture, s.scanning.trivy.version) == (
        "HIGH",
        "arm64",
        "0.59.1",
    )
    amd = settings_from_config(
        "dev", deep_merge(stack_config("dev"), {"scanning": {"workerInstanceType": "m7i.large"}})
    )
    assert amd.scanning.worker_architecture == "amd64"
    assert amd.scanning.trivy.sha256.arm64 == s.scanning.trivy.sha256.arm64  # the other keys keep their defaults
