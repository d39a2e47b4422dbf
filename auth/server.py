"""The token endpoint, both ways the distribution token spec defines it:

- `GET /auth?service=S&scope=...` with HTTP Basic credentials (docs/spec/auth/token.md): what
  docker, skopeo, podman and distribution's own client ask first;
- `POST /auth`, an OAuth2 form (docs/spec/auth/oauth.md): `grant_type=password` with `username`,
  `password`, `service`, `client_id`, `scope` (and `access_type=offline` for a refresh token), or
  `grant_type=refresh_token` with `refresh_token`. containerd (Kubernetes nodes, nerdctl,
  BuildKit, Docker 29's image store) asks this way first and falls back to GET only on 400, 401,
  404 or 405.

Both take one path: the login name is folded to its account key (auth/identity.py) for the lockout;
the lockout reserves the try before any credential work (auth/lockout.py, auth/shared_lockout.py);
a verified-credential cache answers a repeated login (auth/cache.py), else the backends answer; the
policy grants; one audit line is written. The token's `sub` and the audit line's `account` are the
account's canonical name (the local or robot name, the directory's stored name).

Every decision writes one JSON line to the `registry_fleet.auth.audit` logger:
    {"event": "token", "grant", "account", "login", "client", "client_id", "service", "requested",
     "granted", "outcome", "reason", "jti", "refresh_id"}
with grant one of basic | password | refresh_token, and outcome one of granted | denied |
unauthenticated | locked | bad_request | unavailable. `login` is the name as typed; `account` the
canonical name once known, else the folded key. Passwords and tokens never reach a log.

GET answers: 200 token JSON; 400 bad request (the message says what); 401 wrong credentials (with
a Basic challenge); 429 back-off (Retry-After); 503 an identity backend could not answer (not
counted as a failure). POST answers the same statuses with RFC 6749 error bodies
(`{"error": "invalid_request" | "invalid_grant" | "unsupported_grant_type" | "slow_down" |
"temporarily_unavailable", "error_description": ...}`), except that wrong credentials or a refresh
token that is no longer good are 400 `invalid_grant` (RFC 6749 5.2). A GET without credentials is
anonymous: it gets what the policy grants to anonymous (at most pull; by default nothing).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from auth.cache import CredentialCache
from auth.config import MAX_ACCOUNT_CHARS, ServiceConfig
from auth.identity import Authenticator, BackendUnavailable, Identity, account_key
from auth.local import LocalAuthenticator
from auth.lockout import Attempt, Locked, Lockout
from auth.metrics import TokenMetrics, scrape_allowed
from auth.refresh import InvalidRefreshToken, RefreshTokens
from auth.scopes import Scope, ScopeError, parse_scopes
from auth.tokens import TokenSigner

AUDIT_LOGGER = "registry_fleet.auth.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)
log = logging.getLogger("registry_fleet.auth")

REALM = "registry-fleet"
# A GET takes no body; a POST form holds at most 20 scopes, a name, a password and a refresh token.
MAX_CONTENT_LENGTH = 16 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 64
_AUDIT_TEXT_MAX = 256
_CLIENT_ID = re.compile(r"^[\x20-\x7e]{1,128}$")  # RFC 6749 A.1: VSCHAR


class Refused(Exception):  # noqa: N818 (reads as a sentence: raise Refused)
    """An answer other than a token. `outcome` goes to the audit line; the message is safe to return."""

    def __init__(self, outcome: str, message: str, retry_after: int = 0, reason: str | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.retry_after = retry_after
        self.reason = reason or message  # what the audit line says (may say more than the client hears)

    @property
    def audited(self) -> str:
        return "bad_request" if self.outcome == "unsupported_grant" else self.outcome


def bad_request(message: str) -> Refused:
    return Refused("bad_request", message)


@dataclass
class Decision:
    client: str
    grant: str
    service: str | None = None
    account: str | None = None
    login: str | None = None
    client_id: str | None = None
    requested: list[str] = field(default_factory=list)
    granted: list[str] = field(default_factory=list)
    jti: str | None = None
    refresh_id: str | None = None
    metrics: TokenMetrics | None = field(default=None, repr=False, compare=False)
    started: float = field(default_factory=time.perf_counter, repr=False, compare=False)

    def audit(self, outcome: str, reason: str | None = None) -> None:
        """The decision's audit line, and its count and time in the metrics."""
        if self.metrics is not None:
            self.metrics.decided(self.grant, outcome, time.perf_counter() - self.started)
        audit_log.info(
            json.dumps(
                {
                    "event": "token",
                    "grant": self.grant,
                    "account": _cut(self.account),
                    "login": _cut(self.login),
                    "client": self.client,
                    "client_id": _cut(self.client_id),
                    "service": _cut(self.service),
                    "requested": self.requested,
                    "granted": self.granted,
                    "outcome": outcome,
                    "reason": reason,
                    "jti": self.jti,
                    "refresh_id": self.refresh_id,
                },
                ensure_ascii=True,
            )
        )


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= _AUDIT_TEXT_MAX:
        return text
    return text[:_AUDIT_TEXT_MAX] + "..."


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"errors": [{"code": code, "message": message}]}, headers)


# outcome -> (GET status, GET code, POST status, OAuth2 error)
_REFUSALS = {
    "bad_request": (400, "BAD_REQUEST", 400, "invalid_request"),
    "unsupported_grant": (400, "BAD_REQUEST", 400, "unsupported_grant_type"),
    "unauthenticated": (401, "UNAUTHORIZED", 400, "invalid_grant"),
    "locked": (429, "TOO_MANY_REQUESTS", 429, "slow_down"),
    "unavailable": (503, "UNAVAILABLE", 503, "temporarily_unavailable"),
}


def _refusal(refused: Refused, oauth: bool) -> Response:
    get_status, code, post_status, oauth_error = _REFUSALS[refused.outcome]
    headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else {}
    if oauth:
        return _json(post_status, {"error": oauth_error, "error_description": str(refused)}, headers)
    if refused.outcome == "unauthenticated":
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return _error(get_status, code, str(refused), headers)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` header; None without one. Raises Refused."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise bad_request("only HTTP Basic credentials are accepted by the token endpoint")
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise bad_request("the Basic credentials are not base64 of UTF-8 user:password") from None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise bad_request("the Basic credentials have no user name")
    check_user_name(user)
    return user, password


def check_user_name(user: str) -> None:
    if len(user) > MAX_ACCOUNT_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in user):
        raise bad_request(f"the user name is longer than {MAX_ACCOUNT_CHARS} characters or holds control characters")


def client_address(remote: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """The client's address: the peer; or, when the peer is a trusted proxy, the right-most address
    in X-Forwarded-For that is not a trusted proxy (our proxies append on the right; whatever is
    further left the client wrote itself). When every hop is trusted, the right-most one: what our
    own proxy saw. A garbled hop where the walk stops means the peer."""
    networks = [ipaddress.ip_network(c) for c in trusted]

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in networks)

    peer = remote or ""
    if not networks or not is_trusted(peer) or not forwarded_for:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a forged or garbled hop: fall back to what we know
    return str(ipaddress.ip_address(hops[-1])) if hops else peer


def _single(values: list[str], name: str) -> str | None:
    if len(values) > 1:
        raise bad_request(f"{name} is given {len(values)} times")
    return values[0] if values else None


def create_app(
    config: ServiceConfig,
    authenticators: Sequence[Authenticator],
    now: Callable[[], float] = time.time,
) -> Flask:
    signer = TokenSigner.load(
        config.signing_key, config.signing_cert, config.issuer, config.token_lifetime_seconds, now()
    )
    metrics = TokenMetrics()
    metrics.signing_cert_expires(signer.chain[0].not_valid_after_utc.timestamp())
    lockout = make_lockout(config, signer, now, metrics)
    cached = config.credential_cache
    cache = CredentialCache(cached.ttl_seconds, cached.directory_ttl_seconds, cached.max_entries, now=now)
    refresh = RefreshTokens(signer.private_key, config.issuer, config.service, config.refresh_tokens)
    endpoint = TokenEndpoint(config, authenticators, signer, lockout, refresh, now, cache, metrics)

    app = Flask("registry_fleet.auth")
    app.config["MAX_CONTENT_LENGTH"] = MAX_CONTENT_LENGTH
    app.extensions["registry_fleet.lockout"] = lockout
    app.extensions["registry_fleet.signer"] = signer
    app.extensions["registry_fleet.cache"] = cache
    app.extensions["registry_fleet.metrics"] = metrics

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        code = (err.name or "error").upper().replace(" ", "_")
        return _error(err.code or 500, code, err.description or err.name)

    @app.before_request
    def refuse_bodies() -> Response | None:
        has_body = request.content_length or "transfer-encoding" in request.headers
        if has_body and request.method != "POST":
            return _error(413, "BODY_NOT_ALLOWED", "this request takes no body")
        return None

    @app.get("/healthz")
    def healthz() -> Response:
        # Still 200 when the lockout counts in this process only: tokens are still issued (its log says so).
        return _json(
            200,
            {
                "status": "ok",
                "lockout": lockout.status(),
                "credential_cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses},
            },
        )

    @app.get("/metrics")
    def metrics_page() -> Response:
        # For the host's own CloudWatch agent only (auth/metrics.py): a loopback peer no proxy forwarded.
        if not scrape_allowed(request.remote_addr, "X-Forwarded-For" in request.headers):
            return _error(404, "NOT_FOUND", "The requested URL was not found on the server.")
        body, content_type = metrics.exposition()
        return Response(body, status=200, content_type=content_type)

    @app.get("/auth")
    def token() -> Response:
        return endpoint.basic()

    @app.post("/auth")
    def oauth_token() -> Response:
        return endpoint.oauth()

    return app


def make_lockout(
    config: ServiceConfig, signer: TokenSigner, now: Callable[[], float], metrics: TokenMetrics | None = None
) -> Lockout:
    """The lockout: shared by the fleet in DynamoDB when the config names a table, else this process's."""
    lock = config.lockout
    rules: dict[str, Any] = {
        "threshold": lock.threshold,
        "window": lock.window_seconds,
        "max_lock": lock.max_lock_seconds,
        "max_entries": lock.max_entries,
        "max_accounts": lock.max_accounts_per_client,
        "now": now,
    }
    if lock.table is None or lock.region is None:
        return Lockout(**rules)
    from cryptography.hazmat.primitives import serialization

    from auth.shared_lockout import DynamoStore, SharedLockout, derive_key

    der = signer.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    store = DynamoStore(lock.table, lock.region, lock.endpoint_url)
    return SharedLockout(store, derive_key(der), metrics=metrics, **rules)


class TokenEndpoint:
    """The decisions behind both routes; each method answers one request."""

    def __init__(
        self,
        config: ServiceConfig,
        authenticators: Sequence[Authenticator],
        signer: TokenSigner,
        lockout: Lockout,
        refresh: RefreshTokens,
        now: Callable[[], float],
        cache: CredentialCache | None = None,
        metrics: TokenMetrics | None = None,
    ) -> None:
        self.cache = cache if cache is not None else CredentialCache(ttl=0)
        self.metrics = metrics
        self.config = config
        self.authenticators = authenticators
        self.signer = signer
        self.lockout = lockout
        self.refresh = refresh
        self.now = now

    def _client(self) -> str:
        return client_address(request.remote_addr, request.headers.get("X-Forwarded-For"), self.config.trusted_proxies)

    # -- GET: the Basic flow ------------------------------------------------------------------------

    def basic(self) -> Response:
        decision = Decision(client=self._client(), grant="basic", metrics=self.metrics)
        try:
            raw_scopes = request.args.getlist("scope")
            self._note_requested(decision, raw_scopes)
            credentials = basic_credentials(request.headers.get("Authorization"))
            if credentials is not None:
                decision.login = decision.account = credentials[0]
            self._service(decision, _single(request.args.getlist("service"), "service"))
            scopes = self._check_scopes(decision, raw_scopes)
            account = _single(request.args.getlist("account"), "account")
            if account is not None and (credentials is None or account != credentials[0]):
                raise bad_request("account must be the user of the Basic credentials")
            identity = self._login(decision, *credentials) if credentials is not None else None
        except Refused as refused:
            decision.audit(refused.audited, refused.reason)
            return _refusal(refused, oauth=False)
        return self._grant(decision, identity, scopes, oauth=False)

    # -- POST: OAuth2 ------------------------------------------------------------------------------

    def oauth(self) -> Response:
        decision = Decision(client=self._client(), grant="unknown", metrics=self.metrics)
        try:
            form = self._form()

            def one(name: str) -> str | None:
                return _single(form.get(name, []), name)

            grant = one("grant_type")
            decision.grant = grant if grant in ("password", "refresh_token") else "unknown"
            raw_scopes = form.get("scope", [])
            self._note_requested(decision, raw_scopes)
            username = one("username")
            if username is not None and grant == "password":
                decision.login = decision.account = username
            self._service(decision, one("service"))
            client_id = one("client_id")
            decision.client_id = client_id
            if client_id is None:
                raise bad_request("client_id is required (any name for the client, e.g. containerd-client)")
            if not _CLIENT_ID.match(client_id):
                raise bad_request("client_id must be 1 to 128 printable ASCII characters")
            access_type = one("access_type") or "online"
            if access_type not in ("online", "offline"):
                raise bad_request(f"access_type {_cut(access_type)!r}: online or offline")
            scopes = self._check_scopes(decision, raw_scopes)
            refresh_token: str | None = None
            if grant == "password":
                password = one("password")
                if not username or password is None:
                    raise bad_request("grant_type password needs username and password")
                check_user_name(username)
                identity = self._login(decision, username, password)
                if access_type == "offline" and self.refresh.settings.enabled:
                    issued = self.refresh.issue(identity, client_id, self.now())
                    decision.refresh_id, refresh_token = issued.token_id, issued.token
            elif grant == "refresh_token":
                token = one("refresh_token")
                if not token:
                    raise bad_request("grant_type refresh_token needs refresh_token")
                identity = self._refreshed(decision, token, client_id)
                refresh_token = token  # the spec: the refresh grant answers with the same refresh token
            elif grant is None:
                raise bad_request("grant_type is required: password or refresh_token")
            else:
                raise Refused("unsupported_grant", f"grant_type {_cut(grant)!r}: only password and refresh_token")
        except Refused as refused:
            decision.audit(refused.audited, refused.reason)
            return _refusal(refused, oauth=True)
        return self._grant(decision, identity, scopes, oauth=True, refresh_token=refresh_token)

    def _form(self) -> dict[str, list[str]]:
        if request.headers.get("Authorization"):
            raise bad_request("the OAuth2 form carries the credentials: send no Authorization header")
        if request.mimetype != FORM_TYPE:
            raise bad_request(f"the body must be {FORM_TYPE}, not {_cut(request.mimetype) or 'empty'}")
        if request.mimetype_params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
            raise bad_request("the form must be UTF-8")
        try:
            body = request.get_data(cache=False).decode("utf-8")
            return urllib.parse.parse_qs(body, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS)
        except UnicodeDecodeError:
            raise bad_request("the form is not UTF-8") from None
        except ValueError:
            raise bad_request(f"the form has more than {MAX_FIELDS} fields") from None

    # -- shared steps -------------------------------------------------------------------------------

    def _note_requested(self, decision: Decision, raw: list[str]) -> None:
        """What the audit line shows as requested if the request fails before its scopes parse."""
        decision.requested = [_cut(s) or "" for s in raw[: self.config.max_scopes]]

    def _service(self, decision: Decision, service: str | None) -> None:
        decision.service = service
        if service is None:
            raise bad_request("service is required")
        if service != self.config.service:
            raise bad_request(f"unknown service {_cut(service)!r}")

    def _check_scopes(self, decision: Decision, raw: list[str]) -> list[Scope]:
        limit = self.config.max_scopes
        if len(raw) > limit:
            raise bad_request(f"{len(raw)} scope parameters; at most {limit}")
        try:
            scopes = parse_scopes(raw)
        except ScopeError as err:
            raise bad_request(str(err)) from None
        if len(scopes) > limit:
            raise bad_request(f"{len(scopes)} scopes; at most {limit}")
        decision.requested = [str(s) for s in scopes]
        return scopes

    def _login(self, decision: Decision, user: str, password: str) -> Identity:
        """Check a name and secret under the lockout; the identity, or Refused."""
        key = account_key(user)
        decision.account = key or user
        try:
            with self.lockout.attempt(key or user, decision.client) as attempt:
                # Keyed by the account and the login as typed: another spelling is checked by the
                # backends (which refuse spellings that are not the account's) before it is remembered.
                identity = self.cache.get(key, user, password)
                if identity is None:
                    identity = self._verify(key, user, password, attempt)
                elif self.metrics is not None:
                    self.metrics.cache_lookup(hit=True)
                attempt.success()
        except Locked as locked:
            self.cache.forget(key)  # failures (perhaps on another host) locked it
            if locked.busy:
                what = "too many logins in flight"
            elif locked.client:
                what = "too many failed logins from this address"
            else:
                what = "too many failed logins"
            raise Refused("locked", f"{what}; retry in {locked.retry_after}s", locked.retry_after) from None
        decision.account = identity.name
        return identity

    def _verify(self, key: str, user: str, password: str, attempt: Attempt) -> Identity:
        """Ask the backends (one request at a time per login and secret: a burst of the same login
        waits for the first check and is then served from the cache); the identity, or Refused."""
        with self.cache.single_flight(key, user, password):
            identity = self.cache.get(key, user, password)
            if self.metrics is not None:
                self.metrics.cache_lookup(hit=identity is not None)
            if identity is not None:
                return identity
            try:
                identity = _authenticate(self.authenticators, user, password)
            except BackendUnavailable as err:
                self._backend_unavailable(err)
            if identity is not None and account_key(identity.name) != key:
                # Backends refuse other spellings themselves; never let one through under another name.
                log.error("backend returned %r for the login %r: refused", identity.name, user)
                identity = None
            if identity is None:
                self.cache.forget(key)
                locked_for = attempt.failure(password)
                reason = "wrong credentials" + (f"; locked for {locked_for}s" if locked_for else "")
                raise Refused("unauthenticated", "authentication failed", reason=reason)
            self.cache.put(key, user, password, identity)
            return identity

    def _backend_unavailable(self, err: BackendUnavailable) -> NoReturn:
        """Only the directory raises it (local users and robots are in memory)."""
        log.error("identity backend unavailable: %s", err)
        if self.metrics is not None:
            self.metrics.directory_error()
        raise Refused("unavailable", "the identity backend is unavailable; try again later") from None

    def _refreshed(self, decision: Decision, token: str, client_id: str) -> Identity:
        """The account a refresh token stands for, as it is now; or Refused."""
        try:
            claims = self.refresh.verify(token, client_id, self.now())
        except InvalidRefreshToken as err:
            raise Refused("unauthenticated", str(err)) from None
        decision.account = claims.subject
        decision.refresh_id = claims.token_id
        wait = self.lockout.retry_after(account_key(claims.subject), decision.client)
        if wait:
            raise Refused("locked", f"too many failed logins; retry in {wait}s", wait)
        try:
            identity = _lookup(self.authenticators, claims.subject, claims.kind)
        except BackendUnavailable as err:
            self._backend_unavailable(err)
        if identity is None:
            raise Refused("unauthenticated", "the account of this refresh token is gone or disabled; log in again")
        if identity.credential != claims.credential:
            raise Refused("unauthenticated", "the account's password or token changed since; log in again")
        decision.account = identity.name
        return identity

    def _grant(
        self,
        decision: Decision,
        identity: Identity | None,
        scopes: list[Scope],
        oauth: bool,
        refresh_token: str | None = None,
    ) -> Response:
        granted: list[Scope] = []
        for scope in scopes:
            allowed = self.config.policy.allowed(identity, scope, decision.client)
            actions = tuple(a for a in scope.actions if a in allowed)
            if actions:
                granted.append(scope.with_actions(actions))
        minted = self.signer.mint(identity.name if identity else "", self.config.service, granted, self.now())
        decision.granted = [str(s) for s in granted]
        decision.jti = minted.jti
        decision.audit("denied" if scopes and not granted else "granted")
        issued = datetime.datetime.fromtimestamp(minted.issued_at, datetime.UTC)
        body: dict[str, Any] = {
            "token": minted.token,
            "access_token": minted.token,
            "expires_in": minted.expires_in,
            "issued_at": issued.isoformat().replace("+00:00", "Z"),
        }
        if oauth:
            body["scope"] = " ".join(decision.granted)
            if refresh_token is not None:
                body["refresh_token"] = refresh_token
        return _json(200, body)


def _authenticate(authenticators: Sequence[Authenticator], user: str, password: str) -> Identity | None:
    """The first backend that knows the account and its secret wins. If none does and one could not
    answer, that is BackendUnavailable (a failure we cannot blame on the client)."""
    unavailable: BackendUnavailable | None = None
    for backend in authenticators:
        try:
            identity = backend.authenticate(user, password)
        except BackendUnavailable as err:
            unavailable = err
            continue
        if identity is not None:
            if identity.kind != "robot" and _robot_name(authenticators, user, identity.name):
                log.warning("%s %r refused: the name of a robot signs in with the robot's token only",
                            identity.kind, identity.name)  # fmt: skip
                return None
            return identity
    if unavailable is not None:
        raise unavailable
    return None


def _robot_name(authenticators: Sequence[Authenticator], *names: str) -> bool:
    """True when any of `names` is a robot's name (any spelling): a token's `sub` that names a robot is always
    that robot (the gates serve the scanner's robot unchecked), never a user or a directory account."""
    return any(isinstance(b, LocalAuthenticator) and b.is_robot_name(n) for b in authenticators for n in names)


def _lookup(authenticators: Sequence[Authenticator], name: str, kind: str) -> Identity | None:
    """The account of that name and kind as its backend has it now."""
    unavailable: BackendUnavailable | None = None
    for backend in authenticators:
        try:
            identity = backend.lookup(name)
        except BackendUnavailable as err:
            unavailable = err
            continue
        if identity is not None and identity.kind == kind:
            if kind != "robot" and _robot_name(authenticators, name, identity.name):
                return None
            return identity
    if unavailable is not None:
        raise unavailable
    return None
