"""Talking to a real registry (Debian's docker-registry 2.8.2) and the token service on loopback, for the
tests that start them (test_auth_registry.py, test_token_rotation.py): where the registry binary is,
one HTTPS request trusting only the lab CA (`call`, with Basic or Bearer credentials, answering status,
lower-cased headers and body), and the status of a URL, or 0 while nothing answers yet (`status_of`,
for readiness checks). Waiting for a process to show something is `tests.helpers.waiting.wait_for`.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.parse

REGISTRY_BINARY = "/usr/bin/docker-registry"

Response = tuple[int, dict[str, str], bytes]


def status_of(ca_file: str, url: str) -> int:
    try:
        return call(ca_file, "GET", url)[0]
    except OSError:
        return 0


def call(
    ca_file: str,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    basic: tuple[str, str] | None = None,
    bearer: str | None = None,
) -> Response:
    """One HTTPS request trusting only the lab CA."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=30)
    hdrs = dict(headers or {})
    if basic is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    if bearer is not None:
        hdrs["Authorization"] = f"Bearer {bearer}"
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
