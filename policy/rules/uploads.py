"""Practice 4, uploads only by trusted users: the registry uses token auth (scoped pushes), never htpasswd or silly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

from host.contract import TOKEN_PATH
from policy.graph import Res, host_boot, mapping
from policy.registry import Finding, rule

# Access controllers that identify users, with the options each needs (distribution 2.8 configuration).
TRUSTED_AUTH = {"htpasswd": ("realm", "path"), "token": ("realm", "service", "issuer", "rootcertbundle")}
# Token mode: clients get tokens at this path on the registry's own host (the load balancer routes it
# to the token service: rule token-service-routed, in access.py).
HTPASSWD_UNTRUSTED = (
    "every htpasswd user may push and delete everywhere; use token mode, or waive with a reason for a small stack"
)


@rule(
    "registry-auth-trusted",
    4,
    "The registry uses token auth with an https realm on its own host at /auth, a service, an issuer and a "
    "rootcertbundle (never htpasswd or silly).",
)
def find_registry_auth_trusted(resources: Sequence[Res]) -> Iterator[Finding]:
    for lt, _, config in host_boot(resources):
        auth = mapping(config.get("auth")) if isinstance(config, dict) else {}
        if not auth:
            continue  # unknown, unreadable or absent: registry-auth-required reports it
        untrusted = sorted(set(auth) - set(TRUSTED_AUTH))
        if untrusted:
            yield (
                lt.name,
                f"registry config.yml auth uses {untrusted}; only token scopes who may push where "
                "(silly accepts any credentials)",
            )
            continue
        if len(auth) != 1:
            yield lt.name, f"registry config.yml auth names {sorted(auth)}; name exactly one access controller"
            continue
        method, options = next(iter(auth.items()))
        missing = [k for k in TRUSTED_AUTH[method] if not mapping(options).get(k)]
        if missing:
            yield lt.name, f"registry config.yml auth.{method} has no {missing}"
        if method == "htpasswd":
            yield lt.name, f"registry config.yml auth is htpasswd: {HTPASSWD_UNTRUSTED}"
        if method != "token" or missing:
            continue
        host = urlparse(str(mapping(mapping(config).get("http")).get("host") or "")).netloc
        realm = str(mapping(options).get("realm"))
        parsed = urlparse(realm)
        if parsed.scheme != "https" or (host and parsed.netloc != host) or parsed.path != TOKEN_PATH:
            yield (
                lt.name,
                f"registry config.yml auth.token.realm is {realm!r}, expected https://{host or '<registry host>'}"
                f"{TOKEN_PATH} (clients send passwords there: the registry's own host, routed to the token "
                "service)",
            )
        bundle = str(mapping(options).get("rootcertbundle"))
        if not bundle.startswith("/"):
            yield lt.name, f"registry config.yml auth.token.rootcertbundle is {bundle!r}, expected an absolute path"
