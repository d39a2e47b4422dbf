"""Unit tests for the pure renderers: the registry config.yml and the host boot files.

They check the rendered text itself (parsed where it is YAML). What they cannot prove: that the
registry 2.8.2, systemd or cloud-init accept these files on a real host; the lab runs the real
registry binary with the rendered config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from components.host_boot import (
    HostBoot,
    SecretFile,
    render_cloud_init,
    render_fetch_secrets_script,
    render_systemd_dropin,
)
from components.registry_config import (
    CloudFrontSettings,
    RegistryConfig,
    registry_config_dict,
    render_registry_config,
)

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


def all_boot_texts(boot: HostBoot) -> dict[str, str]:
    return {
        "fetch script": render_fetch_secrets_script(boot),
        "drop-in": render_systemd_dropin(boot),
        "cloud-init": render_cloud_init(boot),
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


def test_health_checks_storage_driver_and_drain_file() -> None:
    health = parsed(base_config())["health"]
    assert health["storagedriver"] == {"enabled": True, "interval": "10s", "threshold": 3}
    assert health["file"] == [{"file": "/var/lib/docker-registry/drain", "interval": "10s"}]


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
    script = render_fetch_secrets_script(base_boot())
    for name in ("http-secret", "tls-key", "htpasswd", "cloudfront-key"):
        assert arn(name) in script, f"{name} ARN missing from the fetch script"


def test_fetch_script_is_strict_bash_and_never_traces() -> None:
    script = render_fetch_secrets_script(base_boot())
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script and "umask 077" in script
    assert "set -x" not in script and "xtrace" not in script


def test_fetch_script_reads_secrets_with_the_aws_cli_in_the_region() -> None:
    script = render_fetch_secrets_script(base_boot())
    assert "REGION=eu-west-1" in script
    assert 'aws --region "$REGION" secretsmanager get-secret-value --secret-id' in script
    assert "--query SecretString --output text" in script


def test_fetch_script_writes_http_secret_to_root_only_env_file() -> None:
    script = render_fetch_secrets_script(base_boot())
    assert f"write_http_secret {arn('http-secret')}" in script.splitlines()
    assert "REGISTRY_HTTP_SECRET=" in script
    assert 'mv -f "$tmp" /run/registry-fleet/registry.env' in script
    assert "chmod 0600" in script


def test_fetch_script_installs_secret_files_readable_by_the_registry_group_only() -> None:
    boot = base_boot(secret_files=(SecretFile(arn("tls-key"), "/etc/docker/registry/tls/host.key"),))
    script = render_fetch_secrets_script(boot)
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
    boot = base_boot(**changes)
    for render in (render_fetch_secrets_script, render_systemd_dropin, render_cloud_init):
        with pytest.raises(ValueError, match=message):
            render(boot)


def test_dropin_runs_fetch_script_as_root_before_start() -> None:
    dropin = render_systemd_dropin(base_boot())
    assert "ExecStartPre=+/usr/local/sbin/registry-fleet-fetch-secrets\n" in dropin


def test_dropin_reads_the_environment_file() -> None:
    assert "EnvironmentFile=-/run/registry-fleet/registry.env\n" in render_systemd_dropin(base_boot())


def test_dropin_sandboxes_the_registry() -> None:
    lines = set(render_systemd_dropin(base_boot()).splitlines())
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
    text = render_cloud_init(base_boot())
    assert text.splitlines()[0] == "#cloud-config"
    assert isinstance(yaml.safe_load(text), dict)


def test_cloud_init_installs_packages_over_https_mirrors() -> None:
    config = yaml.safe_load(render_cloud_init(base_boot()))
    assert config["apt"]["primary"][0]["uri"] == "https://deb.debian.org/debian"
    assert config["apt"]["security"][0]["uri"] == "https://deb.debian.org/debian-security"
    assert config["package_update"] is True
    assert {"docker-registry", "awscli", "ca-certificates"} <= set(config["packages"])


def test_cloud_init_writes_config_script_dropin_and_public_files_deferred() -> None:
    boot = base_boot()
    files = {f["path"]: f for f in yaml.safe_load(render_cloud_init(boot))["write_files"]}
    expected = {
        "/etc/docker/registry/config.yml": (boot.registry_config_yaml, "0644"),
        "/etc/docker/registry/tls/host.crt": (CERT, "0644"),
        "/usr/local/sbin/registry-fleet-fetch-secrets": (render_fetch_secrets_script(boot), "0700"),
        "/etc/systemd/system/docker-registry.service.d/10-registry-fleet.conf": (render_systemd_dropin(boot), "0644"),
    }
    assert set(files) == set(expected), "secret files must not be in user-data"
    for path, (content, mode) in expected.items():
        assert (files[path]["content"], files[path]["permissions"], files[path]["defer"]) == (content, mode, True), path


def test_cloud_init_ssm_agent_url_uses_region_and_arch() -> None:
    text = render_cloud_init(base_boot(region="ap-southeast-2", architecture="amd64"))
    url = "https://s3.ap-southeast-2.amazonaws.com/amazon-ssm-ap-southeast-2/latest/debian_amd64/amazon-ssm-agent.deb"
    assert url in text


def test_cloud_init_restarts_registry_after_daemon_reload() -> None:
    runcmd = yaml.safe_load(render_cloud_init(base_boot()))["runcmd"]
    assert runcmd.index(["systemctl", "daemon-reload"]) < runcmd.index(["systemctl", "restart", "docker-registry"])
    assert ["systemctl", "enable", "--now", "docker-registry"] in runcmd


def test_boot_rendering_is_deterministic() -> None:
    assert all_boot_texts(base_boot()) == all_boot_texts(base_boot())


def test_unknown_architecture_raises() -> None:
    with pytest.raises(ValueError, match=r"HostBoot\.architecture"):
        render_cloud_init(base_boot(architecture="x86_64"))


def test_user_data_over_16_kb_raises() -> None:
    big_cert = "-----BEGIN CERTIFICATE-----\n" + "A" * 64 * 300 + "\n-----END CERTIFICATE-----\n"
    boot = base_boot(public_files=(("/etc/docker/registry/tls/ca.crt", big_cert),))
    with pytest.raises(ValueError, match="16384"):
        render_cloud_init(boot)


def test_notifications_are_rendered_only_when_asked_with_the_bearer_header() -> None:
    from components.registry_config import NotificationEndpoint

    assert "notifications" not in parsed(base_config())
    endpoint = NotificationEndpoint("events", "https://127.0.0.1:9000/events", "tok")
    config = parsed(dataclasses.replace(base_config(), notifications=(endpoint,)))
    (rendered,) = config["notifications"]["endpoints"]
    assert rendered["url"] == "https://127.0.0.1:9000/events"
    assert rendered["headers"] == {"Authorization": ["Bearer tok"]}


def test_notifications_over_plain_http_are_refused() -> None:
    from components.registry_config import NotificationEndpoint

    endpoint = NotificationEndpoint("events", "http://127.0.0.1:9000/events", "tok")
    with pytest.raises(ValueError, match=r"notifications\[events\] needs an https:// url"):
        render_registry_config(dataclasses.replace(base_config(), notifications=(endpoint,)))
