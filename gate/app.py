"""The gate's decisions, as a WSGI application in front of the local registry.

GET or HEAD of `/v2/<repo>/manifests/<ref>` where <repo> is gated (gate/config.py: a namespace covering it
requires a signature, or blocks on scan reports):
  1. the request goes to the registry ONCE, with the client's own Authorization and Accept headers; an
     answer other than 200 (401 with the registry's challenge, 404...) goes back unchanged;
  2. the digest served is computed, not trusted: for GET, the sha256 of the exact bytes the registry
     returned (a digest reference must equal it, else 502 and nothing served); for HEAD, the registry's
     Docker-Content-Digest;
  3. where a signature is required, that digest is checked (signing/verify.py): the `sha256-<hex>.sig`
     manifest and its payload blobs are read from the registry with the client's own Authorization (blob
     redirects to the CDN are followed without it). A valid signature is remembered per (repository, digest) for
     `cache_seconds` (bounded, oldest out first); a missing or invalid one is never remembered;
  4. where a covering namespace blocks on scans, the digest's newest scan report (gate/reports.py, cached
     for at most `reports.cache_seconds`) is judged by gate/scan.py: findings at or above the threshold
     that no unexpired allow-list entry excuses, no report under `unscanned: deny`, or a corrupt report
     refuse it;
  5. nothing refused: the registry's answer is served, byte for byte (GET: the bytes just checked, so a
     tag moved meanwhile cannot slip another manifest in). Otherwise 403 with an OCI error
     `{"errors":[{"code":"DENIED","message":"<repo>@<digest>: <reason>; <reason>","detail":{...}}]}` listing
     every reason (no valid signature, also when the registry refuses the client's token for the `.sig`
     reads; `vulnerabilities at or above HIGH: CRITICAL CVE-..., ... (n more)`; `not scanned yet`; an
     unreadable report). When the signatures or the reports cannot be read for another reason (the
     registry, the CDN or S3 failing), 503 UNAVAILABLE: retryable, and nothing served either way.
  A cosign signature manifest itself (an image manifest whose every layer is a simple-signing payload:
  nothing to run) is served unsigned and unscanned: verifiers (cosign, policy-controller, Kyverno) must read it.
Malformed names or references get 400 before anything reaches the registry. Other paths, methods and
unprotected repositories pass through unchanged (the load balancer sends only protected manifest
reads here). Every refusal writes one JSON line to the `registry_fleet.gate.audit` logger.
"""

from __future__ import annotations

import base64
import collections
import datetime
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3

from gate.config import GateConfig
from gate.reports import ReportStore, ReportsUnavailable
from gate.scan import Refusal, reads_reports, scan_refusals
from signing.cosign import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    FormatError,
    is_signature_manifest,
    sha256_digest,
    signature_tag,
)
from signing.references import DIGEST, TAG, valid_repository
from signing.registry import MAX_MANIFEST_BYTES, RegistryClient, RegistryError, TooLarge, Transport, Unauthorized
from signing.verify import MAX_PAYLOAD_BYTES, NO_SIGNATURE, PublicKey, Result, verify_signatures

AUDIT_LOGGER = "registry_fleet.gate.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)
log = logging.getLogger("registry_fleet.gate")

MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]*)$")
SIG_ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
# The client's headers a manifest read needs upstream. Not If-None-Match: a 304 would tell the client
# to use the manifest it holds, which the gate has not checked.
FORWARDED = ("Authorization", "Accept", "User-Agent")
SERVED = ("Content-Type", "Docker-Distribution-Api-Version", "Etag", "Cache-Control")
MAX_PASSTHROUGH_BODY = MAX_MANIFEST_BYTES  # the load balancer never sends uploads here
STATUS_TEXT = {
    200: "OK", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 502: "Bad Gateway", 503: "Service Unavailable",
}  # fmt: skip

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class VerifiedCache:
    """(repository, digest) pairs with a valid signature, each for `ttl` seconds; at most `size`."""

    def __init__(self, ttl: float, size: int, now: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.size, self.now = ttl, size, now
        self._entries: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            expiry = self._entries.get(key)
            if expiry is None:
                return False
            if expiry <= self.now():
                del self._entries[key]
                return False
            return True

    def add(self, key: tuple[str, str]) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key] = self.now() + self.ttl
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Stream:
    """An upstream answer passed through as it comes (its body streamed)."""

    status_line: str
    headers: list[tuple[str, str]]
    body: Iterable[bytes]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


def oci_error(status: int, code: str, message: str, detail: dict[str, Any] | None = None) -> Answer:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    body = json.dumps({"errors": [error]}).encode()
    return Answer(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body)


def token_subject(authorization: str | None) -> str | None:
    """The `sub` claim of a `Bearer` JWT, read without verifying it: only for a request the registry has just
    answered 200 with this very header (the registry verified it). None for anything else."""
    scheme, _, token = (authorization or "").partition(" ")
    parts = token.split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) and subject else None


def _client(environ: dict[str, Any]) -> str:
    """Who asked, for the audit line: the load balancer's X-Forwarded-For (it appends the client), else the peer."""
    return str(environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR") or "")


def _forwarded_for(environ: dict[str, Any]) -> str:
    """X-Forwarded-For for the registry: what came in, with the peer appended (as a proxy does)."""
    peer = str(environ.get("REMOTE_ADDR") or "")
    earlier = environ.get("HTTP_X_FORWARDED_FOR")
    return f"{earlier}, {peer}" if earlier else peer


class Gate:
    """One per worker process: a keep-alive pool to the registry, the keys, the cache."""

    def __init__(
        self,
        config: GateConfig,
        pool_size: int = 16,
        now: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime.datetime] = utc_now,
        reports: ReportStore | None = None,
    ) -> None:
        """`now` (monotonic, for caches) and `clock` (UTC, for allow-list expiry) are for tests to fix;
        `reports`: a store to read scan reports from (default: the config's bucket, when it has one)."""
        self.config = config
        self.clock = clock
        if reports is None and config.reports is not None:
            reports = ReportStore.from_config(config.reports)
        self.reports = reports
        self.keys: list[PublicKey] = config.keys()
        self.transport = Transport(
            config.upstream,
            str(config.upstream_ca_file) if config.upstream_ca_file else None,
            config.upstream_server_name,
            maxsize=pool_size,
        )
        self.cache = VerifiedCache(config.cache_seconds, config.cache_entries, now)

    # --- WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer = self.route(environ)
        if isinstance(answer, Stream):
            start_response(answer.status_line, answer.headers)
            return answer.body
        start_response(f"{answer.status} {STATUS_TEXT.get(answer.status, 'Unknown')}", answer.headers)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [answer.body]

    def route(self, environ: dict[str, Any]) -> Answer | Stream:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        if path == "/healthz" and method in ("GET", "HEAD"):
            body = b'{"status":"ok"}'
            return Answer(200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body)
        match = MANIFEST_PATH.match(path)
        if match and method in ("GET", "HEAD"):
            name, reference = match.group("name"), match.group("reference")
            problem = self._malformed(name, reference)
            if problem is not None:
                return problem
            if self.config.protected(name):
                return self.manifest(environ, method, name, reference)
        if not path.startswith("/v2/") and path != "/v2":
            return oci_error(404, "NOT_FOUND", "only the registry API (/v2/) is served here")
        return self.passthrough(environ)

    @staticmethod
    def _malformed(name: str, reference: str) -> Answer | None:
        if not valid_repository(name):
            return oci_error(400, "NAME_INVALID", "invalid repository name", {"name": name[:256]})
        if reference.startswith("sha256:") or ":" in reference:
            if not DIGEST.match(reference):
                return oci_error(400, "DIGEST_INVALID", "invalid digest: sha256: and 64 lower-case hex digits only")
        elif not TAG.match(reference):
            return oci_error(400, "TAG_INVALID", "invalid tag", {"tag": reference[:256]})
        return None

    # --- protected manifests -------------------------------------------------------------------

    def manifest(self, environ: dict[str, Any], method: str, name: str, reference: str) -> Answer:
        path = f"/v2/{name}/manifests/{reference}"
        headers = {h: environ[key] for h in FORWARDED if (key := "HTTP_" + h.upper().replace("-", "_")) in environ}
        headers["X-Forwarded-For"] = _forwarded_for(environ)
        try:
            resp = self.transport.request(method, path, headers, max_bytes=MAX_MANIFEST_BYTES)
        except TooLarge:
            return oci_error(502, "UNAVAILABLE", "the registry's manifest is over 4 MiB: refused")
        except (urllib3.exceptions.HTTPError, OSError, RegistryError) as err:
            log.error("upstream %s %s: %s", method, path, err)
            return oci_error(502, "UNAVAILABLE", "the registry did not answer")
        if resp.status != 200:  # 401 (the client then gets a token), 404, 304...: as the registry said
            return Answer(resp.status, self._headers(resp.headers, resp.body, method), resp.body)
        if method == "GET":
            digest = sha256_digest(resp.body)
        else:
            digest = resp.headers.get("Docker-Content-Digest", "")
            if not DIGEST.match(digest):
                return oci_error(502, "UNAVAILABLE", "the registry's answer has no sha256 Docker-Content-Digest")
        if DIGEST.match(reference) and reference != digest:
            log.error("upstream served %s for %s@%s", digest, name, reference)
            return oci_error(502, "UNAVAILABLE", "the registry served another digest than the one asked for")
        served = self._headers(resp.headers, resp.body, method, digest)
        if method == "GET" and is_signature_manifest(resp.body):
            return Answer(200, served, resp.body)
        account = token_subject(environ.get("HTTP_AUTHORIZATION"))
        if account is not None and account in self.config.scanner_accounts:
            # The registry answered 200 to this very request with this token: it verified the token's signature
            # and scope, so its subject is the scanner's robot, which must read images nothing has checked yet.
            audit_log.info(json.dumps({"event": "pull_by_scanner", "repository": name, "digest": digest,
                                       "account": account, "client": _client(environ)}))  # fmt: skip
            return Answer(200, served, resp.body)
        policies = self.config.policies(name)
        refusals: list[Refusal] = []
        if any(p.require_signed for p in policies) and (name, digest) not in self.cache:
            authorization = environ.get("HTTP_AUTHORIZATION")
            try:
                result = self.verify(name, digest, authorization)
            except Unauthorized as err:
                refusals.append(
                    Refusal("unverifiable", self.unsigned(f"unverifiable: its signatures could not be read ({err})"))
                )
            except (urllib3.exceptions.HTTPError, OSError, RegistryError) as err:
                log.error("verifying %s@%s: %s", name, digest, err)
                return oci_error(
                    503, "UNAVAILABLE", f"{name}@{digest}: its signatures could not be read now; try again"
                )
            else:
                if result.valid:
                    self.cache.add((name, digest))
                else:
                    reason = result.reason or NO_SIGNATURE
                    refusals.append(Refusal(reason, self.unsigned(f"{reason}: {result.explanation}")))
        if reads_reports(policies):
            if self.reports is None:  # the config refuses this; kept closed anyway
                return oci_error(503, "UNAVAILABLE", f"{name}@{digest}: the gate has no scan reports to read")
            try:
                report = self.reports.latest(digest)
            except ReportsUnavailable as err:
                log.error("scan report of %s@%s: %s", name, digest, err)
                return oci_error(
                    503, "UNAVAILABLE", f"{name}@{digest}: its scan report could not be read now; try again"
                )
            refusals += scan_refusals(policies, report, self.clock())
        if not refusals:
            return Answer(200, served, resp.body)
        if method == "HEAD" and is_signature_manifest(self._body(path, headers, digest) or b""):
            return Answer(200, served, resp.body)
        return self.refuse(environ, name, digest, refusals)

    @staticmethod
    def unsigned(why: str) -> str:
        return f"no valid signature by this registry's signing key ({why})"

    def verify(self, name: str, digest: str, authorization: str | None) -> Result:
        client = RegistryClient(self.transport, fixed_authorization=True, authorization=authorization)
        signatures = client.find_manifest(name, signature_tag(digest), accept=SIG_ACCEPT)

        def fetch(layer: dict[str, Any]) -> bytes:
            blob = layer.get("digest")
            if not isinstance(blob, str) or not DIGEST.match(blob):
                raise FormatError("a signature layer has no sha256 digest")
            try:
                return client.get_blob(name, blob, MAX_PAYLOAD_BYTES)
            except (TooLarge, FormatError) as err:
                raise FormatError(str(err)) from None
            except RegistryError as err:
                if err.status == 404:
                    raise FormatError(f"payload blob {blob} is missing") from None
                raise

        return verify_signatures(signatures.body if signatures else None, fetch, digest, name, self.keys)

    def _body(self, path: str, headers: dict[str, str], digest: str) -> bytes | None:
        """For a HEAD that failed verification: the manifest's bytes (is it a signature manifest?)."""
        try:
            resp = self.transport.request("GET", path, headers, max_bytes=MAX_MANIFEST_BYTES)
        except (urllib3.exceptions.HTTPError, OSError, RegistryError):
            return None
        return resp.body if resp.status == 200 and sha256_digest(resp.body) == digest else None

    def refuse(self, environ: dict[str, Any], name: str, digest: str, refusals: list[Refusal]) -> Answer:
        """403 DENIED naming the digest and every reason; one audit line with the same."""
        codes = [r.code for r in refusals]
        text = f"{name}@{digest}: " + "; ".join(r.message for r in refusals)
        audit_log.info(
            json.dumps(
                {
                    "event": "pull_refused",
                    "repository": name,
                    "digest": digest,
                    "reason": codes[0],
                    "reasons": codes,
                    "client": _client(environ),
                    "message": text,
                }
            )
        )
        detail = {"repository": name, "digest": digest, "reason": codes[0], "reasons": codes}
        return oci_error(403, "DENIED", text, detail)

    @staticmethod
    def _headers(upstream: Any, body: bytes, method: str, digest: str | None = None) -> list[tuple[str, str]]:
        headers = [(h, upstream[h]) for h in SERVED if h in upstream]
        if "WWW-Authenticate" in upstream:
            headers.append(("WWW-Authenticate", upstream["WWW-Authenticate"]))
        stated = digest or upstream.get("Docker-Content-Digest")
        if stated:
            headers.append(("Docker-Content-Digest", stated))
        length = upstream.get("Content-Length", "0") if method == "HEAD" else str(len(body))
        headers.append(("Content-Length", length))
        return headers

    # --- everything else: unchanged --------------------------------------------------------------

    def passthrough(self, environ: dict[str, Any]) -> Answer | Stream:
        method = environ["REQUEST_METHOD"]
        raw = environ.get("RAW_URI") or urllib.parse.quote(environ.get("PATH_INFO", ""))
        if environ.get("QUERY_STRING") and "?" not in raw:
            raw += "?" + environ["QUERY_STRING"]
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key[5:].replace("_", "-").lower() not in HOP_BY_HOP
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["X-Forwarded-For"] = _forwarded_for(environ)
        if environ.get("HTTP_HOST"):
            headers["X-Forwarded-Host"] = environ["HTTP_HOST"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_PASSTHROUGH_BODY:
            return oci_error(413, "SIZE_INVALID", "uploads do not go through this service")
        body = environ["wsgi.input"].read(length) if length else None
        try:
            resp = self.transport.open(method, raw, headers, body)
        except (urllib3.exceptions.HTTPError, OSError, RegistryError) as err:
            log.error("upstream %s %s: %s", method, raw[:200], err)
            return oci_error(502, "UNAVAILABLE", "the registry did not answer")
        out = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP - {"content-length"}]
        return Stream(f"{resp.status} {resp.reason or 'Unknown'}", out, _stream(resp))


def _stream(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    try:
        yield from resp.stream(64 * 1024)
    finally:
        resp.release_conn()
