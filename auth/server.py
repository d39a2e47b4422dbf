"""The token endpoint: `GET /auth?service=S&scope=...` with HTTP Basic credentials -> a registry JWT.

Every decision writes one JSON line to the `registry_fleet.auth.audit` logger:
    {"event": "token", "account", "client", "service", "requested", "granted", "outcome", "reason", "jti"}
with outcome one of granted | denied | unauthenticated | locked | bad_request | unavailable. Passwords
and tokens never reach a log.

Answers: 200 token JSON; 400 bad request (the message says what); 401 wrong credentials (with a
Basic challenge); 429 back-off (Retry-After); 503 an identity backend could not answer (not counted
as a failure). A request without credentials is anonymous: it gets what the policy grants to
anonymous (at most pull; by default nothing) in an otherwise ordinary token.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from auth.config import MAX_ACCOUNT_CHARS, ServiceConfig
from auth.identity import Authenticator, BackendUnavailable, Identity
from auth.lockout import Lockout
from auth.scopes import Scope, ScopeError, parse_scopes
from auth.tokens import TokenSigner

AUDIT_LOGGER = "registry_fleet.auth.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)
log = logging.getLogger("registry_fleet.auth")

REALM = "registry-fleet"
MAX_CONTENT_LENGTH = 1024  # the endpoint takes no body at all; this bounds what Flask would ever read
_AUDIT_TEXT_MAX = 256


class BadRequest(Exception):  # noqa: N818 (reads as a sentence)
    """A request the service refuses to consider; the message is safe to return."""


@dataclass
class Decision:
    client: str
    service: str | None = None
    account: str | None = None
    requested: list[str] = field(default_factory=list)
    granted: list[str] = field(default_factory=list)
    jti: str | None = None

    def audit(self, outcome: str, reason: str | None = None) -> None:
        audit_log.info(
            json.dumps(
                {
                    "event": "token",
                    "account": _cut(self.account),
                    "client": self.client,
                    "service": _cut(self.service),
                    "requested": self.requested,
                    "granted": self.granted,
                    "outcome": outcome,
                    "reason": reason,
                    "jti": self.jti,
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
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"errors": [{"code": code, "message": message}]}, headers)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` header; None without one. Raises BadRequest."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise BadRequest("only HTTP Basic credentials are accepted by the token endpoint")
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadRequest("the Basic credentials are not base64 of UTF-8 user:password") from None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise BadRequest("the Basic credentials have no user name")
    if len(user) > MAX_ACCOUNT_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in user):
        raise BadRequest(f"the user name is longer than {MAX_ACCOUNT_CHARS} characters or holds control characters")
    return user, password


def client_address(remote: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest address in
    X-Forwarded-For that is not a trusted proxy (the right-most ones are the ones our proxies added)."""
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
    return hops[0] if hops else peer


def _one(name: str) -> str | None:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} is given {len(values)} times")
    return values[0] if values else None


def create_app(
    config: ServiceConfig,
    authenticators: Sequence[Authenticator],
    now: Callable[[], float] = time.time,
) -> Flask:
    signer = TokenSigner.load(
        config.signing_key, config.signing_cert, config.issuer, config.token_lifetime_seconds, now()
    )
    lock = config.lockout
    lockout = Lockout(
        threshold=lock.threshold,
        window=lock.window_seconds,
        max_lock=lock.max_lock_seconds,
        max_entries=lock.max_entries,
        now=now,
    )
    policy = config.policy

    app = Flask("registry_fleet.auth")
    app.config["MAX_CONTENT_LENGTH"] = MAX_CONTENT_LENGTH
    app.extensions["registry_fleet.lockout"] = lockout
    app.extensions["registry_fleet.signer"] = signer

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        code = (err.name or "error").upper().replace(" ", "_")
        return _error(err.code or 500, code, err.description or err.name)

    @app.before_request
    def refuse_bodies() -> Response | None:
        if request.content_length or "transfer-encoding" in request.headers:
            return _error(413, "BODY_NOT_ALLOWED", "this service takes no request body")
        return None

    @app.get("/healthz")
    def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/auth")
    def token() -> Response:
        client = client_address(request.remote_addr, request.headers.get("X-Forwarded-For"), config.trusted_proxies)
        decision = Decision(client=client)
        try:
            scopes, credentials = _read_request(decision)
        except BadRequest as err:
            decision.audit("bad_request", str(err))
            return _error(400, "BAD_REQUEST", str(err))

        identity: Identity | None = None
        if credentials is not None:
            user, password = credentials
            wait = lockout.retry_after(user, client)
            if wait:
                decision.audit("locked", f"back-off after repeated failures, {wait}s left")
                return _error(
                    429, "TOO_MANY_REQUESTS", f"too many failed logins; retry in {wait}s", {"Retry-After": str(wait)}
                )
            try:
                identity = _authenticate(authenticators, user, password)
            except BackendUnavailable as err:
                log.error("identity backend unavailable: %s", err)
                decision.audit("unavailable", "an identity backend could not answer")
                return _error(503, "UNAVAILABLE", "the identity backend is unavailable; try again later")
            if identity is None:
                locked_for = lockout.failure(user, client)
                reason = "wrong credentials" + (f"; locked for {locked_for}s" if locked_for else "")
                decision.audit("unauthenticated", reason)
                return _error(
                    401, "UNAUTHORIZED", "authentication failed", {"WWW-Authenticate": f'Basic realm="{REALM}"'}
                )
            lockout.success(user, client)
            decision.account = identity.name

        granted: list[Scope] = []
        for scope in scopes:
            allowed = policy.allowed(identity, scope, client)
            actions = tuple(a for a in scope.actions if a in allowed)
            if actions:
                granted.append(scope.with_actions(actions))
        minted = signer.mint(identity.name if identity else "", config.service, granted, now())
        decision.granted = [str(s) for s in granted]
        decision.jti = minted.jti
        decision.audit("denied" if scopes and not granted else "granted")
        issued = datetime.datetime.fromtimestamp(minted.issued_at, datetime.UTC)
        return _json(
            200,
            {
                "token": minted.token,
                "access_token": minted.token,
                "expires_in": minted.expires_in,
                "issued_at": issued.isoformat().replace("+00:00", "Z"),
            },
            {"Pragma": "no-cache"},
        )

    def _read_request(decision: Decision) -> tuple[list[Scope], tuple[str, str] | None]:
        raw_scopes = request.args.getlist("scope")
        decision.requested = [_cut(s) or "" for s in raw_scopes[: config.max_scopes]]
        credentials = basic_credentials(request.headers.get("Authorization"))
        if credentials is not None:
            decision.account = credentials[0]
        service = _one("service")
        decision.service = service
        if service is None:
            raise BadRequest("service is required")
        if service != config.service:
            raise BadRequest(f"unknown service {_cut(service)!r}")
        if len(raw_scopes) > config.max_scopes:
            raise BadRequest(f"{len(raw_scopes)} scope parameters; at most {config.max_scopes}")
        try:
            scopes = parse_scopes(raw_scopes)
        except ScopeError as err:
            raise BadRequest(str(err)) from None
        if len(scopes) > config.max_scopes:
            raise BadRequest(f"{len(scopes)} scopes; at most {config.max_scopes}")
        decision.requested = [str(s) for s in scopes]
        account = _one("account")
        if account is not None and (credentials is None or account != credentials[0]):
            raise BadRequest("account must be the user of the Basic credentials")
        return scopes, credentials

    return app


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
            return identity
    if unavailable is not None:
        raise unavailable
    return None
