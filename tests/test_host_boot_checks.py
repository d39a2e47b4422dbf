"""The boot test's own checks, each shown catching what it looks for (no root, no container).

tests/test_host_boot.py boots hosts for real; these run in the fast tier: the leak finder finds a
planted secret (whole, or one line of a PEM key) and names it by label, never by value; the socket
parser names the host's processes and ignores the machine's sockets; the container harness refuses
what would touch the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import nspawn
from lab.host_lab import credential_headers, find_leaks, listening_sockets, secret_needles
from lab.host_root import CLOUD_CFG, PACKAGES, HostRootError, cache_key, tarball

KEY = """-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5owkIm4eMfWtfoAoGCCqGSM49
AwEHoUQDQgAEQ2yYpAzTTbJmZZ3Bl4n9kB9EoQ3mzW6b+Rk6hWm/zx7lTW1QMV1A
-----END EC PRIVATE KEY-----
"""


def test_find_leaks_finds_a_planted_secret_and_names_it_by_label_only() -> None:
    secrets = {"http-secret": "s3cr3tValue0123456789", "tls-key": KEY}
    texts = {
        "user-data": "#cloud-config\nwrite_files: []\n",
        "the journal": "Dec 01 host registry[1]: started with s3cr3tValue0123456789\n",
        "cloud-init.log": "writing\nAwEHoUQDQgAEQ2yYpAzTTbJmZZ3Bl4n9kB9EoQ3mzW6b+Rk6hWm/zx7lTW1QMV1A\n",
    }
    found = find_leaks(texts, secrets)
    assert found == ["http-secret in the journal", "tls-key in cloud-init.log"]
    assert not any("s3cr3t" in f for f in found)
    assert find_leaks({"user-data": "nothing here"}, secrets) == []


def test_a_pem_is_looked_for_line_by_line_without_its_public_armour() -> None:
    needles = secret_needles(KEY)
    assert len(needles) == 2 and not any(n.startswith("-----") for n in needles)
    assert secret_needles("  one-line-secret \n") == ["one-line-secret"]


def test_listening_sockets_keeps_the_hosts_processes_and_drops_the_machines() -> None:
    ss = (
        'tcp LISTEN 0 4096 *:5000 *:* users:(("docker-registry",pid=1859,fd=7))\n'
        'tcp LISTEN 0 4096 127.0.0.1:5001 0.0.0.0:* users:(("docker-registry",pid=1859,fd=3))\n'
        'tcp LISTEN 0 2048 0.0.0.0:5002 0.0.0.0:* users:(("python",pid=2094,fd=3),("python",pid=2090,fd=3))\n'
        "tcp LISTEN 0 128 127.0.0.1:63551 0.0.0.0:*\n"  # the machine's: no process of the host
    )
    host = {("docker-registry", "*:5000"), ("docker-registry", "127.0.0.1:5001"), ("python", "0.0.0.0:5002")}
    assert listening_sockets(ss) == host
    extra = ss + 'tcp LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=7,fd=6))\n'
    assert listening_sockets(extra) == host | {("nginx", "0.0.0.0:80")}  # a service the host should not run


def test_the_root_cache_key_follows_the_recipe() -> None:
    assert cache_key("bookworm") != cache_key("trixie")
    assert "python3-cffi-backend" in PACKAGES  # debootstrap does not resolve virtual packages
    assert "datasource_list: [NoCloud, None]" in CLOUD_CFG and "ssh_genkeytypes: []" in CLOUD_CFG
    with pytest.raises(HostRootError, match="unknown Debian suite"):
        tarball("sid")


def test_the_container_harness_refuses_what_would_touch_the_machine(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    with pytest.raises(nspawn.ContainerError, match="absolute path without"):
        nspawn.write_files(upper, {"/etc/../../escape": nspawn.FileSpec(b"x")})
    with pytest.raises(nspawn.ContainerError, match="absolute path without"):
        nspawn.write_files(upper, {"relative/path": nspawn.FileSpec(b"x")})
    nspawn.write_files(upper, {"/etc/hosts": nspawn.FileSpec(b"127.0.0.1 localhost\n", 0o644)})
    assert (upper / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_credential_headers_finds_a_logged_authorization_header_and_masks_it() -> None:
    log = (
        '{"msg":"configuring endpoint lab-events (https://127.0.0.1:1/events), timeout=5s, '
        'headers=map[Authorization:[Bearer abcdefgh12345678]]"}\n'
        '{"err.code":"unauthorized","err.message":"authentication required","http.request.method":"GET"}\n'
        '127.0.0.2 - - [01/Dec/2026] "GET /v2/ HTTP/1.1" 401 87\n'
    )
    found = credential_headers(log)
    assert len(found) == 1 and "Bearer [masked]" in found[0] and "abcdefgh12345678" not in found[0]
    assert credential_headers("Authorization: Basic dXNlcjpwYXNzd29yZA==") == ["Authorization: Basic [masked]"]
    assert credential_headers(log.splitlines()[1]) == []  # an auth error names no credential
