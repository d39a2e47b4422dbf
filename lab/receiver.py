"""The lab's event receiver: where the registry's notifications land (the scanner bridge's stand-in).

`python -m lab.receiver --port P --cert F --key F --token-file F --events-file F`: an HTTPS
endpoint that accepts POSTed notification envelopes only with the configured bearer token and
appends every event, one JSON object a line, to the events file. A request without the token
gets 401 and is counted in `<events-file>.rejected`.
"""

from __future__ import annotations

import argparse
import hmac
import json
import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 4 * 1024 * 1024


def make_handler(token: str, events_file: Path) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()
    rejected = events_file.with_name(events_file.name + ".rejected")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"receiver: {self.command} {self.path} {format % args}\n")

        def _answer(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200, "ok\n")  # liveness only; events are never served back

        def do_POST(self) -> None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                with lock, rejected.open("a") as f:
                    f.write("1\n")
                self._answer(401, "unauthorized\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413, "too large\n")
                return
            try:
                envelope = json.loads(self.rfile.read(length) or b"{}")
                events = envelope.get("events", [])
            except (json.JSONDecodeError, AttributeError):
                self._answer(400, "not a notification envelope\n")
                return
            with lock, events_file.open("a") as f:
                for event in events:
                    f.write(json.dumps(event, sort_keys=True) + "\n")
            self._answer(200, "ok\n")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--events-file", type=Path, required=True)
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(token, args.events_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"receiver ready on https://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
