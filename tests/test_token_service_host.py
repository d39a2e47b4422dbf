"""The token service as a registry host installs and runs it, with real processes.

The rendered install script (host/files/install-token-service.sh) runs for real as root: it
"downloads" the artifact that `host.artifact.build_artifact()` builds, checks its SHA-256, unpacks it,
creates a venv with `python3 -m venv` and pip-installs the hash-pinned lock from PyPI
(auth/requirements.lock, `--require-hashes --only-binary=:all:`), then switches `current`; it creates
no account (on a host the account exists before the unit starts). The account comes from the rendered
sysusers.d file: the real `systemd-sysusers` applies it to a scratch root (`--root`, never this
machine's own files), and the test creates the account it made on this machine (useradd, same name,
GECOS, home and shell), for the run. The service then starts exactly as the rendered unit's ExecStart
and Environment say (paths moved to a temporary prefix), as the unit's User/Group, with a config from
`render_token_service_config`, and answers over TLS. Only the AWS CLI is a stand-in (see
`_stand_in_aws`): the download path of the script is otherwise the production one.

What this cannot prove: that systemd accepts the unit and its sandbox and applies the sysusers.d file
at boot (no systemd runs here; the boot test does), that
the host's Secrets Manager and S3 calls succeed (the AWS CLI is a stand-in), and that Debian 12's
own python3-venv behaves as this machine's python3 3.11 does.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.local import hash_secret, new_robot_token, robot_token_hash
from auth.tokens import create_signing_pair
from host.artifact import AUTH_DIR, LOCK_NAME, Artifact, build_artifact
from host.boot import FetchSet, HostBoot, SecretFile, TokenServiceBoot, render_fetch_script, render_host
from host.contract import (
    FETCH_SCRIPT_PATH,
    HOST_CERT_FILE,
    TOKEN_CONFIG_FILE,
    TOKEN_INSTALL_SCRIPT_PATH,
    TOKEN_RELEASE_MARKER,
    TOKEN_SERVICE_DIR,
    TOKEN_SYSUSERS_PATH,
    TOKEN_TLS_KEY_FILE,
    TOKEN_UNIT_PATH,
    TOKEN_USER,
)
from host.registry_config import RegistryConfig, render_registry_config
from host.token_config import render_token_service_config
from infra.secrets import AccessSecrets
from infra.settings import TokenAccess, load_stack_settings
from infra.token_service import token_service_spec
from lab.pki import create_pki
from lab.supervisor import free_port

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
REGION = "eu-west-1"
BUCKET = "registry-fleet-dev-blobs"
SERVICE = "registry.dev.example.com"
ISSUER = "registry-fleet-dev-token"
PASSWORD = "correct horse battery staple"  # the dev stack's local admin, in this test only
BCRYPT_COST = 10  # auth/config.py: bcrypt_min_cost defaults to 10, and the rendered config keeps it
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's and cloud-init's on Debian
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)


def arn(name: str) -> str:
    return f"arn:aws:secretsmanager:{REGION}:111122223333:secret:registry-fleet/dev/{name}-AbCdEf"


def pins(text: str) -> dict[str, str]:
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in PIN.findall(text)}


def clean_env(path_first: Path | None = None) -> dict[str, str]:
    """A host's PATH (a stand-in directory first), HOME and pip's own settings; nothing else from the
    caller. Not the caller's PATH: its python3 may be one the service user cannot run (e.g. pyenv's
    under /root), where a host has Debian's /usr/bin/python3."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    env["PATH"] = f"{path_first}:{HOST_PATH}" if path_first else HOST_PATH
    env["HOME"] = os.environ.get("HOME", "/root")
    return env


# --- the lock ------------------------------------------------------------------------------------


def test_lock_pins_what_requirements_in_and_requirements_txt_pin_and_hashes_every_entry() -> None:
    wanted = pins((AUTH_DIR / "requirements.in").read_text())
    runtime = pins((REPO / "requirements.txt").read_text())
    lock_text = (AUTH_DIR / LOCK_NAME).read_text()
    locked = pins(lock_text)
    assert wanted, "auth/requirements.in pins nothing"
    for name, version in wanted.items():
        assert runtime.get(name) == version, f"{name}: requirements.in {version}, requirements.txt {runtime.get(name)}"
        assert locked.get(name) == version, f"{name}: requirements.in {version}, requirements.lock {locked.get(name)}"
    entries = [e for e in re.split(r"\n(?=\S)", lock_text) if PIN.match(e)]  # a pin with its indented lines
    assert len(entries) == len(locked)
    for entry in entries:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash for {entry.splitlines()[0]}"


# --- installing ----------------------------------------------------------------------------------


def _stand_in_aws(bin_dir: Path, artifact_file: Path, log: Path) -> None:
    """Write `bin_dir/aws`: a stand-in for the AWS CLI, first on PATH for the install script. Called as
    `aws --region R s3api get-object --bucket B --key K FILE`, it records its argv (one JSON list a line
    in `log`) and copies `artifact_file` to FILE, as the real CLI writes the object there; any other
    call fails."""
    bin_dir.mkdir(parents=True)
    script = bin_dir / "aws"
    script.write_text(
        f"""#!{sys.executable}
# Stands in for the AWS CLI in tests/test_token_service_host.py (s3api get-object only).
import json, shutil, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[3:5] != ["s3api", "get-object"]:
    sys.exit("stand-in aws: unexpected call " + " ".join(sys.argv[1:]))
shutil.copyfile({str(artifact_file)!r}, sys.argv[-1])
print("{{}}")
"""
    )
    script.chmod(0o755)


def aws_calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def host_boot(artifact: Artifact, signing_cert_pem: str, port: int) -> HostBoot:
    cfg = RegistryConfig(environment="dev", public_url=f"https://{SERVICE}", bucket=BUCKET, region=REGION)
    token = TokenServiceBoot(
        artifact_bucket=BUCKET,
        artifact_key=artifact.key,
        artifact_sha256=artifact.sha256,
        pip_index_url="https://pypi.org/simple",
        config_secret_arn=arn("token-config"),
        signing_key_secret_arn=arn("token-signing-key"),
        tls_key_secret_arn=arn("tls-key"),
        signing_cert_pem=signing_cert_pem,
        tls_cert_file=HOST_CERT_FILE,
        port=port,
    )
    return HostBoot(
        region=REGION,
        registry_config_yaml=render_registry_config(cfg),
        http_secret_arn=arn("http-secret"),
        secret_files=(SecretFile(arn("tls-key"), "/etc/docker/registry/tls/host.key"),),
        public_files=((HOST_CERT_FILE, signing_cert_pem),),  # any certificate: only its path matters here
        token_service=token,
    )


def signing_pair(directory: Path) -> tuple[bytes, str]:
    """An RSA 2048 key (PKCS#1 PEM) and its self-signed certificate, as pulumi-tls makes them."""
    key_file, cert_file = create_signing_pair(directory)
    return key_file.read_bytes(), cert_file.read_text()


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class Account:
    """A passwd entry and its primary group's name."""

    name: str
    gecos: str
    home: str
    shell: str
    group: str


def sysusers_account(sysusers_text: str, name: str, scratch: Path) -> Account:
    """The account the real systemd-sysusers makes from `sysusers_text`, applied to an empty scratch
    root (`--root`: this machine's own /etc is not read or written)."""
    binary = shutil.which("systemd-sysusers")
    assert binary, "systemd-sysusers not found: install the Debian package systemd (or systemd-standalone-sysusers)"
    (scratch / "etc").mkdir(parents=True)
    conf = scratch / "sysusers.conf"
    conf.write_text(sysusers_text)
    done = subprocess.run(
        [binary, f"--root={scratch}", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"systemd-sysusers refused the host's file:\n{done.stderr}"
    passwd = {e.split(":")[0]: e.split(":") for e in (scratch / "etc" / "passwd").read_text().splitlines()}
    groups = {e.split(":")[2]: e.split(":")[0] for e in (scratch / "etc" / "group").read_text().splitlines()}
    assert name in passwd, f"systemd-sysusers created no user {name}: {sorted(passwd)}"
    _, _, uid, gid, gecos, home, shell = passwd[name]
    assert int(uid) < 1000, f"{name} is not a system account (uid {uid})"
    return Account(name, gecos, home, shell, groups[gid])


def create_account(account: Account) -> None:
    """On this machine, the account systemd-sysusers made in the scratch root (ids are this machine's)."""
    if account.group not in {g.gr_name for g in grp.getgrall()}:
        subprocess.run(["groupadd", "--system", account.group], check=True, capture_output=True)
    subprocess.run(
        ["useradd", "--system", "-g", account.group, "-M", "-d", account.home, "-s", account.shell,
         "-c", account.gecos, account.name],
        check=True,
        capture_output=True,
    )  # fmt: skip


@dataclass(frozen=True)
class Installed:
    root: Path  # world-traversable: the service user reads the release and its files below it
    prefix: Path  # stands for TOKEN_SERVICE_DIR
    boot: HostBoot
    artifact: Artifact
    signing_key_pem: bytes
    signing_cert_pem: str
    port: int
    aws_log: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    had_user: bool  # the account existed before the install script ran
    user_after_install: bool  # ... and after it ran (before the test created it)
    account: Account  # what systemd-sysusers makes from the host's sysusers.d file


def run_install(boot: HostBoot, root: Path, prefix: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    script = root / "install-token-service"
    script.write_text(render_host(boot).content(TOKEN_INSTALL_SCRIPT_PATH))
    script.chmod(0o700)
    return subprocess.run(
        [str(script), "--prefix", str(prefix)],
        env=clean_env(path_first=bin_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    artifact = build_artifact()
    assert build_artifact().content == artifact.content, "two builds of the artifact differ"
    had_user = user_exists(TOKEN_USER)
    root = Path(tempfile.mkdtemp(prefix="registry-fleet-token-host-"))
    root.chmod(0o755)
    try:
        artifact_file = root / "artifact.tar.gz"
        artifact_file.write_bytes(artifact.content)
        aws_log = root / "aws-calls.jsonl"
        _stand_in_aws(root / "bin", artifact_file, aws_log)
        key_pem, cert_pem = signing_pair(root / "signing")
        port = free_port()
        boot = host_boot(artifact, cert_pem, port)
        prefix = root / "opt" / "token-service"
        first = run_install(boot, root, prefix, root / "bin")
        second = run_install(boot, root, prefix, root / "bin") if first.returncode == 0 else first
        user_after_install = user_exists(TOKEN_USER)
        account = sysusers_account(render_host(boot).content(TOKEN_SYSUSERS_PATH), TOKEN_USER, root / "sysusers")
        if not user_after_install:
            create_account(account)  # as the host's runcmd does (systemd-sysusers) before the unit starts
        yield Installed(
            root, prefix, boot, artifact, key_pem, cert_pem, port, aws_log, first, second,
            had_user, user_after_install, account,
        )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if not had_user and user_exists(TOKEN_USER):  # leave the machine as the test found it
            subprocess.run(["userdel", TOKEN_USER], check=False, capture_output=True)
            with contextlib.suppress(KeyError):
                grp.getgrnam(TOKEN_USER)
                subprocess.run(["groupdel", TOKEN_USER], check=False, capture_output=True)


def test_install_script_installs_the_release_and_points_current_at_it(installed: Installed) -> None:
    assert installed.first.returncode == 0, f"install failed:\n{installed.first.stdout}\n{installed.first.stderr}"
    release = installed.prefix / "releases" / installed.artifact.sha256
    assert (release / TOKEN_RELEASE_MARKER).is_file()
    assert (release / "venv" / "bin" / "python").exists()
    assert (release / "app" / "auth" / "serve.py").is_file()
    assert (release / "app" / "auth" / LOCK_NAME).is_file()
    current = installed.prefix / "current"
    assert current.is_symlink() and os.readlink(current) == f"releases/{installed.artifact.sha256}"
    assert not list(installed.prefix.glob(".artifact.*")), "the downloaded artifact was left behind"


def test_install_script_creates_no_account(installed: Installed) -> None:
    """The unit's User= is resolved before its ExecStartPre=+ runs: the account comes from sysusers.d."""
    if installed.had_user:
        pytest.fail(f"{TOKEN_USER} existed on this machine before the test: remove it (userdel) to run this check")
    assert installed.first.returncode == 0, installed.first.stderr
    assert not installed.user_after_install, "the install script created the account: the unit would depend on it"


def test_the_hosts_sysusers_file_makes_the_units_user_and_group_a_locked_system_account(installed: Installed) -> None:
    unit = unit_settings(render_host(installed.boot).content(TOKEN_UNIT_PATH))
    assert (installed.account.name, installed.account.group) == (unit["User"], unit["Group"]) == (TOKEN_USER,) * 2
    assert (installed.account.home, installed.account.shell) == ("/nonexistent", "/usr/sbin/nologin")
    assert user_exists(TOKEN_USER) and grp.getgrnam(TOKEN_USER).gr_gid == pwd.getpwnam(TOKEN_USER).pw_gid


def test_install_script_downloads_through_the_aws_cli_once(installed: Installed) -> None:
    calls = aws_calls(installed.aws_log)
    assert len(calls) == 1, f"expected one download (the second run finds a complete release); got {calls}"
    (call,) = calls
    expected = ["--region", REGION, "s3api", "get-object", "--bucket", BUCKET, "--key", installed.artifact.key]
    assert call[:-1] == expected
    assert Path(call[-1]).parent == installed.prefix, "the download goes to a temporary file inside the prefix"


def test_install_script_is_idempotent(installed: Installed) -> None:
    assert installed.second.returncode == 0, installed.second.stderr
    assert [p.name for p in (installed.prefix / "releases").iterdir()] == [installed.artifact.sha256]


def test_install_script_refuses_an_artifact_whose_sha256_differs(installed: Installed) -> None:
    root = installed.root / "tampered"
    root.mkdir()
    tampered = root / "artifact.tar.gz"
    tampered.write_bytes(installed.artifact.content + b"\0")  # the same tarball, one byte longer
    log = root / "aws-calls.jsonl"
    _stand_in_aws(root / "bin", tampered, log)
    prefix = root / "opt" / "token-service"
    result = run_install(installed.boot, root, prefix, root / "bin")
    assert result.returncode != 0
    assert f"expected {installed.artifact.sha256}: not installed" in result.stderr
    assert len(aws_calls(log)) == 1, "the script must have tried the download"
    assert not (prefix / "current").exists()
    assert not list((prefix / "releases").iterdir()), "a release was created from an unverified artifact"
    assert not list(prefix.glob(".artifact.*")), "the refused artifact was left behind"


# --- fetching the secrets ------------------------------------------------------------------------


def _stand_in_aws_secrets(bin_dir: Path, secrets: dict[str, str]) -> None:
    """Write `bin_dir/aws`: a stand-in for the AWS CLI that answers `aws --region R secretsmanager
    get-secret-value --secret-id ARN --query SecretString --output text` with the secret's value."""
    bin_dir.mkdir(parents=True)
    script = bin_dir / "aws"
    script.write_text(
        f"""#!{sys.executable}
# Stands in for the AWS CLI in tests/test_token_service_host.py (secretsmanager get-secret-value only).
import sys
secrets = {secrets!r}
args = sys.argv[1:]
if args[2:4] != ["secretsmanager", "get-secret-value"] or args[-4:] != ["--query", "SecretString", "--output", "text"]:
    sys.exit("stand-in aws: unexpected call " + " ".join(args))
print(secrets[args[args.index("--secret-id") + 1]])
"""
    )
    script.chmod(0o755)


def test_fetch_script_writes_the_named_units_secrets_and_only_those(tmp_path: Path) -> None:
    """The fetch script both units run (ExecStartPre=+SCRIPT [UNIT]), as root, with temporary paths."""
    values = {arn("registry-key"): "registry-secret-value", arn("token-key"): "token-secret-value"}
    _stand_in_aws_secrets(tmp_path / "bin", values)
    registry_file, token_file = tmp_path / "registry" / "key", tmp_path / "token" / "key"
    script = tmp_path / FETCH_SCRIPT_PATH.rsplit("/", 1)[-1]
    script.write_text(
        render_fetch_script(
            REGION,
            [
                FetchSet(
                    "docker-registry", (SecretFile(arn("registry-key"), str(registry_file), "0640", "root:root"),)
                ),
                FetchSet("registry-token", (SecretFile(arn("token-key"), str(token_file), "0600", "root:root"),)),
            ],
        )
    )
    script.chmod(0o700)

    def fetch(*args: str) -> subprocess.CompletedProcess[str]:
        env = clean_env(path_first=tmp_path / "bin")
        result = subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=30, check=False)
        for value in values.values():
            assert value not in result.stdout + result.stderr, "the fetch script printed a secret"
        return result

    assert fetch().returncode == 0
    assert registry_file.read_text() == "registry-secret-value\n" and not token_file.exists(), "default: the first unit"
    assert fetch("registry-token").returncode == 0
    assert token_file.read_text() == "token-secret-value\n"
    assert (token_file.stat().st_mode & 0o777, token_file.stat().st_uid) == (0o600, 0)
    assert (token_file.parent.stat().st_mode & 0o777) == 0o750
    unknown = fetch("nginx")
    assert unknown.returncode != 0 and "no secrets for unit nginx" in unknown.stderr
    assert not list(tmp_path.glob("*/.registry-fleet.*")), "a temporary file was left behind"


# --- running -------------------------------------------------------------------------------------


def unit_settings(unit_text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in unit_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key, value)
    return settings


def write_owned(path: Path, data: bytes, mode: int, gid: int) -> None:
    """As the fetch script writes the service's secrets: root-owned, readable by the service's group."""
    path.write_bytes(data)
    os.chown(path, 0, gid)
    path.chmod(mode)


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], user: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, user=user, group=user, extra_groups=[], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd="/",
        )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def https_get(url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_healthy(url: str, context: ssl.SSLContext, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the token service exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            if https_get(url, context)[0] == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"the token service did not answer {url} within 30 s:\n{log.read_text()}")


def test_service_starts_as_the_unit_says_and_issues_a_token(installed: Installed) -> None:
    assert installed.first.returncode == 0, "the install failed; see test_install_script_installs..."
    files = installed.root / "etc"
    files.mkdir(mode=0o750)
    gid = grp.getgrnam(TOKEN_USER).gr_gid
    os.chown(files, 0, gid)
    pki = create_pki(installed.root / "pki", ["127.0.0.1", "localhost"])
    pki.server_cert.chmod(0o644)
    signing_key, signing_cert = files / "signing.key", files / "signing.crt"
    write_owned(signing_key, installed.signing_key_pem, 0o640, gid)
    write_owned(signing_cert, installed.signing_cert_pem.encode(), 0o644, gid)
    tls_key = files / "tls.key"
    write_owned(tls_key, pki.server_key.read_bytes(), 0o640, gid)
    settings = load_stack_settings("dev")
    access = settings.access
    assert isinstance(access, TokenAccess)
    user_hashes = {name: hash_secret(PASSWORD, cost=BCRYPT_COST) for name in access.users}
    spec = token_service_spec(settings, AccessSecrets(user_hashes, "unused"), ["10.40.0.0/20"])
    assert spec is not None
    spec = dataclasses.replace(spec, issuer=ISSUER, service=SERVICE, ldap=None, trusted_proxies=())
    config_text = render_token_service_config(
        spec,
        signing_key_file=str(signing_key),
        signing_cert_file=str(signing_cert),
        robot_token_hashes={name: robot_token_hash(new_robot_token()) for name in spec.robots},  # as on hosts
    )
    config = files / "config.json"
    write_owned(config, config_text.encode(), 0o640, gid)

    unit = unit_settings(render_host(installed.boot).content(TOKEN_UNIT_PATH))
    assert unit["User"] == unit["Group"] == TOKEN_USER

    def local(text: str) -> str:
        return (
            text.replace(TOKEN_SERVICE_DIR, str(installed.prefix))
            .replace(TOKEN_CONFIG_FILE, str(config))
            .replace(HOST_CERT_FILE, str(pki.server_cert))
            .replace(TOKEN_TLS_KEY_FILE, str(tls_key))
            .replace(f"0.0.0.0:{installed.port}", f"127.0.0.1:{installed.port}")  # loopback only in a test
        )

    argv = shlex.split(local(unit["ExecStart"]))
    env_name, _, env_value = local(unit["Environment"]).partition("=")
    env = {"PATH": HOST_PATH, env_name: env_value}
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    base = f"https://127.0.0.1:{installed.port}"
    log = installed.root / "service.log"
    with running(argv, env, unit["User"], log) as proc:
        wait_healthy(f"{base}/healthz", context, proc, log)
        basic = base64.b64encode(f"{access.users[0]}:{PASSWORD}".encode()).decode()
        status, body = https_get(
            f"{base}/auth?service={SERVICE}&scope=repository:team-a/app:pull",
            context,
            {"Authorization": f"Basic {basic}"},
        )
    assert status == 200, body
    public_key = x509.load_pem_x509_certificate(installed.signing_cert_pem.encode()).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    claims = jwt.decode(json.loads(body)["token"], public_key, algorithms=["RS256"], audience=SERVICE, issuer=ISSUER)
    assert claims["sub"] == access.users[0]
    assert claims["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull"]}]
    assert proc.returncode is not None


# --- arm64 ---------------------------------------------------------------------------------------


def test_every_pin_has_an_arm64_wheel_with_a_locked_hash(tmp_path: Path) -> None:
    """arm64 hosts (the default architecture) install the same lock: every pin has a wheel for
    manylinux2014 aarch64 and CPython 3.11 whose hash the lock carries (pip checks them all)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "--no-deps", "--require-hashes", "--platform", "manylinux2014_aarch64",
         "--python-version", "3.11", "--implementation", "cp", "-r", str(AUTH_DIR / LOCK_NAME), "-d", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    wheels = sorted(p.name for p in tmp_path.glob("*.whl"))
    assert len(wheels) == len(pins((AUTH_DIR / LOCK_NAME).read_text())), wheels
    native = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert native and all("aarch64" in w for w in native), native
