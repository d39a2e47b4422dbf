"""LDAP / Active Directory identities: find the user as a read-only service account, then bind as them.

The flow for every `authenticate(username, password)`:

1. refuse what must never reach the directory: an empty password (an LDAP simple bind with a DN and
   no password is an *unauthenticated* bind, which many servers, Active Directory included, answer
   with success), a password that SASLprep reduces to nothing or refuses, a username that is empty,
   too long or holds control characters;
2. bind as the service account (`bind_dn`); a refused bind means the directory cannot answer for
   anyone, so it raises :class:`BackendUnavailable`, never returns None;
3. search `user_base_dn` with `user_filter`, the username escaped with
   `ldap3.utils.conv.escape_filter_chars` so `*`, `(`, `)`, `\\` and NUL stay literal; exactly one
   entry, else None; the entry's stored name (`username_attribute`; with several values, the least
   one) is the account's canonical name, and a login whose `account_key` is not that name's key is
   refused (the server folds what it compares; a spelling it maps elsewhere never gets a counter of
   its own);
4. bind as that entry's DN with the password, on a new connection (invalidCredentials -> None).
   When step 3 found no usable entry, the same connect, TLS handshake and bind happen against a
   fixed DN that does not exist, so unknown and known accounts cost the directory, and the
   client, the same work (no timing oracle for which accounts exist);
5. groups: the `memberOf` values of the user entry (the RDN of each DN, kept only under
   `group_base_dn` when set) or a search under `group_base_dn` with `group_filter`, the user's DN
   escaped the same way.

Every connection is TLS (LDAPS or StartTLS; plain LDAP is refused when settings are validated) and
verifies the server against `ca_file` only, with the host name checked by OpenSSL and TLS 1.2 at
least. No password appears in a log line, an exception message or a repr.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import socket
import ssl
import unicodedata
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ldap3 import NONE, SIMPLE, SUBTREE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
from ldap3.operation.search import parse_filter
from ldap3.protocol.sasl.sasl import validate_simple_password
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.alias_generators import to_camel

from auth.identity import BackendUnavailable, Identity, account_key

log = logging.getLogger(__name__)

DEFAULT_USER_FILTER = "(&(objectClass=inetOrgPerson)(uid={username}))"
# Active Directory: disabled accounts (userAccountControl bit 2) match no entry, so their refresh
# tokens stop working at once (their binds fail anyway).
AD_USER_FILTER = "(&(objectClass=user)(sAMAccountName={username})(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
DEFAULT_GROUP_FILTER = "(&(objectClass=groupOfNames)(member={user_dn}))"
AD_GROUP_FILTER = "(&(objectClass=group)(member={user_dn}))"
MAX_USERNAME_LENGTH = 256
GROUP_PAGE_SIZE = 500

# LDAP result codes (RFC 4511) this module tells apart.
SUCCESS = 0
SIZE_LIMIT_EXCEEDED = 4
# A bind as the user that ends with one of these is "no" (wrong password, locked, disabled,
# unauthenticated bind refused); anything else (busy, unavailable, confidentialityRequired...) is
# "cannot tell".
_USER_BIND_REFUSALS = {
    48,  # inappropriateAuthentication
    49,  # invalidCredentials (AD adds a data code for expired, locked, disabled)
    50,  # insufficientAccessRights
    53,  # unwillingToPerform (e.g. a password policy lock)
}

_ATTRIBUTE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*|\d+(\.\d+)+)$")
_DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}


def _problem(message: str) -> ValueError:
    return ValueError(message)


class LdapSettings(BaseModel):
    """Where the directory is and how to read it. camelCase in stack config, snake_case in code."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    url: str  # ldaps://host:port, or ldap://host:port with start_tls
    start_tls: bool = False
    ca_file: Path  # the only CA trusted for the directory's certificate
    bind_dn: str  # the read-only service account
    bind_password: SecretStr = Field(min_length=1, repr=False)
    user_base_dn: str
    user_filter: str = DEFAULT_USER_FILTER
    username_attribute: str = "uid"  # AD: sAMAccountName
    group_mode: Literal["memberOf", "search"] = "search"
    group_base_dn: str | None = None  # required for "search"; with "memberOf", keeps only groups under it
    group_filter: str = DEFAULT_GROUP_FILTER
    group_name_attribute: str = "cn"
    timeout_seconds: int = Field(default=5, ge=1, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urllib.parse.urlsplit(v)
        if parts.scheme not in _DEFAULT_PORTS:
            raise _problem(f"url {v!r}: the scheme must be ldaps:// or ldap:// (with start_tls)")
        try:
            port = parts.port
        except ValueError as exc:
            raise _problem(f"url {v!r}: bad port") from exc
        if not parts.hostname or parts.username or parts.password:
            raise _problem(f"url {v!r}: must be scheme://host[:port], without credentials")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _problem(f"url {v!r}: no DN, attributes or filter in the URL: use the *_base_dn and *_filter keys")
        if port == 0:
            raise _problem(f"url {v!r}: bad port")
        return v

    @field_validator("bind_dn", "user_base_dn", "group_base_dn")
    @classmethod
    def _dn(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            if not parse_dn(v):
                raise LDAPInvalidDnError(v)
        except LDAPInvalidDnError as exc:
            raise _problem(f"{v!r} is not a distinguished name") from exc
        return v

    @field_validator("username_attribute", "group_name_attribute")
    @classmethod
    def _attribute(cls, v: str) -> str:
        if not _ATTRIBUTE.match(v):
            raise _problem(f"{v!r} is not an attribute name")
        return v

    @field_validator("user_filter")
    @classmethod
    def _user_filter(cls, v: str) -> str:
        return _template(v, "{username}")

    @field_validator("group_filter")
    @classmethod
    def _group_filter(cls, v: str) -> str:
        return _template(v, "{user_dn}")

    @model_validator(mode="after")
    def _transport_and_groups(self) -> LdapSettings:
        scheme = self.url.split(":", 1)[0]
        if scheme == "ldap" and not self.start_tls:
            raise _problem(
                f"url {self.url!r} with start_tls false is plain LDAP: the bind passwords would cross the network "
                "in clear. Use ldaps://, or ldap:// with start_tls: true"
            )
        if scheme == "ldaps" and self.start_tls:
            raise _problem(f"url {self.url!r} is already TLS: start_tls applies to ldap:// only")
        if self.group_mode == "search" and not self.group_base_dn:
            raise _problem("group_mode 'search' needs group_base_dn")
        return self

    @property
    def host(self) -> str:
        return str(urllib.parse.urlsplit(self.url).hostname)

    @property
    def port(self) -> int:
        parts = urllib.parse.urlsplit(self.url)
        return parts.port or _DEFAULT_PORTS[parts.scheme]

    @property
    def use_ssl(self) -> bool:
        return self.url.startswith("ldaps:")


def _template(v: str, placeholder: str) -> str:
    """A filter with one kind of placeholder, which must parse once a value is put in."""
    if placeholder not in v:
        raise _problem(f"filter {v!r} must contain {placeholder}")
    sample = v.replace(placeholder, "x")
    if "{" in sample or "}" in sample:
        raise _problem(f"filter {v!r}: the only placeholder allowed is {placeholder}")
    try:
        parse_filter(sample, None, False, False, None, False)
    except Exception as exc:  # ldap3 raises several types, some with a broken __str__
        raise _problem(f"filter {v!r} is not a valid LDAP filter") from exc
    return v


class VerifiedTls(Tls):
    """ldap3's Tls with the checks done by OpenSSL: the CA file only, the host name (DNS or IP
    SAN), TLS 1.2 at least. ldap3's own host check calls `ssl.match_hostname`, deprecated in 3.11,
    gone in 3.12, where its fallback refuses IP addresses."""

    def __init__(self, ca_file: Path) -> None:
        if not Path(ca_file).is_file():
            raise ValueError(f"ca_file {str(ca_file)!r} does not exist")
        super().__init__(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT, ca_certs_file=str(ca_file))
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context

    def wrap_socket(self, connection: Connection, do_handshake: bool = False) -> None:
        # The TLS handshake's last flight and the bind leave as two small writes: with Nagle on, the
        # bind waits for the server's delayed ACK (40 ms on Linux, up to 200 ms on Windows servers).
        with contextlib.suppress(OSError):
            connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.socket = self.context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


def acceptable_username(username: str) -> bool:
    if not username or len(username) > MAX_USERNAME_LENGTH:
        return False
    # Cc: control characters (NUL, CR, LF...); Cf: invisible format characters; Cs: lone surrogates.
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in username)


def acceptable_password(password: str) -> bool:
    """False for a password the server could treat as "no password" or that SASLprep refuses."""
    if not password:
        return False
    try:
        prepared = validate_simple_password(password)
    except LDAPException:
        return False
    return bool(prepared)


def _values(attributes: Any, name: str) -> list[str]:
    value = attributes.get(name) if attributes else None
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _unescape(value: str) -> str:
    """An RDN value as parse_dn returns it (still escaped, RFC 4514) to the plain string."""
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and re.fullmatch(r"[0-9A-Fa-f]{2}", value[i + 1 : i + 3]):
            out += bytes.fromhex(value[i + 1 : i + 3])
            i += 3
        elif ch == "\\" and i + 1 < len(value):
            out += value[i + 1].encode()
            i += 2
        else:
            out += ch.encode()
            i += 1
    return out.decode("utf-8", errors="replace")


def _close(conn: Connection) -> None:
    """Unbind and close; a connection that already failed may not even have a socket left."""
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()


def _dn_key(dn: str) -> list[tuple[str, str]]:
    return [(attr.lower(), _unescape(value).lower()) for attr, value, _ in parse_dn(dn)]


class LdapDirectory:
    """An :class:`auth.identity.Authenticator` over LDAP or Active Directory."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self._tls = VerifiedTls(settings.ca_file)
        self._group_base = _dn_key(settings.group_base_dn) if settings.group_base_dn else None
        # The bind an unknown account gets instead of its own: a DN no entry has, a password nobody knows.
        absent = f"registry-fleet-absent-{secrets.token_hex(8)}"
        self._absent_dn = f"{settings.username_attribute}={absent},{settings.user_base_dn}"
        self._absent_password = secrets.token_urlsafe(24)

    def __repr__(self) -> str:
        return f"LdapDirectory(url={self.settings.url!r}, bind_dn={self.settings.bind_dn!r})"

    # -- the Authenticator interface ----------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> Identity | None:
        if not acceptable_username(username):
            log.info("ldap: refused a malformed username (%d characters)", len(username))
            return None
        if not acceptable_password(password):
            log.info("ldap: refused an empty or unusable password for %r", username)
            return None
        s = self.settings
        with self._bound(s.bind_dn, s.bind_password.get_secret_value(), "service account bind") as service:
            account = self._account(service, username)
            if account is None:
                self._user_password_ok(self._absent_dn, self._absent_password)  # the same work as a known account
                return None
            user_dn, attributes, name = account
            if not self._user_password_ok(user_dn, password):
                log.info("ldap: wrong password for %r", name)
                return None
            groups = self._groups(service, user_dn, attributes)
        log.info("ldap: authenticated %r (%d groups)", name, len(groups))
        return Identity(name=name, kind="directory", groups=frozenset(groups))

    def lookup(self, name: str) -> Identity | None:
        """The account as the directory has it now (groups re-read), without a bind as the user:
        None when no entry matches `user_filter` any more (deleted, or disabled where the filter
        excludes disabled accounts, as AD_USER_FILTER does)."""
        if not acceptable_username(name):
            return None
        s = self.settings
        with self._bound(s.bind_dn, s.bind_password.get_secret_value(), "service account bind") as service:
            account = self._account(service, name)
            if account is None:
                return None
            user_dn, attributes, stored = account
            groups = self._groups(service, user_dn, attributes)
        return Identity(name=stored, kind="directory", groups=frozenset(groups))

    def _account(self, conn: Connection, username: str) -> tuple[str, Any, str] | None:
        """(DN, attributes, canonical name) of the one entry the login names, or None."""
        found = self._find_user(conn, username)
        name = self._name(found[1], username) if found else None
        if found is None or name is None:
            return None
        return found[0], found[1], name

    def _groups(self, conn: Connection, user_dn: str, attributes: Any) -> set[str]:
        if self.settings.group_mode == "memberOf":
            return self._groups_from_member_of(_values(attributes, "memberOf"))
        return self._search_groups(conn, user_dn)

    # -- connections ----------------------------------------------------------------------------

    def _unavailable(self, what: str, detail: str, *secrets: str) -> BackendUnavailable:
        for secret in (self.settings.bind_password.get_secret_value(), *secrets):
            if secret:
                detail = detail.replace(secret, "***")
        return BackendUnavailable(f"LDAP directory {self.settings.url}: {what} failed: {detail}")

    def _open(self) -> Connection:
        """A connection with TLS up (LDAPS, or StartTLS before anything else), not yet bound."""
        s = self.settings
        server = Server(
            s.host, port=s.port, use_ssl=s.use_ssl, tls=self._tls, get_info=NONE, connect_timeout=s.timeout_seconds
        )
        conn = Connection(
            server,
            authentication=SIMPLE,
            client_strategy=SYNC,
            read_only=True,
            raise_exceptions=False,
            auto_referrals=False,
            receive_timeout=s.timeout_seconds,
        )
        try:
            conn.open()
            tls_up = conn.start_tls() if s.start_tls else True
        except LDAPException as exc:
            _close(conn)
            raise self._unavailable("connect", f"{type(exc).__name__}: {exc}") from exc
        if not tls_up:
            _close(conn)
            raise self._unavailable("StartTLS", f"{conn.result.get('description')}")
        return conn

    def _bind(self, conn: Connection, dn: str, password: str) -> dict[str, Any]:
        """Simple bind on an open connection; returns the LDAP result. The password is not kept on
        the connection afterwards (ldap3's Connection repr would print it)."""
        conn.user = dn
        conn.password = password
        try:
            conn.bind()
        except LDAPException as exc:
            raise self._unavailable("bind", f"{type(exc).__name__}: {exc}", password) from exc
        finally:
            conn.password = None
        return dict(conn.result)

    @contextmanager
    def _bound(self, dn: str, password: str, what: str) -> Iterator[Connection]:
        conn = self._open()
        try:
            result = self._bind(conn, dn, password)
            if result.get("result") != SUCCESS:
                raise self._unavailable(what, f"{result.get('description')} ({result.get('result')}) for {dn}")
            yield conn
        finally:
            _close(conn)

    def _user_password_ok(self, user_dn: str, password: str) -> bool:
        conn = self._open()
        try:
            result = self._bind(conn, user_dn, password)
        finally:
            _close(conn)
        code = result.get("result")
        if code == SUCCESS:
            return True
        if code in _USER_BIND_REFUSALS:
            return False
        raise self._unavailable("user bind", f"{result.get('description')} ({code})", password)

    # -- searches -------------------------------------------------------------------------------

    def _search(self, conn: Connection, what: str, base: str, filter_: str, attributes: list[str], **kw: Any) -> None:
        try:
            conn.search(base, filter_, search_scope=SUBTREE, attributes=attributes, **kw)
        except LDAPException as exc:
            raise self._unavailable(what, f"{type(exc).__name__}: {exc}") from exc

    def _find_user(self, conn: Connection, username: str) -> tuple[str, Any] | None:
        s = self.settings
        filter_ = s.user_filter.replace("{username}", escape_filter_chars(username))
        attributes = [s.username_attribute] + (["memberOf"] if s.group_mode == "memberOf" else [])
        # Two are enough to know "not exactly one" without reading the directory.
        self._search(
            conn, "user search", s.user_base_dn, filter_, attributes, size_limit=2, time_limit=s.timeout_seconds
        )
        code = conn.result.get("result")
        if code == SIZE_LIMIT_EXCEEDED:
            log.warning("ldap: more than one entry matches %r: refused", username)
            return None
        if code != SUCCESS:
            raise self._unavailable("user search", f"{conn.result.get('description')} ({code})")
        entries = [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]
        if len(entries) != 1:
            if entries:
                log.warning("ldap: %d entries match %r: refused", len(entries), username)
            else:
                log.info("ldap: no entry for %r", username)
            return None
        return str(entries[0]["dn"]), entries[0].get("attributes")

    def _name(self, attributes: Any, username: str) -> str | None:
        """The account's canonical name: the stored value (the least, if there are several), when
        the login names it (same `account_key`); else None, and the login is refused."""
        values = sorted(v for v in _values(attributes, self.settings.username_attribute) if account_key(v))
        if not values:
            log.warning("ldap: the entry for %r has no usable %s value", username, self.settings.username_attribute)
            return None
        canonical = min(values, key=lambda v: (account_key(v), v))
        if account_key(canonical) != account_key(username):
            log.warning("ldap: %r is not a spelling of the account %r: refused", username, canonical)
            return None
        return canonical

    def _groups_from_member_of(self, dns: list[str]) -> set[str]:
        wanted = self.settings.group_name_attribute.lower()
        groups = set()
        for dn in dns:
            try:
                key = _dn_key(dn)
                attr, value, _ = parse_dn(dn)[0]
            except (LDAPInvalidDnError, IndexError):
                log.warning("ldap: skipped an unparsable memberOf value %r", dn)
                continue
            base = self._group_base
            if base is not None and (len(key) <= len(base) or key[-len(base) :] != base):
                continue  # a group outside group_base_dn grants nothing
            if attr.lower() == wanted:
                groups.add(_unescape(value))
        return groups

    def _search_groups(self, conn: Connection, user_dn: str) -> set[str]:
        s = self.settings
        assert s.group_base_dn is not None  # enforced by LdapSettings
        filter_ = s.group_filter.replace("{user_dn}", escape_filter_chars(user_dn))
        groups: set[str] = set()
        cookie: bytes | None = None
        while True:
            self._search(
                conn,
                "group search",
                s.group_base_dn,
                filter_,
                [s.group_name_attribute],
                paged_size=GROUP_PAGE_SIZE,
                paged_cookie=cookie,
                time_limit=s.timeout_seconds,
            )
            code = conn.result.get("result")
            if code != SUCCESS:
                raise self._unavailable("group search", f"{conn.result.get('description')} ({code})")
            for r in conn.response or []:
                if r.get("type") == "searchResEntry":
                    groups.update(_values(r.get("attributes"), s.group_name_attribute))
            control = (conn.result.get("controls") or {}).get("1.2.840.113556.1.4.319", {})
            cookie = control.get("value", {}).get("cookie") or None
            if not cookie:
                return groups
