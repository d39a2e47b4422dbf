"""The lab's CDN edge: checks CloudFront canned-policy signed URLs, then serves the object from S3.

It stands in for the CloudFront distribution in front of the registry bucket (empty origin path):
the registry's `cloudfront` middleware redirects blob GETs here, the edge verifies the URL exactly
as CloudFront would for a key group holding one public key, and streams the object from the S3
endpoint (moto in the lab). GET and HEAD only; a single `Range` is passed to S3 (206).

    python -m lab.edge --host 127.0.0.1 --port P --cert F --key F \\
        --s3-endpoint https://127.0.0.1:M --s3-ca-file F --bucket B --region R \\
        --key-pair-id K --public-key F --stats-file F

Counters `{"requests", "forbidden", "bytes"}` (bytes = object body bytes sent) are rewritten
atomically to --stats-file after every request. One log line per request goes to stderr, with the
query's Signature left out. SIGTERM or SIGINT stops it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from lab.cloudfront import load_public_key, verify_signed_url

CHUNK = 1024 * 1024
HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 60.0
_SINGLE_RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")
_SIGNATURE_IN_TEXT = re.compile(r"([?&]Signature=)[^&\s'\"]*")


def _log(message: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Belt and braces: whatever reaches the log, a Signature value never does.
    sys.stderr.write(f"{stamp} edge {_SIGNATURE_IN_TEXT.sub('', message)}\n")
    sys.stderr.flush()


def redact(target: str) -> str:
    """The request target without the Signature parameter (for logs)."""
    path, sep, query = target.partition("?")
    if not sep:
        return path
    kept = [part for part in query.split("&") if not part.startswith("Signature=")]
    return path + ("?" + "&".join(kept) if kept else "")


class Stats:
    """Request counters, rewritten atomically (temp file + rename) after every request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.requests = 0
        self.forbidden = 0
        self.bytes = 0

    def record(self, *, forbidden: bool, body_bytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.forbidden += int(forbidden)
            self.bytes += body_bytes
            self._write()

    def write(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        data = json.dumps({"requests": self.requests, "forbidden": self.forbidden, "bytes": self.bytes})
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class Origin:
    """The S3 bucket behind the edge (origin path empty: key = URL path without the leading /)."""

    client: Any
    bucket: str


class EdgeServer(ThreadingHTTPServer):
    """Threading HTTPS server; the TLS handshake runs in the request's thread, not the accept loop."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        ssl_context: ssl.SSLContext,
        origin: Origin,
        key_pair_id: str,
        public_key_pem: bytes,
        stats: Stats,
    ) -> None:
        self.ssl_context = ssl_context
        self.origin = origin
        self.key_pair_id = key_pair_id
        self.public_key_pem = public_key_pem
        self.stats = stats
        super().__init__(address, EdgeHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN (a DNS lookup); loopback needs none.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    @property
    def authority(self) -> str:
        return f"{self.server_name}:{self.server_port}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        assert isinstance(request, socket.socket)
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            _log(f"TLS handshake from {client_address[0]} failed: {exc}")
            return
        try:
            EdgeHandler(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        _log(f"connection from {client_address[0]} ended: {type(exc).__name__}: {exc}")


class EdgeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "registry-fleet-edge"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: EdgeServer

    # -- dispatch ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    if not TYPE_CHECKING:  # hidden from mypy, so that a typo in our own attributes still fails the type check

        def __getattr__(self, name: str) -> Any:
            # Every other method (do_POST, do_PUT, do_FOO, ...) is answered 405 rather than 501.
            if name.startswith("do_"):
                return self._not_allowed
            raise AttributeError(name)

    def _not_allowed(self) -> None:
        self.close_connection = True  # a request body we did not read must not be parsed as a request
        self._reply_text(405, "method not allowed", extra={"Allow": "GET, HEAD", "Connection": "close"})
        self._finish(405, sent=0, forbidden=False, note=None)

    # -- logging: our own line per request, never the raw request line ---------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        _log(f"{self.client_address[0]} {format % args}")

    # -- the edge ---------------------------------------------------------------------------------

    def _request_url(self) -> str:
        if self.path.startswith(("https://", "http://")):
            return self.path
        host = self.headers.get("Host") or self.server.authority
        return f"https://{host}{self.path}"

    def _serve(self, *, head: bool) -> None:
        url = self._request_url()
        verdict = verify_signed_url(url, self.server.key_pair_id, self.server.public_key_pem, int(time.time()))
        if not verdict.ok:
            self._reply_text(403, f"forbidden: {verdict.reason}")
            self._finish(403, sent=0, forbidden=True, note=verdict.reason)
            return
        key = unquote(urlsplit(url).path)[1:]
        if not key:
            self._reply_text(404, "not found")
            self._finish(404, sent=0, forbidden=False, note="empty key")
            return
        status, sent, note = self._from_origin(key, head=head)
        self._finish(status, sent=sent, forbidden=False, note=note)

    def _from_origin(self, key: str, *, head: bool) -> tuple[int, int, str | None]:
        origin = self.server.origin
        request: dict[str, str] = {"Bucket": origin.bucket, "Key": key}
        wanted = (self.headers.get("Range") or "").strip()
        if wanted and not head and _SINGLE_RANGE.fullmatch(wanted):
            request["Range"] = wanted
        try:
            answer = origin.client.head_object(**request) if head else origin.client.get_object(**request)
        except ClientError as exc:
            return self._origin_error(exc)
        except NoCredentialsError:
            self._reply_text(502, "bad gateway: no credentials for the origin")
            return 502, 0, "no origin credentials"
        except BotoCoreError as exc:
            self._reply_text(502, "bad gateway: origin unreachable")
            return 502, 0, f"origin unreachable: {type(exc).__name__}"
        length = int(answer["ContentLength"])
        status = 206 if "ContentRange" in answer and "Range" in request else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if answer.get("ETag"):
            self.send_header("ETag", answer["ETag"])
        if status == 206:
            self.send_header("Content-Range", answer["ContentRange"])
        if answer.get("LastModified") is not None:
            self.send_header("Last-Modified", self.date_time_string(answer["LastModified"].timestamp()))
        self.end_headers()
        if head:
            return status, 0, None
        return self._stream(answer["Body"], length, status)

    def _stream(self, body: Any, length: int, status: int) -> tuple[int, int, str | None]:
        sent = 0
        try:
            while chunk := body.read(CHUNK):
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BotoCoreError, OSError, ValueError) as exc:
            # Headers are out: all we can do is cut the connection so the client sees a short body.
            self.close_connection = True
            return status, sent, f"aborted after {sent} of {length} bytes: {type(exc).__name__}"
        finally:
            body.close()
        if sent != length:
            self.close_connection = True
            return status, sent, f"origin sent {sent} of {length} bytes"
        return status, sent, None

    def _origin_error(self, exc: ClientError) -> tuple[int, int, str | None]:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        http_status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "NotFound", "404") or (http_status == 404 and code != "NoSuchBucket"):
            self._reply_text(404, "not found")
            return 404, 0, None
        if code == "InvalidRange" or http_status == 416:
            self._reply_text(416, "range not satisfiable")
            return 416, 0, None
        self._reply_text(502, f"bad gateway: origin answered {code or http_status}")
        return 502, 0, f"origin answered {code or http_status}"

    def _reply_text(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _finish(self, status: int, *, sent: int, forbidden: bool, note: str | None) -> None:
        self.server.stats.record(forbidden=forbidden, body_bytes=sent)
        line = f"{self.client_address[0]} {self.command} {redact(self.path)} {status} {sent}"
        _log(line + (f" ({note})" if note else ""))


# -- command line -----------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {value}")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _nonempty(text: str) -> str:
    if not text.strip() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"must be a non-empty value without spaces: {text!r}")
    return text


def _endpoint(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab.edge",
        description="CDN edge for the lab: verifies CloudFront canned-policy signed URLs, serves objects from S3.",
    )
    p.add_argument("--host", required=True, help="address to listen on (e.g. 127.0.0.1)")
    p.add_argument("--port", required=True, type=_port, help="port to listen on (0 = any free port)")
    p.add_argument("--cert", required=True, type=_existing_file, help="TLS certificate chain (PEM)")
    p.add_argument("--key", required=True, type=_existing_file, help="TLS private key (PEM)")
    p.add_argument("--s3-endpoint", required=True, type=_endpoint, help="S3 endpoint URL, e.g. https://127.0.0.1:M")
    p.add_argument("--s3-ca-file", required=True, type=_existing_file, help="CA bundle that signs the S3 endpoint")
    p.add_argument("--bucket", required=True, type=_nonempty, help="origin bucket")
    p.add_argument("--region", required=True, type=_nonempty, help="S3 region")
    p.add_argument("--key-pair-id", required=True, type=_nonempty, help="the only Key-Pair-Id accepted")
    p.add_argument("--public-key", required=True, type=_existing_file, help="RSA public key (PEM) of that key pair")
    p.add_argument("--stats-file", required=True, type=Path, help="JSON counters, rewritten after each request")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    public_key_pem = args.public_key.read_bytes()
    try:
        load_public_key(public_key_pem)
    except (ValueError, TypeError) as exc:
        p.error(f"--public-key {args.public_key}: not an RSA public key PEM ({exc})")
    if not args.stats_file.parent.is_dir():
        p.error(f"--stats-file {args.stats_file}: directory {args.stats_file.parent} does not exist")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(args.cert, args.key)
    except (ssl.SSLError, OSError) as exc:
        p.error(f"--cert {args.cert} / --key {args.key}: cannot load ({exc})")
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=args.s3_endpoint,
        region_name=args.region,
        verify=str(args.s3_ca_file),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
        ),
    )
    stats = Stats(args.stats_file)
    stats.write()
    try:
        server = EdgeServer(
            (args.host, args.port), context, Origin(client, args.bucket), args.key_pair_id, public_key_pem, stats
        )
    except OSError as exc:
        print(f"edge: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="edge-accept")
    loop.start()
    print(f"edge ready on https://{server.authority}", flush=True)
    while loop.is_alive() and not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    loop.join()
    stats.write()
    _log(f"stopped: {stats.requests} requests, {stats.forbidden} forbidden, {stats.bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
