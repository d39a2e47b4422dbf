"""A real OpenLDAP (Debian's `slapd`) on loopback, for the lab and the LDAP tests.

`start_slapd(state_dir, pki, seed)` writes a `slapd.conf` (mdb database and pid files in
`state_dir`, suffix `dc=lab,dc=registry`), loads the people and the service account with
`slapadd`, starts slapd in the foreground in its own session (lab.supervisor) listening on
`ldap://127.0.0.1:P` (StartTLS) and `ldaps://127.0.0.1:P2` only, then adds the groups over LDAPS
as the rootdn: the memberOf overlay maintains `memberOf` on LDAP writes, not on `slapadd`.

What the server enforces:
- TLS with the lab server certificate, TLS 1.2 at least; every operation but StartTLS itself needs
  TLS (`security tls=1`), a simple bind needs 128-bit strength (`simple_bind=128`). How TLS 1.2 is
  set depends on the TLS library slapd's libldap is built with (`tls_library`): Debian 12's slapd 2.5
  uses GnuTLS, which ignores `TLSProtocolMin` and takes the versions in a GnuTLS priority string
  (`TLSCipherSuite`); Debian 13's slapd 2.6 uses OpenSSL, which refuses that string ("no cipher
  match": slapd exits) and takes `TLSProtocolMin 3.3`;
- `allow bind_anon_dn`: like Active Directory and many servers, a simple bind with a DN and an
  empty password is an *unauthenticated* bind and succeeds, as anonymous. The lab keeps this on
  on purpose so the tests prove that auth/ldap.py, not the server, refuses empty passwords;
- ACLs: anyone may use a password to bind, nobody reads one; the service account
  (`cn=registry-reader,ou=services,...`) reads everything else; a user reads their own entry;
  anonymous reads nothing.

It never touches the system slapd of the Debian package (`/etc/ldap/slapd.d`, port 389, the
ldapi socket): the config is passed with `-f`, the listeners with `-h`, ports are free ones.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, NONE, SIMPLE, Connection, Server
from ldap3.utils.dn import escape_rdn

from auth.ldap import LdapSettings, VerifiedTls
from lab import supervisor
from lab.pki import LabPki

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_DIR = "/etc/ldap/schema"

# TLS 1.2 and 1.3 only, in the words of each TLS library OpenLDAP can be built with.
TLS_SETTINGS = {
    # GnuTLS ignores TLSProtocolMin: the versions go in its priority string.
    "gnutls": "TLSCipherSuite NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
    # OpenSSL refuses a GnuTLS priority string; 3.3 is TLS 1.2 (SSL 3 counted as 3.0).
    "openssl": "TLSProtocolMin 3.3",
}
# The shared objects that tell the library apart (libcrypto alone is no TLS library).
_TLS_LIBRARIES = {"gnutls": "libgnutls.so", "openssl": "libssl.so"}


@dataclass(frozen=True)
class SlapdBuild:
    """How to run one slapd build: the commands that start slapd and slapadd (a program, or a dynamic
    loader and its arguments before the program), its module directory and its schema directory.
    The default is the machine's Debian package."""

    slapd: tuple[str, ...] = (SLAPD,)
    slapadd: tuple[str, ...] = (SLAPADD,)
    module_path: str = MODULE_PATH
    schema_dir: str = SCHEMA_DIR


SYSTEM_SLAPD = SlapdBuild()


def tls_library_of(listing: str) -> str:
    """ "gnutls" or "openssl": the TLS library in a dynamic loader's listing of slapd's shared objects
    (what `ldd` prints). Raises RuntimeError when the listing names neither or both."""
    names = {line.split()[0].rsplit("/", 1)[-1] for line in listing.splitlines() if line.strip()}
    found = sorted(lib for lib, prefix in _TLS_LIBRARIES.items() if any(n.startswith(prefix) for n in names))
    if len(found) != 1:
        raise RuntimeError(
            f"cannot tell which TLS library slapd uses: its shared objects name "
            f"{' and '.join(found) or 'neither libgnutls nor libssl'}:\n{listing.strip()}"
        )
    return found[0]


def tls_library(build: SlapdBuild = SYSTEM_SLAPD) -> str:
    """The TLS library `build`'s slapd loads ("gnutls" or "openssl"), from the dynamic loader's own
    list of the shared objects it maps (LD_TRACE_LOADED_OBJECTS: what `ldd` does, through the build's
    own loader when it names one). slapd gets TLS from libldap, so its dependencies count too."""
    argv = [*build.slapd, "-VVV"]  # -VVV: if nothing were traced, slapd only prints its version
    _require(argv[0])
    env = {**supervisor.clean_env({"LDAPNOINIT": "1"}), "LD_TRACE_LOADED_OBJECTS": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"listing the shared objects of {' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return tls_library_of(done.stdout)


SUFFIX = "dc=lab,dc=registry"
PEOPLE_DN = f"ou=people,{SUFFIX}"
GROUPS_DN = f"ou=groups,{SUFFIX}"
SERVICES_DN = f"ou=services,{SUFFIX}"
ADMIN_DN = f"cn=admin,{SUFFIX}"
SERVICE_ACCOUNT_DN = f"cn=registry-reader,{SERVICES_DN}"
# groupOfNames needs at least one member: an empty group holds this DN (no such entry exists).
NOBODY_DN = f"cn=nobody,{SUFFIX}"


@dataclass(frozen=True)
class DirectoryUser:
    uid: str
    cn: str
    password: str = field(repr=False)
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Directory:
    """What the lab directory holds: users (with their groups) and groups to create even if empty."""

    users: tuple[DirectoryUser, ...]
    groups: tuple[str, ...] = ()

    def all_groups(self) -> list[str]:
        return sorted(set(self.groups) | {g for u in self.users for g in u.groups})


def ssha(password: str) -> str:
    """An OpenLDAP `{SSHA}` value: base64(sha1(password + salt) + salt). Lab only: real directories
    keep their own (stronger) hashes."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def user_dn(uid: str) -> str:
    return f"uid={escape_rdn(uid)},{PEOPLE_DN}"


def group_dn(name: str) -> str:
    return f"cn={escape_rdn(name)},{GROUPS_DN}"


def _ldif_line(attr: str, value: str) -> str:
    safe = value.isascii() and value.isprintable() and value[:1] not in ("", " ", ":", "<") and value[-1:] != " "
    return f"{attr}: {value}" if safe else f"{attr}:: {base64.b64encode(value.encode()).decode()}"


def _ldif_entry(dn: str, attrs: list[tuple[str, str]]) -> str:
    return "\n".join([_ldif_line("dn", dn), *(_ldif_line(a, v) for a, v in attrs)]) + "\n\n"


def seed_ldif(seed: Directory, service_password: str) -> str:
    """The base, the OUs, the service account and the people (groups are added once slapd runs)."""
    out = [
        _ldif_entry(
            SUFFIX,
            [
                ("objectClass", "top"),
                ("objectClass", "dcObject"),
                ("objectClass", "organization"),
                ("dc", "lab"),
                ("o", "registry-fleet lab"),
            ],
        )
    ]
    for dn, ou in ((PEOPLE_DN, "people"), (GROUPS_DN, "groups"), (SERVICES_DN, "services")):
        out.append(_ldif_entry(dn, [("objectClass", "organizationalUnit"), ("ou", ou)]))
    out.append(
        _ldif_entry(
            SERVICE_ACCOUNT_DN,
            [
                ("objectClass", "applicationProcess"),
                ("objectClass", "simpleSecurityObject"),
                ("cn", "registry-reader"),
                ("userPassword", ssha(service_password)),
            ],
        )
    )
    for u in seed.users:
        out.append(
            _ldif_entry(
                user_dn(u.uid),
                [
                    ("objectClass", "inetOrgPerson"),
                    ("uid", u.uid),
                    ("cn", u.cn),
                    ("sn", u.cn.split()[-1]),  # the surname: the last word of cn
                    ("userPassword", ssha(u.password)),
                ],
            )
        )
    return "".join(out)


def slapd_conf(
    state_dir: Path, pki: LabPki, admin_password: str, tls: str = "gnutls", build: SlapdBuild = SYSTEM_SLAPD
) -> str:
    """The lab directory's slapd.conf; `tls` is the build's TLS library (tls_library), which decides how
    TLS 1.2 is made the minimum."""
    if tls not in TLS_SETTINGS:
        raise ValueError(f"unknown TLS library {tls!r}; known: {', '.join(sorted(TLS_SETTINGS))}")

    def q(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return f"""# Written by lab/slapd.py: the lab's directory. Not the system slapd's config.
include {build.schema_dir}/core.schema
include {build.schema_dir}/cosine.schema
include {build.schema_dir}/inetorgperson.schema

pidfile {q(state_dir / "slapd.pid")}
argsfile {q(state_dir / "slapd.args")}
modulepath {build.module_path}
moduleload back_mdb
moduleload memberof

TLSCACertificateFile {q(pki.ca_cert)}
TLSCertificateFile {q(pki.server_cert)}
TLSCertificateKeyFile {q(pki.server_key)}
# TLS 1.2 and 1.3 only, as this slapd's TLS library ({tls}) takes it.
{TLS_SETTINGS[tls]}

# Nothing but StartTLS without TLS; simple binds need 128-bit protection.
security tls=1 simple_bind=128
# On purpose (see the module docstring): a DN with an empty password binds as anonymous.
allow bind_anon_dn
sizelimit 500

database mdb
maxsize 67108864
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ssha(admin_password)}
directory {q(state_dir / "data")}
index objectClass eq
index uid,cn,member eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by dn.exact="{SERVICE_ACCOUNT_DN}" read
    by self read
    by * none
"""


def _require(binary: str) -> str:
    if not (os.access(binary, os.X_OK) or shutil.which(binary)):
        raise FileNotFoundError(f"{binary} not found: install the Debian package slapd")
    return binary


@dataclass
class SlapdHandle:
    url_ldap: str  # ldap://host:P, StartTLS
    url_ldaps: str  # ldaps://host:P2
    ca_file: Path
    service: supervisor.Service
    state_dir: Path
    bind_password: str = field(repr=False)  # the service account's
    admin_password: str = field(repr=False)  # the rootdn's: lab writes only
    suffix: str = SUFFIX
    people_dn: str = PEOPLE_DN
    groups_dn: str = GROUPS_DN
    bind_dn: str = SERVICE_ACCOUNT_DN
    admin_dn: str = ADMIN_DN

    def user_dn(self, uid: str) -> str:
        return user_dn(uid)

    def group_dn(self, name: str) -> str:
        return group_dn(name)

    def settings(self, *, ldaps: bool = False, **overrides: Any) -> LdapSettings:
        """LdapSettings for this directory (StartTLS unless ldaps), search mode by default."""
        values: dict[str, Any] = {
            "url": self.url_ldaps if ldaps else self.url_ldap,
            "start_tls": not ldaps,
            "ca_file": self.ca_file,
            "bind_dn": self.bind_dn,
            "bind_password": self.bind_password,
            "user_base_dn": self.people_dn,
            "group_mode": "search",
            "group_base_dn": self.groups_dn,
        }
        values.update(overrides)
        return LdapSettings(**values)

    @contextmanager
    def admin(self) -> Iterator[Connection]:
        """A connection bound as the rootdn over LDAPS."""
        host, port = self.url_ldaps.removeprefix("ldaps://").rsplit(":", 1)
        server = Server(host, port=int(port), use_ssl=True, tls=VerifiedTls(self.ca_file), get_info=NONE)
        conn = Connection(
            server, user=self.admin_dn, password=self.admin_password, authentication=SIMPLE, receive_timeout=10
        )
        try:
            if not conn.bind():
                raise RuntimeError(f"lab slapd: rootdn bind refused: {conn.result.get('description')}")
            conn.password = None
            yield conn
        finally:
            conn.unbind()

    def add_group(self, conn: Connection, name: str, members: list[str]) -> None:
        attrs = {"objectClass": ["groupOfNames"], "cn": name, "member": members or [NOBODY_DN]}
        if not conn.add(group_dn(name), attributes=attrs):
            raise RuntimeError(f"lab slapd: adding group {name}: {conn.result.get('description')}")

    def members(self, conn: Connection, group: str) -> list[str]:
        if not conn.search(group_dn(group), "(objectClass=groupOfNames)", search_scope="BASE", attributes=["member"]):
            raise RuntimeError(f"lab slapd: no group {group}: {conn.result.get('description')}")
        entries = conn.response or []
        return [str(m) for m in entries[0]["attributes"]["member"]] if entries else []

    def remove_from_group(self, uid: str, group: str) -> None:
        """Take a user out of a group, as an admin would: an LDAP modify as the rootdn."""
        dn = user_dn(uid)
        with self.admin() as conn:
            members = self.members(conn, group)
            if [m.lower() for m in members] == [dn.lower()]:  # the last member: keep the group valid
                changes = {"member": [(MODIFY_ADD, [NOBODY_DN]), (MODIFY_DELETE, [dn])]}
            else:
                changes = {"member": [(MODIFY_DELETE, [dn])]}
            if not conn.modify(group_dn(group), changes):
                raise RuntimeError(f"lab slapd: removing {uid} from {group}: {conn.result.get('description')}")

    def add_to_group(self, uid: str, group: str) -> None:
        dn = user_dn(uid)
        with self.admin() as conn:
            changes: dict[str, Any] = {"member": [(MODIFY_ADD, [dn])]}
            if [m.lower() for m in self.members(conn, group)] == [NOBODY_DN.lower()]:
                changes["member"].append((MODIFY_DELETE, [NOBODY_DN]))
            if not conn.modify(group_dn(group), changes):
                raise RuntimeError(f"lab slapd: adding {uid} to {group}: {conn.result.get('description')}")

    def add_user(self, uid: str, password: str, groups: tuple[str, ...] = ()) -> None:
        """A new person, as the seed makes them, then added to `groups`."""
        attrs = {
            "objectClass": ["inetOrgPerson"],
            "uid": uid,
            "cn": f"lab {uid}",
            "sn": uid,
            "userPassword": ssha(password),
        }
        with self.admin() as conn:
            if not conn.add(user_dn(uid), attributes=attrs):
                raise RuntimeError(f"lab slapd: adding {uid}: {conn.result.get('description')}")
        for group in groups:
            self.add_to_group(uid, group)

    def set_password(self, uid: str, password: str) -> None:
        """A password change, as the directory's admin (or the user) makes it."""
        with self.admin() as conn:
            if not conn.modify(user_dn(uid), {"userPassword": [(MODIFY_REPLACE, [ssha(password)])]}):
                raise RuntimeError(f"lab slapd: new password for {uid}: {conn.result.get('description')}")

    def delete_user(self, uid: str, groups: tuple[str, ...] = ()) -> None:
        """Take a person out of `groups`, then delete their entry, as leaving the company does."""
        for group in groups:
            self.remove_from_group(uid, group)
        with self.admin() as conn:
            if not conn.delete(user_dn(uid)):
                raise RuntimeError(f"lab slapd: deleting {uid}: {conn.result.get('description')}")

    def stop(self) -> None:
        supervisor.stop(self.service)


def start_slapd(
    state_dir: Path,
    pki: LabPki,
    seed: Directory,
    name: str = "slapd",
    host: str = "127.0.0.1",
    build: SlapdBuild = SYSTEM_SLAPD,
) -> SlapdHandle:
    """Configure, seed and start a slapd in `state_dir`; returns once it answers over LDAPS.

    slapd listens on 127.0.0.1 only; `host` is the name clients dial (in the URLs), which must be
    in the server certificate. `build` is the slapd to run (default: the machine's)."""
    _require(build.slapd[0])
    _require(build.slapadd[0])
    tls = tls_library(build)
    state_dir.mkdir(parents=True, exist_ok=True)
    data = state_dir / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(mode=0o700)
    admin_password = secrets.token_urlsafe(24)
    service_password = secrets.token_urlsafe(24)
    conf = state_dir / "slapd.conf"
    conf.write_text(slapd_conf(state_dir, pki, admin_password, tls, build))
    conf.chmod(0o600)
    ldif = state_dir / "seed.ldif"
    ldif.write_text(seed_ldif(seed, service_password))
    ldif.chmod(0o600)
    # LDAPNOINIT: libldap inside slapd/slapadd reads no ldap.conf or ~/.ldaprc of the machine or user.
    env = supervisor.clean_env({"LDAPNOINIT": "1"})
    done = subprocess.run(
        [*build.slapadd, "-q", "-f", str(conf), "-l", str(ldif)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"slapadd failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    ports = {"ldap": supervisor.free_port(), "ldaps": supervisor.free_port()}
    urls = f"ldap://127.0.0.1:{ports['ldap']}/ ldaps://127.0.0.1:{ports['ldaps']}/"
    # -d: stay in the foreground and log to stderr (the supervisor's log file); "stats" logs
    # connections, binds (DNs, never passwords) and searches.
    argv = [*build.slapd, "-f", str(conf), "-h", urls, "-d", "stats"]
    service = supervisor.Service(name, argv, str(state_dir / f"{name}.log"), ports, env=env)
    supervisor.start(service, state_dir)
    handle = SlapdHandle(
        url_ldap=f"ldap://{host}:{ports['ldap']}",
        url_ldaps=f"ldaps://{host}:{ports['ldaps']}",
        ca_file=pki.ca_cert,
        service=service,
        state_dir=state_dir,
        bind_password=service_password,
        admin_password=admin_password,
    )
    try:
        supervisor.wait_ready(service, lambda: all(supervisor.port_open(p) for p in ports.values()), timeout=15)
        with handle.admin() as conn:
            for group in seed.all_groups():
                handle.add_group(conn, group, [user_dn(u.uid) for u in seed.users if group in u.groups])
    except BaseException:
        handle.stop()
        raise
    return handle
