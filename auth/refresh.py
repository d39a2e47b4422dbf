"""Refresh tokens (the OAuth2 `access_type=offline` of the distribution token spec).

A refresh token is an RS256 JWT signed with the service's token signing key, opaque to clients:

    header: {"alg": "RS256", "typ": "registry-fleet-refresh+jwt"}
    claims: iss (the issuer), aud ("refresh:" + the service), sub (the account's canonical name),
            knd (user | robot | directory), cid (the client_id it was issued to), crd (a digest of
            the local password or robot token hash; "" for directory accounts), jti, iat, nbf, exp

Its `aud` is not the registry's service, so the registry refuses it as an access token; an access
token is not a refresh token either (no `typ`, the service's `aud`).

It is good for access tokens of the same service, for the same account, presented by the same
client_id, until the first of:
  - `lifetime_seconds` after it was issued (default 7 days; the refresh grant does not extend it and,
    as the spec says, answers with the same refresh token: a client gets a new one by logging in again);
  - the account is gone: a local user or robot removed from the config, a robot past `expires`, a
    directory entry that no longer matches `user_filter` (deleted, or disabled where the filter
    excludes disabled accounts); checked on every use;
  - the local password or robot token changes (the credential digest no longer matches);
  - its id is listed in `revoked` (ids are in the audit line that issued it: `refresh_id`);
  - the token signing key changes (every refresh token ends: the emergency stop).
Every access token minted from it gets what the policy grants the account at that moment.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from auth.identity import Identity

TYP = "registry-fleet-refresh+jwt"
ALGORITHM = "RS256"
MAX_TOKEN_CHARS = 4096
CLOCK_SKEW_SECONDS = 60  # as the registry allows for access tokens
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_KINDS = ("user", "robot", "directory")


class RefreshTokenSettings(BaseModel):
    """`refreshTokens` in stack config (camelCase), `refresh_tokens` in the service's config file."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    enabled: bool = True  # false: `access_type=offline` gets an access token only
    lifetime_seconds: int = Field(default=7 * 86_400, ge=3_600, le=90 * 86_400)
    revoked: tuple[str, ...] = ()  # refresh token ids (`refresh_id` in the audit log)

    @field_validator("revoked")
    @classmethod
    def _ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for token_id in value:
            if not _ID.match(token_id):
                raise ValueError(f"{token_id!r} is not a refresh token id (the audit line's refresh_id)")
        return value


class InvalidRefreshToken(Exception):  # noqa: N818 (reads as a sentence)
    """The refresh token cannot be used; the message is safe to log and to return."""


@dataclass(frozen=True)
class RefreshClaims:
    subject: str
    kind: str
    client_id: str
    credential: str
    token_id: str
    expires_at: int


@dataclass(frozen=True)
class IssuedRefreshToken:
    token: str
    token_id: str
    expires_at: int


class RefreshTokens:
    def __init__(self, key: rsa.RSAPrivateKey, issuer: str, service: str, settings: RefreshTokenSettings) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = f"refresh:{service}"
        self.settings = settings
        self._revoked = frozenset(settings.revoked)

    def issue(self, identity: Identity, client_id: str, now: float) -> IssuedRefreshToken:
        iat = int(now)
        token_id = secrets.token_urlsafe(18)
        expires_at = iat + self.settings.lifetime_seconds
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": identity.name,
            "knd": identity.kind,
            "cid": client_id,
            "crd": identity.credential,
            "jti": token_id,
            "iat": iat,
            "nbf": iat,
            "exp": expires_at,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": TYP})
        return IssuedRefreshToken(token, token_id, expires_at)

    def verify(self, token: str, client_id: str, now: float) -> RefreshClaims:
        """The claims of a refresh token this service issued, still good, for this client_id."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidRefreshToken("the refresh token is not one this service issued")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                # Times are checked below against the service's clock (PyJWT would read the wall clock).
                options={
                    "require": ["exp", "iat", "nbf", "jti", "sub", "aud", "iss"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise InvalidRefreshToken("the refresh token is not one this service issued") from None
        if header.get("typ") != TYP or claims.get("knd") not in _KINDS:
            raise InvalidRefreshToken("the refresh token is not one this service issued")
        if int(claims["nbf"]) > now + CLOCK_SKEW_SECONDS:  # issued by a host whose clock runs ahead
            raise InvalidRefreshToken("the refresh token is not valid yet; check the hosts' clocks")
        if now >= int(claims["exp"]):
            raise InvalidRefreshToken("the refresh token has expired; log in again")
        if claims["jti"] in self._revoked:
            raise InvalidRefreshToken("the refresh token has been revoked; log in again")
        if claims.get("cid") != client_id:
            raise InvalidRefreshToken("the refresh token was issued to another client_id")
        return RefreshClaims(
            subject=str(claims["sub"]),
            kind=str(claims["knd"]),
            client_id=str(claims["cid"]),
            credential=str(claims.get("crd", "")),
            token_id=str(claims["jti"]),
            expires_at=int(claims["exp"]),
        )
