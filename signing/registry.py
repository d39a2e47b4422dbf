"""A small registry client: what `fleet sign`/`verify` and the pull-time gate need, over urllib3.

- `Transport`: one keep-alive connection pool to one registry base URL, TLS verified against a given CA
  file (and, for the gate, a given server name: it reaches the local registry by address). Redirects
  (a blob GET answered 307 to the CDN) are followed by hand: to the same origin with the request's
  headers, to another host over HTTPS only and WITHOUT the Authorization header (a registry token must
  never reach the CDN), at most 5 hops. Bodies are read up to a limit: a larger one is an error.
- `RegistryClient`: the registry API on top, authenticating like any client: a request answered 401
  with `WWW-Authenticate: Bearer realm=..,service=..,scope=..` gets a token from the realm (HTTP Basic
  with the account's credentials, or anonymous) and is sent again; tokens are kept per repository. A 401
  with a `Basic` challenge (a registry in htpasswd mode) is answered with the account's credentials. Or
  it sends a fixed Authorization header and never asks for a token (the gate: the client's own).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3

from signing.cosign import ACCEPT, FormatError, check_digest, sha256_digest
from signing.references import DIGEST

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit for a manifest
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(Exception):
    """The registry (or its token service) answered something other than what the call needs."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(RegistryError):  # noqa: N818 (reads as a sentence)
    """No such manifest, blob or repository."""


class Unauthorized(RegistryError):  # noqa: N818
    """401/403: the credentials do not allow the call."""


class Refused(Unauthorized):
    """403 DENIED from the signature gate (gate/app.py) for a manifest read in a protected namespace: the
    manifest exists, the gate served digest `digest` (the sha256 of the registry's bytes) and refused it for
    want of a valid signature. What `fleet sign` needs to sign it (it cannot read the manifest before)."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message, 403)
        self.digest = digest


class TooLarge(RegistryError):  # noqa: N818
    """A body over the limit the call allows."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # urllib3's HTTPHeaderDict: case-insensitive
    body: bytes


def read_limited(resp: urllib3.BaseHTTPResponse, max_bytes: int, what: str) -> bytes:
    """The whole body, or TooLarge past `max_bytes` (the connection is dropped, not drained)."""
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        resp.close()
        raise TooLarge(f"{what}: {length} bytes, over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    total = 0
    for chunk in resp.stream(64 * 1024):
        total += len(chunk)
        if total > max_bytes:
            resp.close()
            raise TooLarge(f"{what}: over the {max_bytes}-byte limit")
        chunks.append(chunk)
    resp.release_conn()
    return b"".join(chunks)


def _context(ca_file: str | None, system: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=None if system else ca_file)
    if system and ca_file:
        context.load_verify_locations(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Transport:
    """A keep-alive pool to `base_url` (https://HOST[:PORT]); `server_name`: the name its certificate must
    hold when the URL names an address (the gate's upstream). Redirects to other hosts trust the
    system's CAs and `ca_file` (the lab's CDN edge has a lab certificate)."""

    def __init__(
        self,
        base_url: str,
        ca_file: str | None = None,
        server_name: str | None = None,
        maxsize: int = 10,
        timeout: float = 30.0,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"registry URL {base_url!r}: must be https://HOST[:PORT]")
        self.base_url = f"https://{parts.netloc}"
        self.origin = ("https", parts.hostname.lower(), parts.port or 443)
        self.timeout = urllib3.Timeout(connect=min(timeout, 10.0), read=timeout)
        self.pool = urllib3.HTTPSConnectionPool(
            parts.hostname,
            parts.port or 443,
            maxsize=maxsize,
            block=False,
            retries=False,
            timeout=self.timeout,
            ssl_context=_context(ca_file, system=False),
            server_hostname=server_name,
            assert_hostname=server_name,
        )
        self.others = urllib3.PoolManager(
            num_pools=4, maxsize=maxsize, retries=False, timeout=self.timeout, ssl_context=_context(ca_file, True)
        )

    def open(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None = None, follow: bool = False
    ) -> urllib3.BaseHTTPResponse:
        """The response, its body unread (stream it, or `read_limited`). `path` starts with /."""
        resp = self.pool.urlopen(
            method, path, body=body, headers=dict(headers), redirect=False, retries=False, preload_content=False
        )
        url = self.base_url + path
        hops = 0
        while follow and resp.status in REDIRECTS and method in ("GET", "HEAD"):
            hops += 1
            location = resp.headers.get("Location")
            resp.drain_conn()
            resp.release_conn()
            if not location or hops > MAX_REDIRECTS:
                raise RegistryError(f"{method} {path}: redirect without a Location, or more than {MAX_REDIRECTS}")
            url = urllib.parse.urljoin(url, location)
            target = urllib.parse.urlsplit(url)
            origin = (target.scheme, (target.hostname or "").lower(), target.port or 443)
            if origin == self.origin:
                resp = self.pool.urlopen(
                    method, url, headers=dict(headers), redirect=False, retries=False, preload_content=False
                )
                continue
            if target.scheme != "https":
                raise RegistryError(f"{method} {path}: redirected to {target.scheme}://, refused (HTTPS only)")
            # Another host (the CDN): its signed URL is the credential; the registry token stays here.
            outside = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
            resp = self.others.urlopen(
                method, url, headers=outside, redirect=False, retries=False, preload_content=False
            )
        return resp

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        max_bytes: int = MAX_MANIFEST_BYTES,
        follow: bool = False,
    ) -> Response:
        resp = self.open(method, path, headers, body, follow)
        data = b"" if method == "HEAD" else read_limited(resp, max_bytes, f"{method} {path}")
        if method == "HEAD":
            resp.release_conn()
        return Response(resp.status, resp.headers, data)

    def close(self) -> None:
        self.pool.close()
        self.others.clear()


def parse_challenge(header: str | None) -> tuple[str, dict[str, str]]:
    """(scheme lower-cased, params) of a WWW-Authenticate header; ('', {}) without one."""
    if not header:
        return "", {}
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def error_detail(body: bytes) -> str:
    """The first OCI error's code and message, for messages; '' when the body has none."""
    try:
        errors = json.loads(body).get("errors") or []
        return f"{errors[0].get('code')}: {errors[0].get('message')}"[:300] if errors else ""
    except (ValueError, AttributeError, IndexError, TypeError, RecursionError):
        return ""


def gate_refusal(resp: Response, repository: str) -> str | None:
    """The digest a signature gate's refusal names (403, DENIED, `detail` with this repository and a sha256
    digest: gate/app.py `refuse`); None for any other answer, the registry's own DENIED included."""
    if resp.status != 403:
        return None
    try:
        error = json.loads(resp.body)["errors"][0]
        detail = error["detail"]
        digest = detail["digest"]
        if error["code"] == "DENIED" and detail["repository"] == repository and DIGEST.match(digest):
            return str(digest)
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        pass
    return None


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str


class RegistryClient:
    """The registry API for one registry; thread-safe."""

    def __init__(
        self,
        transport: Transport,
        credentials: tuple[str, str] | None = None,
        user_agent: str = "registry-fleet",
        fixed_authorization: bool = False,
        authorization: str | None = None,
    ) -> None:
        self.transport = transport
        self.credentials = credentials
        # The gate: send the client's own Authorization (or none) and never ask for a token.
        self.fixed = fixed_authorization
        self.authorization = authorization
        self.user_agent = user_agent
        self._tokens: dict[str, str] = {}
        self._basic = False  # the registry asked for HTTP Basic (htpasswd mode) instead of a token
        self._lock = threading.Lock()

    # --- plumbing ------------------------------------------------------------------------------

    def _headers(self, repository: str, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, **extra}
        if self.fixed:
            if self.authorization is not None:
                headers["Authorization"] = self.authorization
        else:
            with self._lock:
                token = self._tokens.get(repository)
                basic = self._basic
            if basic and self.credentials is not None:
                user, password = self.credentials
                headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            elif token:
                headers["Authorization"] = f"Bearer {token}"
        return headers

    def send(
        self,
        method: str,
        repository: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        max_bytes: int = MAX_MANIFEST_BYTES,
        follow: bool = False,
    ) -> Response:
        """One API call; on a 401 with a Bearer challenge, a token, and the call once more."""
        resp = self.transport.request(method, path, self._headers(repository, headers or {}), body, max_bytes, follow)
        if resp.status != 401 or self.fixed:
            return resp
        scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate"))
        if scheme == "basic" and self.credentials is not None:
            # A registry in htpasswd mode: HTTP Basic on every request from now on (HTTPS only: see Transport).
            with self._lock:
                self._basic = True
            return self.transport.request(
                method, path, self._headers(repository, headers or {}), body, max_bytes, follow
            )
        if scheme != "bearer" or "realm" not in params:
            raise Unauthorized(f"{method} {path}: 401 without a Bearer challenge", 401)
        token = self._token(params)
        with self._lock:
            self._tokens[repository] = token
        return self.transport.request(method, path, self._headers(repository, headers or {}), body, max_bytes, follow)

    def _token(self, params: dict[str, str]) -> str:
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme != "https":
            raise RegistryError(f"token realm {params['realm']!r} is not HTTPS: refused (credentials would go clear)")
        query = [(k, params[k]) for k in ("service", "scope") if k in params]
        url = params["realm"] + ("&" if realm.query else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": self.user_agent}
        if self.credentials is not None:
            user, password = self.credentials
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        resp = self.transport.others.urlopen("GET", url, headers=headers, redirect=False, preload_content=False)
        body = read_limited(resp, 256 * 1024, "token response")
        who = f"account {self.credentials[0]}" if self.credentials else "anonymous access"
        if resp.status == 401:
            raise Unauthorized(f"the token service refused {who}: wrong user name or password", 401)
        if resp.status != 200:
            raise RegistryError(f"the token service answered {resp.status} for {who}: {body[:300]!r}", resp.status)
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError("the token service's answer holds no token")
        return token

    @staticmethod
    def _fail(resp: Response, what: str, repository: str | None = None) -> RegistryError:
        detail = error_detail(resp.body)
        text = f"{what}: HTTP {resp.status}" + (f" ({detail})" if detail else "")
        refused = gate_refusal(resp, repository) if repository is not None else None
        if refused is not None:
            return Refused(text, refused)
        if resp.status == 404:
            return NotFound(text, 404)
        if resp.status in (401, 403):
            return Unauthorized(text, resp.status)
        return RegistryError(text, resp.status)

    # --- manifests -----------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str, accept: str = ACCEPT) -> Manifest:
        """The manifest's exact bytes; its digest is the sha256 of those bytes (checked against a
        digest reference and against the registry's Docker-Content-Digest)."""
        resp = self.send("GET", repository, f"/v2/{repository}/manifests/{reference}", {"Accept": accept})
        if resp.status != 200:
            raise self._fail(resp, f"manifest {repository}:{reference}", repository)
        digest = sha256_digest(resp.body)
        stated = resp.headers.get("Docker-Content-Digest")
        if reference.startswith("sha256:") and reference != digest:
            raise RegistryError(f"manifest {repository}@{reference}: the registry sent bytes of digest {digest}")
        if stated and stated.startswith("sha256:") and stated != digest:
            raise RegistryError(f"manifest {repository}:{reference}: Docker-Content-Digest {stated} != {digest}")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(resp.body, media_type, digest)

    def find_manifest(self, repository: str, reference: str, accept: str = ACCEPT) -> Manifest | None:
        try:
            return self.get_manifest(repository, reference, accept)
        except NotFound:
            return None

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        resp = self.send(
            "PUT", repository, f"/v2/{repository}/manifests/{reference}", {"Content-Type": media_type}, body
        )
        if resp.status != 201:
            raise self._fail(resp, f"push of manifest {repository}:{reference}")
        return sha256_digest(body)

    # --- blobs ---------------------------------------------------------------------------------

    def get_blob(self, repository: str, digest: str, max_bytes: int) -> bytes:
        """The blob, following the CDN redirect, checked against its digest."""
        check_digest(digest)
        resp = self.send("GET", repository, f"/v2/{repository}/blobs/{digest}", max_bytes=max_bytes, follow=True)
        if resp.status != 200:
            raise self._fail(resp, f"blob {repository}@{digest}")
        if sha256_digest(resp.body) != digest:
            raise FormatError(f"blob {digest}: the bytes served have another digest")
        return resp.body

    def push_blob(self, repository: str, data: bytes) -> str:
        """Monolithic upload (POST, then PUT with the digest); nothing when the blob is already there."""
        digest = sha256_digest(data)
        head = self.send("HEAD", repository, f"/v2/{repository}/blobs/{digest}")
        if head.status == 200:
            return digest
        start = self.send("POST", repository, f"/v2/{repository}/blobs/uploads/", {"Content-Length": "0"}, b"")
        location = start.headers.get("Location")
        if start.status != 202 or not location:
            raise self._fail(start, f"blob upload to {repository}")
        target = urllib.parse.urlsplit(urllib.parse.urljoin(self.transport.base_url + "/", location))
        if (target.hostname or "").lower() != self.transport.origin[1]:
            raise RegistryError(f"blob upload to {repository}: the registry sent the upload to another host")
        query = (target.query + "&" if target.query else "") + urllib.parse.urlencode({"digest": digest})
        done = self.send(
            "PUT",
            repository,
            f"{target.path}?{query}",
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
            data,
        )
        if done.status != 201:
            raise self._fail(done, f"blob upload to {repository}")
        return digest
