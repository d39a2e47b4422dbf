"""The events forwarder: the registry's notifications in, scan messages on the queue out.

`python -m scanner events --config FILE` serves HTTPS on the host's loopback (host contract SCAN_EVENTS_PORT,
5004). The registry on the same host POSTs each notification envelope (`{"events": [...]}`, media type
`application/vnd.docker.distribution.events.v1+json`) to `/events` with `Authorization: Bearer <token>`.

- The bearer is compared in constant time. None or a wrong one: 401 (and a log line, never the token).
- A body over `max_body_bytes`: 413. Not a JSON envelope with an `events` list of objects: 400.
- Kept: `push` events of a manifest (OCI/Docker image manifests and indexes), with a sha256 digest and a
  valid repository name, unless the repository is under an ignored prefix (`mirror/`: Trivy's database) or
  the tag is a cosign attachment (`sha256-<hex>.sig`, `.att`, `.sbom`). Blob pushes, pulls, deletes and
  everything else are ignored (counted in the log line).
- The kept events become `scan_body(repository, digest)` messages (one per distinct pair), sent with
  SendMessageBatch; the answer is 200 only once SQS accepted every one of them, else 503, so the registry
  keeps the envelope and retries it (distribution retries an endpoint until it answers 2xx). A message sent
  twice is harmless: the worker is idempotent by (digest, database).
- `GET /healthz` (and `/`): 200 (liveness; nothing else is served).
"""

from __future__ import annotations

import hmac
import json
import re
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from scanner.config import EventsConfig, read_secret
from scanner.report import DIGEST, scan_body

MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
COSIGN_TAG = re.compile(r"^sha256-[0-9a-f]{64}\.(sig|att|sbom)$")
REPOSITORY = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
EVENTS_PATH = "/events"
HEALTH_PATH = "/healthz"
BATCH = 10  # SendMessageBatch's limit


class EnvelopeError(ValueError):
    """Not a notification envelope; the message says why (answered 400)."""


@dataclass
class Selection:
    scans: list[tuple[str, str]] = field(default_factory=list)  # (repository, digest), distinct, in order
    ignored: int = 0


def select(envelope: Any, ignore_prefixes: tuple[str, ...]) -> Selection:
    """The (repository, digest) pairs to scan in one envelope; EnvelopeError for a malformed one."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise EnvelopeError("not a notification envelope: a JSON object with an `events` list")
    selection = Selection()
    for i, event in enumerate(envelope["events"]):
        if not isinstance(event, dict):
            raise EnvelopeError(f"events[{i}] is not an object")
        target = event.get("target")
        if event.get("action") != "push" or not isinstance(target, dict):
            selection.ignored += 1
            continue
        repository, digest = target.get("repository"), target.get("digest")
        tag = target.get("tag") or ""
        if (
            target.get("mediaType") not in MANIFEST_MEDIA_TYPES
            or not isinstance(repository, str)
            or not REPOSITORY.match(repository)
            or not isinstance(digest, str)
            or not DIGEST.match(digest)
            or (isinstance(tag, str) and COSIGN_TAG.match(tag))
            or any(repository.startswith(p) or repository + "/" == p for p in ignore_prefixes)
        ):
            selection.ignored += 1
            continue
        if (repository, digest) not in selection.scans:
            selection.scans.append((repository, digest))
    return selection


def send_scans(sqs: Any, queue_url: str, scans: list[tuple[str, str]]) -> list[str]:
    """Send one message per scan; the ids SQS did not accept (empty: all accepted)."""
    failed: list[str] = []
    for start in range(0, len(scans), BATCH):
        chunk = scans[start : start + BATCH]
        entries = [{"Id": str(start + i), "MessageBody": scan_body(r, d)} for i, (r, d) in enumerate(chunk)]
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        failed += [f"{e['Id']} ({e.get('Code')})" for e in answer.get("Failed", [])]
    return failed


def make_handler(
    token: str, config: EventsConfig, sqs: Any, log: Callable[[str], None]
) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "registry-scan-events"
        sys_version = ""
        timeout = 30  # a client that stops sending mid-body is dropped

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request below, without headers

        def _answer(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path in (HEALTH_PATH, "/"):
                self._answer(200, "ok\n")
            else:
                self._answer(404, "not found\n")

        def do_POST(self) -> None:
            client = self.client_address[0]
            if self.path.split("?")[0] != EVENTS_PATH:
                self._answer(404, "not found\n")
                return
            given = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                log(f"refused 401 from {client}: {'no' if not given else 'a wrong'} bearer token")
                self._answer(401, "unauthorized\n")
                return
            length_header = self.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                log(f"refused 411 from {client}: no Content-Length")
                self._answer(411, "length required\n")
                return
            length = int(length_header)
            if length > config.max_body_bytes:
                log(f"refused 413 from {client}: {length} bytes")
                self.close_connection = True
                self._answer(413, "too large\n")
                return
            try:
                envelope = json.loads(self.rfile.read(length))
                selection = select(envelope, config.ignore_prefixes)
            except (ValueError, RecursionError) as err:
                reason = str(err) if isinstance(err, EnvelopeError) else "not JSON"
                log(f"refused 400 from {client}: {reason}")
                self._answer(400, f"{reason}\n")
                return
            try:
                failed = send_scans(sqs, config.queue_url, selection.scans) if selection.scans else []
            except Exception as err:  # any SQS failure: the registry keeps the envelope and retries
                log(f"queue unavailable, answered 503: {type(err).__name__}: {str(err)[:300]}")
                self._answer(503, "queue unavailable\n")
                return
            if failed:
                log(
                    f"queue refused {len(failed)} of {len(selection.scans)} messages, answered 503: {', '.join(failed)}"
                )
                self._answer(503, "queue refused messages\n")
                return
            for repository, digest in selection.scans:
                log(f"queued {repository}@{digest}")
            log(
                f"accepted {len(envelope['events'])} events: {len(selection.scans)} queued, {selection.ignored} ignored"
            )
            self._answer(200, "ok\n")

    return Handler


def serve(config: EventsConfig, log: Callable[[str], None] | None = None) -> ThreadingHTTPServer:
    """A started-but-not-serving HTTPS server for `config` (call serve_forever)."""
    out = log or (lambda line: print(f"scanner events: {line}", file=sys.stderr, flush=True))
    token = read_secret(config.token_file, "token_file")
    sqs = config.aws_client("sqs")
    server = ThreadingHTTPServer(config.address, make_handler(token, config, sqs, out))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.cert_file, config.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def run(config: EventsConfig) -> int:
    server = serve(config)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    host, port = config.address
    print(f"scanner events: ready on https://{host}:{port}{EVENTS_PATH}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0
