"""The lab's slapd makes TLS 1.2 its minimum whichever TLS library slapd is built with.

Debian 12's slapd 2.5 is built with GnuTLS (a priority string sets the versions; TLSProtocolMin is
ignored), Debian 13's slapd 2.6 with OpenSSL (which refuses that string: "no cipher match", slapd
exits; `TLSProtocolMin 3.3` works). `lab.slapd.tls_library` reads the library from the dynamic
loader's list of the objects slapd maps, and `slapd_conf` writes that library's setting.

- Without a Debian package: the detection over both builds' listings (as `ldd` prints them, captured
  on Debian 12 and from Debian 13's packages), and the config each branch writes.
- Lab: Debian 13's own slapd (OpenSSL), fetched with its libraries and its C library from Debian 13
  (`lab.debian_tools.fetch`: unpacked under .cache/debian, nothing installed) and run through Debian
  13's dynamic loader, on any machine: detected as OpenSSL, it starts with the lab's config, refuses
  TLS 1.1, speaks TLS 1.2 and 1.3, and the token service's LDAP client authenticates through it over
  LDAPS and StartTLS. Its broken twin: the GnuTLS string makes that slapd exit. The machine's own
  slapd (GnuTLS on Debian 12) runs in tests/test_auth_ldap.py, whose
  test_tls_below_1_2_is_refused_both_ways holds for it.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth.ldap import LdapDirectory
from lab import supervisor
from lab.debian_tools import fetch, foreign_program
from lab.pki import LabPki, create_pki
from lab.slapd import (
    TLS_SETTINGS,
    Directory,
    DirectoryUser,
    SlapdBuild,
    SlapdHandle,
    slapd_conf,
    start_slapd,
    tls_library,
    tls_library_of,
)

# `ldd /usr/sbin/slapd` on Debian 12 (slapd 2.5.13+dfsg-5), abridged: GnuTLS, linked directly.
BOOKWORM_LDD = """\
\tlinux-vdso.so.1 (0x00007f9a8bc8c000)
\tlibldap-2.5.so.0 => /lib/x86_64-linux-gnu/libldap-2.5.so.0 (0x00007f9a8ba69000)
\tliblber-2.5.so.0 => /lib/x86_64-linux-gnu/liblber-2.5.so.0 (0x00007f9a8ba59000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9a8b7e4000)
\tlibgnutls.so.30 => /lib/x86_64-linux-gnu/libgnutls.so.30 (0x00007f9a8b400000)
\tlibk5crypto.so.3 => /lib/x86_64-linux-gnu/libk5crypto.so.3 (0x00007f9a8afaa000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f9a8bc8e000)
"""
# Debian 13's slapd 2.6.10+dfsg-1: OpenSSL, only through libldap.so.2 (slapd itself names no TLS library).
TRIXIE_LDD = """\
\tlinux-vdso.so.1 (0x00007f3309a38000)
\tlibldap.so.2 => /usr/lib/x86_64-linux-gnu/libldap.so.2 (0x00007f3309808000)
\tliblber.so.2 => /usr/lib/x86_64-linux-gnu/liblber.so.2 (0x00007f33097f7000)
\tlibc.so.6 => /usr/lib/x86_64-linux-gnu/libc.so.6 (0x00007f3309570000)
\tlibssl.so.3 => /usr/lib/x86_64-linux-gnu/libssl.so.3 (0x00007f3309460000)
\tlibcrypto.so.3 => /usr/lib/x86_64-linux-gnu/libcrypto.so.3 (0x00007f3308e00000)
\t/lib64/ld-linux-x86-64.so.2 => /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 (0x00007f3309a3a000)
"""
GNUTLS_LINE = "TLSCipherSuite NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
OPENSSL_LINE = "TLSProtocolMin 3.3"

# Debian 13's slapd and every shared object it loads, from Debian 13 (its C library too: it needs glibc 2.38).
TRIXIE_PACKAGES = (
    "slapd", "libldap2", "libc6", "libssl3t64", "libsasl2-2", "libltdl7", "libwrap0", "libcrypt1", "libnsl2",
    "libtirpc3t64", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2",
    "libkeyutils1", "libzstd1", "zlib1g",
)  # fmt: skip
SEED = Directory(users=(DirectoryUser("alice", "Alice Liddell", "alice-password-1", ("team-a",)),))


# --- detection and config, both branches --------------------------------------------------------


@pytest.mark.parametrize(("listing", "library"), [(BOOKWORM_LDD, "gnutls"), (TRIXIE_LDD, "openssl")])
def test_the_tls_library_is_read_from_the_loaders_listing(listing: str, library: str) -> None:
    assert tls_library_of(listing) == library


@pytest.mark.parametrize(
    ("listing", "named"),
    [
        ("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n", "neither libgnutls nor libssl"),
        ("\tlibcrypto.so.3 => /usr/lib/x86_64-linux-gnu/libcrypto.so.3 (0x1)\n", "neither libgnutls nor libssl"),
        (BOOKWORM_LDD + TRIXIE_LDD, "gnutls and openssl"),
        ("\tstatically linked\n", "neither libgnutls nor libssl"),
    ],
    ids=["no-tls", "libcrypto-only", "both", "static"],
)
def test_a_listing_that_does_not_name_one_tls_library_is_an_error(listing: str, named: str) -> None:
    with pytest.raises(
        RuntimeError, match=f"cannot tell which TLS library slapd uses: its shared objects name {named}"
    ):
        tls_library_of(listing)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return create_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1", "localhost"])


@pytest.mark.parametrize(
    ("tls", "line", "other"), [("gnutls", GNUTLS_LINE, "TLSProtocolMin"), ("openssl", OPENSSL_LINE, "TLSCipherSuite")]
)
def test_the_config_sets_tls_1_2_in_the_words_of_the_library(
    tmp_path: Path, pki: LabPki, tls: str, line: str, other: str
) -> None:
    lines = slapd_conf(tmp_path, pki, "admin-password", tls).splitlines()
    assert line in lines
    assert TLS_SETTINGS[tls] == line
    assert not [x for x in lines if x.startswith(other)], f"{tls}: the other library's setting is written too"


def test_an_unknown_tls_library_is_refused(tmp_path: Path, pki: LabPki) -> None:
    with pytest.raises(ValueError, match="unknown TLS library 'nss'; known: gnutls, openssl"):
        slapd_conf(tmp_path, pki, "admin-password", "nss")


def test_the_config_reads_schemas_and_modules_from_the_build(tmp_path: Path, pki: LabPki) -> None:
    build = SlapdBuild(module_path="/opt/slapd/lib/ldap", schema_dir="/opt/slapd/schema")
    text = slapd_conf(tmp_path, pki, "admin-password", "openssl", build)
    assert "include /opt/slapd/schema/core.schema\n" in text and "modulepath /opt/slapd/lib/ldap\n" in text


# --- Debian 13's slapd (OpenSSL), for real -------------------------------------------------------


@pytest.fixture(scope="module")
def trixie_build() -> SlapdBuild:
    slapd = fetch("slapd")
    return SlapdBuild(
        slapd=foreign_program("usr/sbin/slapd", TRIXIE_PACKAGES),
        # The same program: it acts on the name it is run by.
        slapadd=foreign_program("usr/sbin/slapadd", TRIXIE_PACKAGES),
        module_path=str(slapd / "usr/lib/ldap"),
        schema_dir=str(slapd / "etc/ldap/schema"),
    )


@pytest.fixture(scope="module")
def trixie_slapd(
    tmp_path_factory: pytest.TempPathFactory, pki: LabPki, trixie_build: SlapdBuild
) -> Iterator[SlapdHandle]:
    handle = start_slapd(tmp_path_factory.mktemp("slapd-trixie"), pki, SEED, build=trixie_build)
    try:
        yield handle
    finally:
        handle.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def handshake(port: int, ca_file: Path, version: ssl.TLSVersion) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1: the server must refuse it
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


@pytest.mark.lab
def test_debian_13_slapd_is_detected_as_openssl(trixie_build: SlapdBuild) -> None:
    assert tls_library(trixie_build) == "openssl"


@pytest.mark.lab
def test_debian_13_slapd_refuses_tls_1_1_and_speaks_tls_1_2_and_1_3(trixie_slapd: SlapdHandle) -> None:
    assert "$OpenLDAP: slapd 2.6." in Path(trixie_slapd.service.log).read_text(), "not Debian 13's slapd"
    conf = (trixie_slapd.state_dir / "slapd.conf").read_text().splitlines()
    assert OPENSSL_LINE in conf
    port = port_of(trixie_slapd.url_ldaps)
    with pytest.raises(ssl.SSLError), pytest.warns(DeprecationWarning):
        handshake(port, trixie_slapd.ca_file, ssl.TLSVersion.TLSv1_1)
    assert handshake(port, trixie_slapd.ca_file, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(port, trixie_slapd.ca_file, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


@pytest.mark.lab
@pytest.mark.parametrize("ldaps", [True, False], ids=["ldaps", "starttls"])
def test_the_token_services_ldap_client_authenticates_through_debian_13_slapd(
    trixie_slapd: SlapdHandle, ldaps: bool
) -> None:
    directory = LdapDirectory(trixie_slapd.settings(ldaps=ldaps))
    identity = directory.authenticate("alice", "alice-password-1")
    assert identity is not None and "team-a" in identity.groups
    assert directory.authenticate("alice", "wrong-password") is None


@pytest.mark.lab
def test_broken_twin_debian_13_slapd_exits_on_the_gnutls_priority_string(
    tmp_path: Path, pki: LabPki, trixie_build: SlapdBuild
) -> None:
    """What `make lab` did on Debian 13 before the setting followed the build."""
    (tmp_path / "data").mkdir(mode=0o700)
    conf = tmp_path / "slapd.conf"
    conf.write_text(slapd_conf(tmp_path, pki, "admin-password", "gnutls", trixie_build))
    port = supervisor.free_port()
    argv = [*trixie_build.slapd, "-f", str(conf), "-h", f"ldaps://127.0.0.1:{port}/", "-d", "stats"]
    env = supervisor.clean_env({"LDAPNOINIT": "1"})
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0, "slapd accepted a GnuTLS priority string with OpenSSL"
    assert "could not set cipher list" in done.stderr and "no cipher match" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - started < 30
