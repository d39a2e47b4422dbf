"""Unit tests for the pure renderers: the registry config.yml and the host boot files.

They check the rendered text itself (parsed where it is YAML). What they cannot prove: that the
registry 2.8.2, systemd or cloud-init accept these files on a real host; the lab runs the real
registry binary with the rendered config.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import random
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth.certificates import Usage, certificate, certificate_pem, distinguished_name
from gate.config import ConfigError, load_config
from host.boot import (
    BEARER_MARK,
    GateBoot,
    HostBoot,
    HostFile,
    ScanEventsBoot,
    SecretFile,
    TokenServiceBoot,
    render_host,
)
from host.contract import (
    CA_CERT_FILE,
    DROPIN_PATH,
    FETCH_SCRIPT_PATH,
    GATE_CACHE_SECONDS,
    HOST_INTERNAL_NAME,
    LOG_REDACT_SCRIPT_PATH,
    REGISTRY_PORT,
    SCAN_EVENTS_DROPIN_PATH,
    TOKEN_INSTALL_SCRIPT_PATH,
    TOKEN_SYSUSERS_PATH,
    TOKEN_UNIT_PATH,
)
from host.gate_config import render_gate_config
from host.registry_config import (
    CloudFrontSettings,
    NotificationEndpoint,
    RegistryConfig,
    TokenAuth,
    notification_endpoints_env,
    registry_config_dict,
    render_registry_config,
)
from host.scan_config import WorkerConfig, render_events_config, render_worker_config
from host.scanner_host import SCANNER_PASSWORD_FILE, ScannerBoot, render_scanner_host
from host.template import PLACEHOLDER, render_file, template_text
from host.user_data import compress_user_data, decode_user_data, encode_user_data
from policy.rules.hosts import service_account_problems

KMS_KEY = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
FAKE_PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAfakefakefake\n-----END RSA PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBfakecert\n-----END CERTIFICATE-----\n"


def arn(name: str) -> str:
    return f"arn:aws:secretsmanager:eu-west-1:111122223333:secret:registry-fleet/dev/{name}-AbCdEf"


def base_config(**changes: Any) -> RegistryConfig:
    cfg = RegistryConfig(
        environment="dev",
        public_url="https://registry.dev.example.com",
        bucket="registry-fleet-dev-blobs",
        region="eu-west-1",
    )
    return dataclasses.replace(cfg, **changes)


CLOUDFRONT = CloudFrontSettings(
    base_url="https://d111111abcdef8.cloudfront.net/",
    private_key_file="/etc/docker/registry/cloudfront.pem",
    key_pair_id="K2JCJMDEHXQW5F",
    duration_seconds=1200,
)


def parsed(cfg: RegistryConfig) -> dict[str, Any]:
    config = yaml.safe_load(render_registry_config(cfg))
    assert isinstance(config, dict)
    return config


def base_boot(**changes: Any) -> HostBoot:
    boot = HostBoot(
        region="eu-west-1",
        registry_config_yaml=render_registry_config(base_config(cloudfront=CLOUDFRONT)),
        http_secret_arn=arn("http-secret"),
        secret_files=(
            SecretFile(arn("tls-key"), "/etc/docker/registry/tls/host.key"),
            SecretFile(arn("htpasswd"), "/etc/docker/registry/htpasswd"),
            SecretFile(arn("cloudfront-key"), "/etc/docker/registry/cloudfront.pem"),
        ),
        public_files=(("/etc/docker/registry/tls/host.crt", CERT),),
    )
    return dataclasses.replace(boot, **changes)


def config_text_with(**sections: dict[str, Any]) -> str:
    """A rendered config with `sections` merged over its top-level sections (to smuggle a secret in)."""
    config = registry_config_dict(base_config())
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    return yaml.safe_dump(config, sort_keys=False)


def cloud_init(boot: HostBoot) -> str:
    return render_host(boot).user_data


def fetch_script(boot: HostBoot) -> str:
    return render_host(boot).content(FETCH_SCRIPT_PATH)


def registry_dropin(boot: HostBoot) -> str:
    return render_host(boot).content(DROPIN_PATH)


def install_script(boot: HostBoot) -> str:
    return render_host(boot).content(TOKEN_INSTALL_SCRIPT_PATH)


def token_unit(boot: HostBoot) -> str:
    return render_host(boot).content(TOKEN_UNIT_PATH)


def all_boot_texts(boot: HostBoot) -> dict[str, str]:
    return {
        "fetch script": fetch_script(boot),
        "drop-in": registry_dropin(boot),
        "cloud-init": cloud_init(boot),
    }


# --- registry config.yml -------------------------------------------------------------------------


def test_config_parses_as_yaml_with_version_0_1() -> None:
    assert parsed(base_config())["version"] == 0.1


def test_config_dict_is_what_gets_rendered() -> None:
    cfg = base_config(cloudfront=CLOUDFRONT, kms_key_id=KMS_KEY)
    assert parsed(cfg) == registry_config_dict(cfg)


def test_s3_section_uses_bucket_and_region_and_no_static_credentials() -> None:
    s3 = parsed(base_config())["storage"]["s3"]
    assert (s3["bucket"], s3["region"], s3["secure"], s3["v4auth"]) == (
        "registry-fleet-dev-blobs",
        "eu-west-1",
        True,
        True,
    )
    assert "accesskey" not in s3 and "secretkey" not in s3, "credentials must come from the instance role"


def test_s3_encrypts_with_kms_key_when_set() -> None:
    s3 = parsed(base_config(kms_key_id=KMS_KEY))["storage"]["s3"]
    assert s3["encrypt"] is True
    assert s3["keyid"] == KMS_KEY


def test_s3_has_no_encrypt_or_keyid_without_kms_key() -> None:
    s3 = parsed(base_config())["storage"]["s3"]
    assert "encrypt" not in s3 and "keyid" not in s3


def test_forcepathstyle_and_regionendpoint_only_with_s3_endpoint() -> None:
    assert "forcepathstyle" not in parsed(base_config())["storage"]["s3"]
    assert "regionendpoint" not in parsed(base_config())["storage"]["s3"]
    s3 = parsed(base_config(s3_endpoint="http://127.0.0.1:9000"))["storage"]["s3"]
    assert s3["regionendpoint"] == "http://127.0.0.1:9000"
    assert s3["forcepathstyle"] is True


def test_tls_section_has_cert_key_and_tls12_minimum() -> None:
    tls = parsed(base_config())["http"]["tls"]
    assert tls == {
        "certificate": "/etc/docker/registry/tls/host.crt",
        "key": "/etc/docker/registry/tls/host.key",
        "minimumtls": "tls1.2",
    }


def test_http_host_is_the_public_url() -> None:
    assert parsed(base_config())["http"]["host"] == "https://registry.dev.example.com"


def test_http_has_no_secret_key() -> None:
    cfg = base_config(cloudfront=CLOUDFRONT, kms_key_id=KMS_KEY, s3_endpoint="http://127.0.0.1:9000")
    assert "secret" not in parsed(cfg)["http"], "http.secret comes from REGISTRY_HTTP_SECRET, never the file"


def test_debug_server_serves_prometheus_on_loopback() -> None:
    debug = parsed(base_config())["http"]["debug"]
    assert debug == {"addr": "127.0.0.1:5001", "prometheus": {"enabled": True, "path": "/metrics"}}


def test_cloudfront_middleware_when_cloudfront_set() -> None:
    config = parsed(base_config(cloudfront=CLOUDFRONT))
    assert config["middleware"]["storage"] == [
        {
            "name": "cloudfront",
            "options": {
                "baseurl": "https://d111111abcdef8.cloudfront.net/",
                "privatekey": "/etc/docker/registry/cloudfront.pem",
                "keypairid": "K2JCJMDEHXQW5F",
                "duration": "1200s",
            },
        }
    ]
    assert config["storage"]["redirect"] == {"disable": False}, "the middleware works through redirects"


def test_without_cloudfront_no_middleware_and_blobs_are_not_redirected_to_s3() -> None:
    config = parsed(base_config())
    assert "middleware" not in config
    # A redirect would hand clients a presigned S3 URL, bypassing the load balancer.
    assert config["storage"]["redirect"] == {"disable": True}


def test_health_is_a_storage_check_that_trips_in_15_s() -> None:
    """While S3 is unreachable every path answers 503 UNAVAILABLE (a clear, retryable error) instead of each
    request failing with 500 UNKNOWN; the load balancer counts that 503 as alive (REGISTRY_HEALTH_CODES)."""
    health = parsed(base_config())["health"]
    assert health == {"storagedriver": {"enabled": True, "interval": "5s", "threshold": 3}}


def test_auth_is_htpasswd_at_the_configured_path() -> None:
    assert parsed(base_config())["auth"] == {"htpasswd": {"realm": "registry", "path": "/etc/docker/registry/htpasswd"}}


def test_config_rendering_is_deterministic() -> None:
    cfg = base_config(cloudfront=CLOUDFRONT, kms_key_id=KMS_KEY)
    assert render_registry_config(cfg) == render_registry_config(dataclasses.replace(cfg))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"public_url": "http://registry.dev.example.com"}, "public_url"),
        ({"public_url": "registry.dev.example.com"}, "public_url"),
        ({"chunk_size_bytes": 5 * 1024 * 1024 - 1}, "chunk_size_bytes"),
        ({"cloudfront": dataclasses.replace(CLOUDFRONT, base_url="https://d1.cloudfront.net")}, "cloudfront.base_url"),
        ({"cloudfront": dataclasses.replace(CLOUDFRONT, private_key_file=FAKE_PEM)}, "cloudfront.private_key_file"),
        ({"log_level": "verbose"}, "log_level"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"RegistryConfig\.{field}"):
        render_registry_config(base_config(**changes))


def test_chunk_size_of_exactly_5_mib_is_allowed() -> None:
    assert parsed(base_config(chunk_size_bytes=5 * 1024 * 1024))["storage"]["s3"]["chunksize"] == 5 * 1024 * 1024


# --- host boot: fetch script, systemd drop-in, cloud-init ------------------------------------------


def test_fetch_script_names_every_secret_arn() -> None:
    script = fetch_script(base_boot())
    for name in ("http-secret", "tls-key", "htpasswd", "cloudfront-key"):
        assert arn(name) in script, f"{name} ARN missing from the fetch script"


def test_fetch_script_is_strict_bash_and_never_traces() -> None:
    script = fetch_script(base_boot())
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script and "umask 077" in script
    assert "set -x" not in script and "xtrace" not in script


def test_fetch_script_reads_secrets_with_the_aws_cli_in_the_region() -> None:
    script = fetch_script(base_boot())
    assert "REGION=eu-west-1" in script
    assert 'aws --region "$REGION" secretsmanager get-secret-value --secret-id' in script
    assert "--query SecretString --output text" in script


def test_fetch_script_writes_http_secret_to_root_only_env_file() -> None:
    script = fetch_script(base_boot())
    assert f"write_http_secret {arn('http-secret')}" in script.splitlines()
    assert "REGISTRY_HTTP_SECRET=" in script
    assert 'mv -f "$tmp" /run/registry-fleet/registry.env' in script
    assert "chmod 0600" in script


def test_fetch_script_installs_secret_files_readable_by_the_registry_group_only() -> None:
    boot = base_boot(secret_files=(SecretFile(arn("tls-key"), "/etc/docker/registry/tls/host.key"),))
    script = fetch_script(boot)
    line = f"write_secret {arn('tls-key')} /etc/docker/registry/tls/host.key 0640 root docker-registry"
    assert line in script.splitlines()


def test_rendered_boot_texts_hold_no_private_key() -> None:
    for name, text in all_boot_texts(base_boot()).items():
        assert "PRIVATE KEY" not in text, f"{name} contains key material"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"http_secret_arn": "s3cr3t-http-value"}, r"HostBoot\.http_secret_arn must be a Secrets Manager secret ARN"),
        (
            {"secret_files": (SecretFile(FAKE_PEM, "/etc/docker/registry/tls/host.key"),)},
            r"HostBoot\.secret_files\[0\]\.secret_arn must be a Secrets Manager secret ARN",
        ),
        (
            {"public_files": (("/etc/docker/registry/tls/host.key", FAKE_PEM),)},
            r"HostBoot\.public_files\[0\] .* holds a private key",
        ),
        (
            {"registry_config_yaml": config_text_with(http={"secret": "s3cr3t-http-value"})},
            r"HostBoot\.registry_config_yaml sets http\.secret",
        ),
        (
            {"registry_config_yaml": config_text_with(storage={"s3": {"bucket": "b", "secretkey": "s3cr3t"}})},
            r"HostBoot\.registry_config_yaml sets S3 keys",
        ),
        (
            {"registry_config_yaml": f"version: 0.1\nkey: |\n  {FAKE_PEM}"},
            r"HostBoot\.registry_config_yaml holds a private key",
        ),
    ],
    ids=["http-secret-value", "pem-as-arn", "pem-as-public-file", "http.secret-in-config", "s3-key-in-config", "pem"],
)
def test_no_field_accepts_a_secret_value(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_host(base_boot(**changes))


def test_dropin_runs_fetch_script_as_root_before_start() -> None:
    dropin = registry_dropin(base_boot())
    assert "ExecStartPre=+/usr/local/sbin/registry-fleet-fetch-secrets\n" in dropin


def test_dropin_reads_the_environment_file() -> None:
    assert "EnvironmentFile=-/run/registry-fleet/registry.env\n" in registry_dropin(base_boot())


def test_dropin_sandboxes_the_registry() -> None:
    lines = set(registry_dropin(base_boot()).splitlines())
    for setting in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/docker-registry",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "Restart=always",
    ):
        assert setting in lines, f"drop-in lacks {setting}"


def test_cloud_init_first_line_is_cloud_config_and_parses() -> None:
    text = cloud_init(base_boot())
    assert text.splitlines()[0] == "#cloud-config"
    assert isinstance(yaml.safe_load(text), dict)


def test_cloud_init_installs_packages_over_https_mirrors() -> None:
    config = yaml.safe_load(cloud_init(base_boot()))
    assert config["apt"]["primary"][0]["uri"] == "https://deb.debian.org/debian"
    assert config["apt"]["security"][0]["uri"] == "https://deb.debian.org/debian-security"
    # Debian's /etc/cloud/cloud.cfg says true: the mirrors above would never be written.
    assert config["apt"]["preserve_sources_list"] is False
    assert config["package_update"] is True
    assert {"docker-registry", "awscli", "ca-certificates"} <= set(config["packages"])


def test_cloud_init_writes_config_script_dropin_and_public_files_deferred() -> None:
    boot = base_boot()
    files = {f["path"]: f for f in yaml.safe_load(cloud_init(boot))["write_files"]}
    expected = {
        "/etc/docker/registry/config.yml": (boot.registry_config_yaml, "0644"),
        "/etc/docker/registry/tls/host.crt": (CERT, "0644"),
        "/usr/local/sbin/registry-fleet-fetch-secrets": (fetch_script(boot), "0700"),
        "/etc/systemd/system/docker-registry.service.d/10-registry-fleet.conf": (registry_dropin(boot), "0644"),
    }
    assert set(files) == set(expected), "secret files must not be in user-data"
    for path, (content, mode) in expected.items():
        assert (files[path]["content"], files[path]["permissions"], files[path]["defer"]) == (content, mode, True), path


def test_cloud_init_ssm_agent_url_uses_region_and_arch() -> None:
    text = cloud_init(base_boot(region="ap-southeast-2", architecture="amd64"))
    url = "https://s3.ap-southeast-2.amazonaws.com/amazon-ssm-ap-southeast-2/latest/debian_amd64/amazon-ssm-agent.deb"
    assert url in text


def test_cloud_init_restarts_registry_after_daemon_reload() -> None:
    runcmd = yaml.safe_load(cloud_init(base_boot()))["runcmd"]
    assert runcmd.index(["systemctl", "daemon-reload"]) < runcmd.index(["systemctl", "restart", "docker-registry"])
    assert ["systemctl", "enable", "--now", "docker-registry"] in runcmd


def test_boot_rendering_is_deterministic() -> None:
    assert all_boot_texts(base_boot()) == all_boot_texts(base_boot())


def test_unknown_architecture_raises() -> None:
    with pytest.raises(ValueError, match=r"HostBoot\.architecture"):
        cloud_init(base_boot(architecture="x86_64"))


def test_user_data_over_16_kb_raises() -> None:
    # Incompressible: the limit applies to the gzipped bytes EC2 receives.
    body = base64.b64encode(random.Random(0).randbytes(18_000)).decode()
    big_cert = "-----BEGIN CERTIFICATE-----\n" + body + "\n-----END CERTIFICATE-----\n"
    boot = base_boot(public_files=(("/etc/docker/registry/tls/ca.crt", big_cert),))
    with pytest.raises(ValueError, match="16384"):
        cloud_init(boot)


def test_notifications_are_rendered_only_when_asked_with_the_bearer_header() -> None:
    assert "notifications" not in parsed(base_config())
    endpoint = NotificationEndpoint("events", "https://127.0.0.1:9000/events", "tok")
    config = parsed(dataclasses.replace(base_config(), notifications=(endpoint,)))
    (rendered,) = config["notifications"]["endpoints"]
    assert rendered["url"] == "https://127.0.0.1:9000/events"
    assert rendered["headers"] == {"Authorization": ["Bearer tok"]}


def test_notifications_over_plain_http_are_refused() -> None:
    endpoint = NotificationEndpoint("events", "http://127.0.0.1:9000/events", "tok")
    with pytest.raises(ValueError, match=r"notifications\[events\] needs an https:// url"):
        render_registry_config(dataclasses.replace(base_config(), notifications=(endpoint,)))


# --- host boot: the token service (token mode) ----------------------------------------------------

SIGNING_CERT = "-----BEGIN CERTIFICATE-----\nMIIBfakeSIGNINGcert\n-----END CERTIFICATE-----\n"
NEXT_SIGNING_CERT = "-----BEGIN CERTIFICATE-----\nMIIBfakeNEXTsigningCERT\n-----END CERTIFICATE-----\n"
LDAP_CA = "-----BEGIN CERTIFICATE-----\nMIIBfakeLDAPca\n-----END CERTIFICATE-----\n"
ARTIFACT_SHA256 = "0123456789abcdef" * 4
TOKEN_UNIT_EXEC_START = (
    "ExecStart=/opt/registry-fleet/token-service/current/venv/bin/python -m auth "
    "--config /etc/registry-token/config.json --bind 0.0.0.0:5002 "
    "--certfile /etc/docker/registry/tls/host.crt --keyfile /etc/registry-token/tls.key"
)


def token_service(**changes: Any) -> TokenServiceBoot:
    token = TokenServiceBoot(
        artifact_bucket="registry-fleet-dev-blobs",
        artifact_key=f"registry-fleet/token-service/auth-{ARTIFACT_SHA256}.tar.gz",
        artifact_sha256=ARTIFACT_SHA256,
        pip_index_url="https://pypi.org/simple",
        config_secret_arn=arn("token-config"),
        signing_key_secret_arn=arn("token-signing-key"),
        tls_key_secret_arn=arn("tls-key"),
        signing_cert_pem=SIGNING_CERT,
        tls_cert_file="/etc/docker/registry/tls/host.crt",
        ldap_ca_pem=LDAP_CA,
    )
    return dataclasses.replace(token, **changes)


def token_boot(**changes: Any) -> HostBoot:
    return base_boot(token_service=token_service(**changes))


def user_data_files(boot: HostBoot) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in yaml.safe_load(cloud_init(boot))["write_files"]}


def test_token_mode_user_data_writes_the_unit_the_install_script_and_the_certificates() -> None:
    boot = token_boot()
    files = user_data_files(boot)
    expected = {
        "/usr/local/sbin/registry-fleet-install-token-service": (install_script(boot), "0700"),
        "/etc/systemd/system/registry-token.service": (token_unit(boot), "0644"),
        "/etc/sysusers.d/registry-token.conf": (render_host(boot).content(TOKEN_SYSUSERS_PATH), "0644"),
        "/etc/registry-fleet/token-signing.crt": (SIGNING_CERT, "0644"),
        "/etc/registry-fleet/token-trust.crt": (SIGNING_CERT, "0644"),  # no bundle given: the signing cert alone
        "/etc/registry-fleet/ldap-ca.crt": (LDAP_CA, "0644"),
        "/usr/local/sbin/registry-fleet-fetch-secrets": (fetch_script(boot), "0700"),
    }
    for path, (content, mode) in expected.items():
        assert path in files, f"user-data lacks {path}"
        assert (files[path]["content"], files[path]["permissions"], files[path]["defer"]) == (content, mode, True), path


def test_token_mode_user_data_holds_arns_and_certificates_but_no_secret() -> None:
    boot = token_boot()
    text = cloud_init(boot)
    assert "PRIVATE KEY" not in text
    for name in ("token-config", "token-signing-key", "tls-key"):
        assert arn(name) in text, f"the {name} ARN is missing"
    files = user_data_files(boot)
    for secret in ("/etc/registry-token/config.json", "/etc/registry-token/signing.key", "/etc/registry-token/tls.key"):
        assert secret not in files, f"{secret} is a secret: fetched at start, never in user-data"


def test_token_mode_enables_the_unit_after_the_registry_and_the_unit_installs_first() -> None:
    config = yaml.safe_load(cloud_init(token_boot()))
    runcmd = config["runcmd"]
    restart = runcmd.index(["systemctl", "restart", "docker-registry"])
    assert runcmd[restart + 1 :] == [
        ["systemd-sysusers", "/etc/sysusers.d/registry-token.conf"],  # the unit's User= exists before it starts
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "registry-token"],
    ]
    assert "python3-venv" in config["packages"]
    # The install runs from the unit (retried on every restart), before the secrets are fetched.
    pre = [line for line in token_unit(token_boot()).splitlines() if line.startswith("ExecStartPre=")]
    assert pre == [
        "ExecStartPre=+/usr/local/sbin/registry-fleet-install-token-service",
        "ExecStartPre=+/usr/local/sbin/registry-fleet-fetch-secrets registry-token",
    ]


def test_token_unit_runs_python_m_auth_as_its_own_user() -> None:
    lines = token_unit(token_boot()).splitlines()
    for line in (
        "User=registry-token",
        "Group=registry-token",
        "ExecStartPre=+/usr/local/sbin/registry-fleet-fetch-secrets registry-token",
        "Environment=PYTHONPATH=/opt/registry-fleet/token-service/current/app",
        TOKEN_UNIT_EXEC_START,
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "StartLimitIntervalSec=0",
        "After=network-online.target",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
    ):
        assert line in lines, f"token unit lacks {line}"


def test_token_sysusers_file_declares_the_units_account_as_a_locked_system_account() -> None:
    text = render_host(token_boot()).content(TOKEN_SYSUSERS_PATH)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    # sysusers.d(5): user and group registry-token, a system id, no home, no login shell.
    assert lines == ['u registry-token - "registry-fleet token service" /nonexistent /usr/sbin/nologin']


@pytest.mark.parametrize("boot", [base_boot(), token_boot()], ids=["htpasswd", "token"])
def test_every_unit_user_data_writes_has_its_account_created_before_it_starts(boot: HostBoot) -> None:
    """systemd resolves User=/Group= before any command of a unit (ExecStartPre=+ included): an account
    the unit's own commands create is never there in time (217/USER, restarted forever)."""
    doc = yaml.safe_load(cloud_init(boot))
    assert service_account_problems(doc) == []


def _without_sysusers_step(doc: dict[str, Any]) -> None:
    doc["runcmd"] = [c for c in doc["runcmd"] if c[0] != "systemd-sysusers"]


def _sysusers_after_the_enable(doc: dict[str, Any]) -> None:
    step = ["systemd-sysusers", TOKEN_SYSUSERS_PATH]
    doc["runcmd"].remove(step)
    doc["runcmd"].append(step)


def _without_sysusers_file(doc: dict[str, Any]) -> None:
    doc["write_files"] = [f for f in doc["write_files"] if f["path"] != TOKEN_SYSUSERS_PATH]


def _another_account_in_the_unit(doc: dict[str, Any]) -> None:
    (unit,) = [f for f in doc["write_files"] if f["path"] == TOKEN_UNIT_PATH]
    unit["content"] = unit["content"].replace("User=registry-token", "User=registry-tokens")


def _sysusers_applied_in_a_shell_line_after_the_start(doc: dict[str, Any]) -> None:
    _without_sysusers_step(doc)
    doc["runcmd"][-1] = ["sh", "-c", f"systemctl enable --now {TOKEN_UNIT_PATH.rsplit('/', 1)[-1]}; systemd-sysusers"]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (_without_sysusers_step, "declares it, but runcmd runs no systemd-sysusers on it"),
        (_sysusers_after_the_enable, "runcmd starts registry-token before systemd-sysusers creates the account"),
        (_sysusers_applied_in_a_shell_line_after_the_start, "runcmd starts registry-token before systemd-sysusers"),
        (_without_sysusers_file, "no sysusers.d file in userData creates that account"),
        (_another_account_in_the_unit, "sets User=registry-tokens, but no sysusers.d file"),
    ],
    ids=["no-sysusers-step", "sysusers-after-enable", "sysusers-after-start-in-sh", "no-sysusers-file", "other-user"],
)
def test_a_unit_whose_account_is_not_created_before_it_starts_is_caught(break_it: Any, message: str) -> None:
    doc = yaml.safe_load(cloud_init(token_boot()))
    break_it(doc)
    problems = service_account_problems(doc)
    assert problems and all(p.startswith(TOKEN_UNIT_PATH) for p in problems), problems
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize("encoding", ["b64", "gz+b64"])
def test_the_service_account_check_reads_encoded_files_as_cloud_init_writes_them(encoding: str) -> None:
    """A unit written base64- or gzip-encoded (to save user-data bytes) is checked all the same."""
    doc = yaml.safe_load(cloud_init(token_boot()))
    for entry in doc["write_files"]:
        if entry["path"] in (TOKEN_UNIT_PATH, TOKEN_SYSUSERS_PATH):
            raw = entry["content"].encode()
            entry["content"] = base64.b64encode(gzip.compress(raw) if "gz" in encoding else raw).decode()
            entry["encoding"] = encoding
    assert service_account_problems(doc) == []
    _without_sysusers_step(doc)
    assert any("sets User=registry-token" in p for p in service_account_problems(doc))


@pytest.mark.parametrize(
    ("unit", "sysusers", "expected"),
    [
        ("[Service]\nUser=svc\n", "g svc -\n", ["sets User=svc, but no sysusers.d"]),  # a group is not a user
        ("[Service]\nUser=svc\nGroup=other\n", "u svc -\n", ["sets Group=other, but no sysusers.d"]),
        ("[Service]\nUser=svc\nGroup=other\n", "u svc -\nm svc other\n", []),
        ("[Service]\nUser=svc\nGroup=svc\n", "u svc 990:users\n", ["sets Group=svc, but no sysusers.d"]),
        ("[Service]\nDynamicUser=yes\nUser=svc\n", "", []),  # systemd allocates the account
        ("[Service]\nUser=root\nGroup=0\n", "", []),
        ("[Unit]\nDescription=User=svc\n[Service]\nExecStart=/bin/true\n", "", []),  # not a [Service] setting
        ("[Service]\nUser=svc\nUser=\n", "", []),  # the empty assignment resets it
    ],
    ids=["group-only", "other-group", "member", "uid-gid", "dynamic", "root", "unit-section", "reset"],
)
def test_service_account_check_reads_units_and_sysusers_files_as_systemd_does(
    unit: str, sysusers: str, expected: list[str]
) -> None:
    doc = {
        "write_files": [
            {"path": "/etc/sysusers.d/svc.conf", "content": sysusers},
            {"path": "/etc/systemd/system/svc.service.d/10-user.conf", "content": unit},
        ],
        "runcmd": [["systemd-sysusers"], ["systemctl", "enable", "--now", "svc.service"]],
    }
    problems = service_account_problems(doc)
    assert len(problems) == len(expected) and all(e in p for e, p in zip(expected, problems, strict=True)), problems


def test_token_unit_port_follows_the_boot() -> None:
    unit = token_unit(token_boot(port=8443))
    assert "--bind 0.0.0.0:8443 " in unit


def test_token_unit_has_the_registry_sandbox_except_memory_deny_write_execute() -> None:
    dropin = set(registry_dropin(base_boot()).splitlines())
    unit = token_unit(token_boot()).splitlines()
    sandbox = {
        line for line in dropin if line.startswith(("No", "Protect", "Private", "Restrict", "Cap", "Lock", "Sys"))
    }
    assert len(sandbox) == 13, sorted(sandbox)
    assert sandbox <= set(unit), f"token unit lacks {sorted(sandbox - set(unit))}"
    assert "MemoryDenyWriteExecute=yes" in dropin
    assert not [line for line in unit if line.startswith("MemoryDenyWriteExecute")]
    assert any(line.startswith("#") and "MemoryDenyWriteExecute" in line and "cffi" in line for line in unit)


def test_fetch_script_writes_the_token_secrets_for_registry_token_only() -> None:
    lines = fetch_script(token_boot()).splitlines()
    case = lines[lines.index("case ${1:-docker-registry} in") :]
    registry, token = case.index("docker-registry)"), case.index("registry-token)")
    for name, path in (
        ("token-config", "/etc/registry-token/config.json"),
        ("token-signing-key", "/etc/registry-token/signing.key"),
        ("tls-key", "/etc/registry-token/tls.key"),
    ):
        line = f"write_secret {arn(name)} {path} 0640 root registry-token"
        assert line in case[token:], f"{path} is not written for registry-token"
        assert line not in case[registry:token]
    assert f"write_http_secret {arn('http-secret')}" in case[registry:token], "the registry's set changed"


def test_fetch_script_without_token_service_writes_the_registry_set_by_default() -> None:
    script = fetch_script(base_boot())
    assert "case ${1:-docker-registry} in\ndocker-registry)\nwrite_http_secret " in script
    assert "registry-token" not in script


def test_install_script_downloads_verifies_then_unpacks_and_installs_from_the_lock() -> None:
    script = install_script(token_boot())
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail\n" in script
    assert f"BUCKET=registry-fleet-dev-blobs KEY=registry-fleet/token-service/auth-{ARTIFACT_SHA256}.tar.gz " in script
    assert f"SHA256={ARTIFACT_SHA256} INDEX=https://pypi.org/simple\n" in script
    download = script.index('aws --region "$REGION" s3api get-object --bucket "$BUCKET" --key "$KEY"')
    check = script.index('[ "$h" = "$SHA256" ] || fail')
    unpack = script.index("tar -xzf")
    assert download < check < unpack, "the SHA-256 must be checked before anything is unpacked"
    pip = script[script.index('bin/pip" install') :]
    for flag in (
        "--require-hashes",
        "--only-binary=:all:",
        "--no-deps",
        '--index-url "$INDEX"',
        "auth/requirements.lock",
    ):
        assert flag in pip.split("\n  touch")[0], f"pip install lacks {flag}"
    assert "import auth.serve" in script
    assert 'mv -T "$P/.current.new" "$P/current"' in script
    # The account exists before the unit starts (systemd-sysusers in runcmd): the unit's own script is too late.
    assert "useradd" not in script and "groupadd" not in script and "registry-token" not in script


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"artifact_sha256": ARTIFACT_SHA256.upper()}, r"token_service\.artifact_sha256 must be 64 lowercase hex"),
        ({"artifact_sha256": "abc123"}, r"token_service\.artifact_sha256 must be 64 lowercase hex"),
        ({"artifact_bucket": "Registry_Bucket"}, r"token_service\.artifact_bucket must be an S3 bucket name"),
        ({"artifact_key": "registry-fleet/../etc/passwd"}, r"token_service\.artifact_key .* holds no '\.\.'"),
        ({"artifact_key": "/abs/key.tar.gz"}, r"token_service\.artifact_key must be an S3 object key"),
        ({"config_secret_arn": "s3cr3t-config"}, r"token_service\.config_secret_arn must be a Secrets Manager"),
        ({"signing_key_secret_arn": FAKE_PEM}, r"token_service\.signing_key_secret_arn must be a Secrets Manager"),
        ({"tls_key_secret_arn": "arn:aws:s3:::bucket"}, r"token_service\.tls_key_secret_arn must be a Secrets"),
        ({"pip_index_url": "http://pypi.org/simple"}, r"token_service\.pip_index_url must be an https:// URL"),
        ({"pip_index_url": "https://me:s3cr3t@pypi.example.com/simple"}, r"token_service\.pip_index_url must be"),
        ({"port": 0}, r"token_service\.port must be an integer in 1\.\.65535"),
        ({"port": 65536}, r"token_service\.port must be an integer in 1\.\.65535"),
        ({"signing_cert_pem": FAKE_PEM}, r"token_service\.signing_cert_pem must hold only PEM certificates"),
        ({"signing_cert_pem": CERT + FAKE_PEM}, r"token_service\.signing_cert_pem must hold only PEM certificates"),
        ({"trust_bundle_pem": SIGNING_CERT + FAKE_PEM}, r"token_service\.trust_bundle_pem must hold only PEM cert"),
        ({"trust_bundle_pem": "not a certificate"}, r"token_service\.trust_bundle_pem must hold only PEM cert"),
        ({"trust_bundle_pem": ""}, r"token_service\.trust_bundle_pem must hold only PEM certificates"),
        ({"trust_bundle_pem": NEXT_SIGNING_CERT}, r"token_service\.trust_bundle_pem must hold the signing certificate"),
        ({"ldap_ca_pem": "not a certificate"}, r"token_service\.ldap_ca_pem must hold only PEM certificates"),
        ({"tls_cert_file": "/etc/ssl/other.crt"}, r"token_service\.tls_cert_file must be the absolute path of one"),
    ],
    ids=[
        "sha-upper", "sha-short", "bucket", "key-dotdot", "key-absolute", "config-arn", "pem-as-arn", "s3-arn",
        "index-http", "index-credentials", "port-0", "port-65536", "pem-key-as-cert", "cert-plus-key",
        "bundle-plus-key", "bundle-text", "bundle-empty", "bundle-without-signing-cert", "ca-text",
        "tls-cert-not-public",
    ],
)  # fmt: skip
def test_invalid_token_service_raises_naming_the_field_and_never_echoing_a_secret(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as err:
        render_host(token_boot(**changes))
    for secret in ("s3cr3t", "MIIEowIBAAKCAQEAfakefakefake"):
        assert secret not in str(err.value), f"the error echoes a secret: {err.value}"


def test_a_public_file_at_a_token_service_path_is_a_duplicate() -> None:
    boot = dataclasses.replace(
        token_boot(), public_files=(*base_boot().public_files, ("/etc/registry-fleet/token-signing.crt", CERT))
    )
    with pytest.raises(ValueError, match=r"more than once: /etc/registry-fleet/token-signing\.crt"):
        cloud_init(boot)


def test_without_token_service_nothing_token_related_is_rendered() -> None:
    boot = base_boot()
    text = cloud_init(boot)
    words = ("registry-token", "token-service", "token-signing", "token-trust", "ldap-ca", "python3-venv", "/opt/")
    for word in words:
        assert word not in text, f"user-data mentions {word} without a token service"
    paths = {f.path for f in render_host(boot).files}
    assert not paths & {TOKEN_INSTALL_SCRIPT_PATH, TOKEN_UNIT_PATH}, "token service files without a token service"


def test_token_mode_writes_the_trust_bundle_beside_the_signing_certificate() -> None:
    """During a rotation the registry trusts every live generation; the service signs with the current one."""
    for bundle in (SIGNING_CERT + NEXT_SIGNING_CERT, NEXT_SIGNING_CERT + SIGNING_CERT):
        files = user_data_files(token_boot(trust_bundle_pem=bundle))
        trust, signing = files["/etc/registry-fleet/token-trust.crt"], files["/etc/registry-fleet/token-signing.crt"]
        assert (trust["content"], trust["permissions"], trust["owner"], trust["defer"]) == (
            bundle,
            "0644",
            "root:root",
            True,
        )
        assert signing["content"] == SIGNING_CERT, "the service's signing_cert holds the current certificate only"


def test_the_trust_bundle_may_spell_the_signing_certificate_with_other_line_ends() -> None:
    crlf = SIGNING_CERT.replace("\n", "\r\n")
    files = user_data_files(token_boot(trust_bundle_pem=NEXT_SIGNING_CERT + crlf))
    assert files["/etc/registry-fleet/token-trust.crt"]["content"] == NEXT_SIGNING_CERT + crlf


def test_a_public_file_at_the_trust_bundle_path_is_a_duplicate() -> None:
    boot = dataclasses.replace(
        token_boot(), public_files=(*base_boot().public_files, ("/etc/registry-fleet/token-trust.crt", CERT))
    )
    with pytest.raises(ValueError, match=r"more than once: /etc/registry-fleet/token-trust\.crt"):
        cloud_init(boot)


def test_token_mode_without_ldap_ca_writes_no_ldap_ca_file() -> None:
    files = user_data_files(token_boot(ldap_ca_pem=None))
    assert "/etc/registry-fleet/ldap-ca.crt" not in files
    assert "/etc/registry-fleet/token-signing.crt" in files


def _certificate(key: Any, common_name: str, usage: Usage) -> str:
    """A certificate as an enterprise issues them: long names, ten years, the extensions for `usage`."""
    subject = distinguished_name(common_name, "Example Corporation Platform Engineering")
    return certificate_pem(certificate(key, subject, 3650, usage, hostnames=[common_name])).decode()


def biggest_realistic_boot() -> HostBoot:
    """CDN, KMS, token auth, the token service with a 2048-bit signing certificate and a directory CA
    of about 1.5 KB (RSA 3072), ECDSA host and CA certificates as pulumi-tls makes them, long names."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    host = "registry.payments-prod.example.com"
    cfg = base_config(
        environment="payments-prod",
        public_url=f"https://{host}",
        bucket="registry-fleet-payments-prod-blobs-111122223333",
        kms_key_id=KMS_KEY,
        cloudfront=CLOUDFRONT,
        token=TokenAuth(
            realm=f"https://{host}/auth",
            service=host,
            issuer="registry-fleet-payments-prod-token",
            rootcertbundle="/etc/registry-fleet/token-signing.crt",
        ),
    )
    p256 = ec.SECP256R1()
    return base_boot(
        registry_config_yaml=render_registry_config(cfg),
        public_files=(
            (
                "/etc/docker/registry/tls/host.crt",
                _certificate(ec.generate_private_key(p256), f"host.{host}", "server"),
            ),
            ("/etc/docker/registry/tls/ca.crt", _certificate(ec.generate_private_key(p256), "registry CA", "ca")),
        ),
        token_service=token_service(
            artifact_bucket="registry-fleet-payments-prod-blobs-111122223333",
            signing_cert_pem=_certificate(rsa.generate_private_key(65537, 2048), "token signer", "signing"),
            ldap_ca_pem=_certificate(rsa.generate_private_key(65537, 3072), "Example Enterprise Root CA G2", "ca"),
        ),
    )


def test_biggest_realistic_token_mode_user_data_fits_in_16_kb() -> None:
    boot = biggest_realistic_boot()
    assert boot.token_service is not None and boot.token_service.ldap_ca_pem is not None
    assert len(boot.token_service.ldap_ca_pem) >= 1500
    text = cloud_init(boot)  # raises when its gzip exceeds 16384 bytes
    size = len(compress_user_data(text))
    assert size <= 16384 // 2, f"user-data is {size} bytes gzipped: less than half of EC2's 16 KB left"


def test_user_data_with_two_signing_certificates_still_fits() -> None:
    """A signing-key rotation ships both certificates in the registry's rootcertbundle (the trust bundle),
    beside the signing certificate: three certificates, two of them distinct."""
    from dataclasses import replace

    from cryptography.hazmat.primitives.asymmetric import rsa

    boot = biggest_realistic_boot()
    assert boot.token_service is not None
    one = compress_user_data(cloud_init(boot))
    second = _certificate(rsa.generate_private_key(65537, 2048), "token signer (next)", "signing")
    for signing, bundle in (
        (boot.token_service.signing_cert_pem, boot.token_service.signing_cert_pem + second),  # phase a
        (second, boot.token_service.signing_cert_pem + second),  # phase b
    ):
        rotated = replace(
            boot, token_service=replace(boot.token_service, signing_cert_pem=signing, trust_bundle_pem=bundle)
        )
        text = cloud_init(rotated)  # raises when its gzip exceeds 16384 bytes
        files = user_data_files(rotated)
        assert files["/etc/registry-fleet/token-trust.crt"]["content"] == bundle
        assert files["/etc/registry-fleet/token-signing.crt"]["content"] == signing
        assert len(text.encode()) > 16384, "the raw text alone would not fit: this is why the fleet sends it gzipped"
        size = len(compress_user_data(text))
        assert size - len(one) < 1500, f"the second certificate costs {size - len(one)} bytes gzipped"
        assert size <= 16384 // 2, f"user-data is {size} bytes gzipped: less than half of EC2's 16 KB left"


def test_user_data_is_sent_gzipped_and_deterministic() -> None:
    text = cloud_init(biggest_realistic_boot())
    encoded = encode_user_data(text)
    assert base64.b64decode(encoded)[:2] == b"\x1f\x8b", "gzip magic: cloud-init unpacks gzip itself"
    assert encode_user_data(text) == encoded, "same text, same bytes (a new byte is a new template version)"
    assert decode_user_data(encoded) == text
    assert decode_user_data(base64.b64encode(text.encode()).decode()) == text, "plain base64 reads too"


# --- the templates in host/files (one template function) -------------------------------------------

TEMPLATES = sorted(
    p.name for p in resources.files("host").joinpath("files").iterdir() if p.name.endswith((".sh", ".conf", ".service"))
)


def test_a_template_refuses_a_missing_or_an_unknown_value() -> None:
    with pytest.raises(ValueError, match=r"without a value: \['ENV_FILE', 'FETCH_SCRIPT', 'SANDBOX', 'STATE_DIR'\]"):
        render_file("docker-registry-dropin.conf")
    with pytest.raises(ValueError, match=r"sandbox\.conf: .* values without a placeholder: \['STATE_DIRECTORY'\]"):
        render_file("sandbox.conf", STATE_DIRECTORY="/var/lib/docker-registry")


def test_a_value_is_inserted_as_it_is_and_never_filled_again() -> None:
    values = {"FETCH_SCRIPT": "${ENV_FILE}", "ENV_FILE": "/run/e", "SANDBOX": "S=1", "STATE_DIR": "/var/x"}
    assert "ExecStartPre=+${ENV_FILE}\n" in render_file("docker-registry-dropin.conf", **values)


def test_a_rendered_host_holds_no_placeholder() -> None:
    for f in render_host(gated_boot()).files:
        assert not PLACEHOLDER.search(f.content), f"{f.path} holds {PLACEHOLDER.search(f.content)}"


def every_rendered_file() -> list[HostFile]:
    """The files of the host with the most of them (token mode, the gate, the scan events forwarder) and of a
    scanner worker."""
    queue = "https://sqs.eu-west-1.amazonaws.com/111122223333/reg-dev-scan"
    endpoint = NotificationEndpoint("scan-events", "https://127.0.0.1:5004/events", None, ignore_actions=("pull",))
    events = ScanEventsBoot(
        config_yaml=render_events_config(queue, "eu-west-1"),
        token_secret_arn=arn("scan-events-token"),
        tls_key_secret_arn=arn("tls-key"),
        tls_cert_file="/etc/docker/registry/tls/host.crt",
        ca_cert_pem=CERT,
        endpoints_template=notification_endpoints_env((endpoint,), BEARER_MARK),
    )
    worker = WorkerConfig(
        queue_url=queue,
        region="eu-west-1",
        bucket="reg-dev-blobs-1234",
        registry="registry.dev.example.com",
        username="registry-scanner",
        password_file=SCANNER_PASSWORD_FILE,
        trivy="/usr/local/bin/trivy",
        findings_topic_arn="arn:aws:sns:eu-west-1:111122223333:reg-dev-scan-findings",
        findings_threshold="HIGH",
        visibility_timeout_seconds=900,
        cache_dir="/var/cache/registry-scanner",
    )
    scanner = ScannerBoot(
        region="eu-west-1",
        architecture="arm64",
        worker_config_yaml=render_worker_config(worker),
        robot_secret_arn=arn("robots/registry-scanner"),
        artifact_bucket="reg-dev-blobs-1234",
        artifact_key="registry-fleet/token-service/auth-" + "a" * 64 + ".tar.gz",
        artifact_sha256="a" * 64,
        pip_index_url="https://pypi.org/simple",
        trivy_version="0.59.1",
        trivy_sha256="b" * 64,
    )
    host = render_host(dataclasses.replace(gated_boot(), scan_events=events))
    return [*host.files, *render_scanner_host(scanner).files]


def test_with_the_forwarder_the_registry_runs_through_the_log_filter() -> None:
    """The registry logs the forwarder's bearer at start: its drop-in replaces the package's ExecStart with the
    same command behind host/log_redact.py, which the host gets byte for byte, executable."""
    files = {f.path: f for f in every_rendered_file()}
    dropin = files[SCAN_EVENTS_DROPIN_PATH].content.splitlines()
    assert dropin[-2:] == [
        "ExecStart=",
        f"ExecStart={LOG_REDACT_SCRIPT_PATH} -- /usr/bin/docker-registry serve /etc/docker/registry/config.yml",
    ]
    script = files[LOG_REDACT_SCRIPT_PATH]
    assert script.permissions == "0755" and script.content.startswith("#!/usr/bin/python3 -I\n")
    assert script.content == (Path(__file__).resolve().parent.parent / "host" / "log_redact.py").read_text()
    assert LOG_REDACT_SCRIPT_PATH not in {f.path for f in render_host(gated_boot()).files}, "only with the forwarder"


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_is_rendered_into_a_host(name: str) -> None:
    """A template that no renderer uses is dead text: its first line without a placeholder is in some file
    (of a token-mode host that runs the gate and the scan events forwarder, or of a scanner worker)."""
    line = next(line for line in template_text(name).splitlines() if line and not PLACEHOLDER.search(line))
    assert any(line in f.content.splitlines() for f in every_rendered_file()), f"{name}: {line!r}"


# --- host boot: the signature gate (token mode, a protected namespace) ----------------------------

PUBLIC_KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
GATE_UNIT_EXEC_START = (
    "ExecStart=/opt/registry-fleet/token-service/current/venv/bin/python -m gate "
    "--config /etc/registry-fleet/gate.yml --bind 0.0.0.0:5003 "
    "--certfile /etc/docker/registry/tls/host.crt --keyfile /etc/registry-gate/tls.key"
)


def gate(**changes: Any) -> GateBoot:
    boot = GateBoot(
        config_yaml=render_gate_config(["base", "payments/app"], [PUBLIC_KEY]),
        tls_key_secret_arn=arn("tls-key"),
        tls_cert_file="/etc/docker/registry/tls/host.crt",
    )
    return dataclasses.replace(boot, **changes)


def gated_boot(**changes: Any) -> HostBoot:
    return dataclasses.replace(token_boot(), gate=gate(**changes))


def test_the_gate_config_is_the_contracts_format() -> None:
    config = yaml.safe_load(render_gate_config(["payments", "base"], [PUBLIC_KEY]))
    assert config == {
        "upstream": "https://127.0.0.1:5000",
        "upstream_ca_file": "/etc/docker/registry/tls/ca.crt",
        "upstream_server_name": "registry.internal",
        "public_keys": [PUBLIC_KEY],
        "namespaces": {"base": {"require_signed": True}, "payments": {"require_signed": True}},
        "scanner_accounts": ["registry-scanner"],  # the scanner's robot reads images before any check
        "cache_seconds": 300,
    }
    assert list(config["namespaces"]) == ["base", "payments"]  # sorted: the same settings, the same bytes
    assert "|" in render_gate_config(["base"], [PUBLIC_KEY])  # the PEM as a readable block


def test_the_rendered_gate_config_loads_with_the_gates_own_loader(tmp_path: Path) -> None:
    """What the hosts get is what `python -m gate --config` accepts: only the CA file's path is moved (it
    exists on a host, not here), every other byte is the renderer's."""
    text = render_gate_config(["payments", "base/debian"], [PUBLIC_KEY])
    as_rendered = tmp_path / "gate.yml"
    as_rendered.write_text(text)
    if not Path(CA_CERT_FILE).exists():  # this machine is no host: the loader names the one missing file
        with pytest.raises(ConfigError, match=re.escape(f"upstream_ca_file: {CA_CERT_FILE}: no such file")):
            load_config(as_rendered)
    ca = tmp_path / "ca.crt"
    ca.write_text(CERT)
    moved = tmp_path / "gate-moved.yml"
    moved.write_text(text.replace(CA_CERT_FILE, str(ca)))
    config = load_config(moved)
    assert config.upstream == f"https://127.0.0.1:{REGISTRY_PORT}" and config.upstream_ca_file == ca
    assert config.upstream_server_name == HOST_INTERNAL_NAME and config.cache_seconds == GATE_CACHE_SECONDS
    assert len(config.keys()) == 1
    assert config.protected("payments") and config.protected("payments/app") and config.protected("base/debian/x")
    assert not config.protected("base") and not config.protected("paymentsx/app")
    # The twin: a renderer writing the settings' spelling (requireSigned) is refused by the loader.
    moved.write_text(text.replace(CA_CERT_FILE, str(ca)).replace("require_signed", "requireSigned"))
    with pytest.raises(ConfigError, match="requireSigned"):
        load_config(moved)


@pytest.mark.parametrize(
    ("namespaces", "pems", "says"),
    [
        ([], [PUBLIC_KEY], "at least one protected namespace"),
        (["Base"], [PUBLIC_KEY], "not repository namespaces: ['Base']"),
        (["base/"], [PUBLIC_KEY], "not repository namespaces"),
        (["base", "base"], [PUBLIC_KEY], "namespaces listed twice: ['base']"),
        (["base"], [], "needs the stack's public signing key"),
        (["base"], [FAKE_PEM], "holds a private key"),
        (["base"], [CERT], "one PEM block -----BEGIN PUBLIC KEY-----"),
        (["base"], ["-----BEGIN PUBLIC KEY-----\nMIIBfake\n-----END PUBLIC KEY-----\n"], "does not load"),
    ],
)
def test_the_gate_config_refuses_what_the_gate_could_not_use(namespaces: list[str], pems: list[str], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        render_gate_config(namespaces, pems)


def test_the_gate_config_refuses_a_key_of_another_curve() -> None:
    other = (
        ec.generate_private_key(ec.SECP256K1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ValueError, match="curve secp256k1; expected P-256"):
        render_gate_config(["base"], [other])


def test_a_gated_host_writes_the_gate_config_unit_and_account_and_starts_it_after_its_account() -> None:
    boot = gated_boot()
    files = user_data_files(boot)
    rendered = render_host(boot)
    assert files["/etc/registry-fleet/gate.yml"]["permissions"] == "0644"  # public: a public key and names
    assert files["/etc/registry-fleet/gate.yml"]["content"] == boot.gate.config_yaml  # type: ignore[union-attr]
    assert files["/etc/sysusers.d/registry-gate.conf"]["content"] == rendered.content(
        "/etc/sysusers.d/registry-gate.conf"
    )
    unit = rendered.content("/etc/systemd/system/registry-gate.service")
    assert GATE_UNIT_EXEC_START in unit.splitlines()
    assert "User=registry-gate" in unit.splitlines() and "Group=registry-gate" in unit.splitlines()
    assert "After=network-online.target registry-token.service" in unit.splitlines()
    assert "ExecStartPre=+/usr/local/sbin/registry-fleet-fetch-secrets registry-gate" in unit.splitlines()
    runcmd = yaml.safe_load(cloud_init(boot))["runcmd"]
    gate_steps = runcmd[runcmd.index(["systemctl", "enable", "--now", "registry-token"]) + 1 :]
    assert gate_steps == [
        ["systemd-sysusers", "/etc/sysusers.d/registry-gate.conf"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "registry-gate"],
    ]
    assert service_account_problems(yaml.safe_load(cloud_init(boot))) == []


def test_the_gate_reads_the_host_key_only_never_the_token_services_secrets() -> None:
    script = fetch_script(gated_boot())
    branch = script.split("registry-gate)\n", 1)[1].split(";;", 1)[0]
    assert branch.strip().splitlines() == [
        f"write_secret {arn('tls-key')} /etc/registry-gate/tls.key 0640 root registry-gate"
    ]
    token_branch = script.split("registry-token)\n", 1)[1].split(";;", 1)[0]
    assert "registry-gate" not in token_branch  # the token service's secrets stay with its own group


def test_a_gated_host_checks_the_gates_imports_when_it_installs_the_release() -> None:
    assert '-c "import auth.serve, retention.run, gate.config"' in install_script(gated_boot())
    assert '-c "import auth.serve, retention.run"' in install_script(token_boot())
    # One release for two units: the install takes a lock, so they never install at once.
    assert install_script(token_boot()).splitlines()[10:12] == ['exec 9<"$P"', "flock 9"]


def test_a_host_without_a_gate_writes_nothing_of_it() -> None:
    rendered = render_host(token_boot())
    assert not [f.path for f in rendered.files if "gate" in f.path]
    assert "registry-gate" not in rendered.user_data


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"tls_key_secret_arn": FAKE_PEM}, "HostBoot.gate.tls_key_secret_arn must be a Secrets Manager secret ARN"),
        ({"port": 0}, "HostBoot.gate.port must be an integer in 1..65535"),
        ({"tls_cert_file": "/etc/other.crt"}, "HostBoot.gate.tls_cert_file must be the absolute path of one of"),
        ({"config_yaml": "upstream: x\n"}, "render_gate_config returns"),
        ({"config_yaml": FAKE_PEM}, "HostBoot.gate.config_yaml holds a private key"),
    ],
)
def test_a_bad_gate_is_refused_before_rendering(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        render_host(gated_boot(**changes))


def test_a_gate_without_the_token_service_is_refused() -> None:
    with pytest.raises(ValueError, match=r"HostBoot\.gate is set without HostBoot\.token_service"):
        render_host(base_boot(gate=gate()))
