"""Scraping a Prometheus target the way the hosts' CloudWatch agent does (host/cloudwatch_agent.py), for the
tests that start the real processes (test_lab_metrics.py, test_host_boot.py): the target's scheme, path and TLS
name (its certificate must hold the name the agent checks), on the target's port or the lab's stand-in port."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from host.cloudwatch_agent import ScrapeTarget


def scrape(target: ScrapeTarget, ca_file: str, port: int | None = None) -> dict[str, list[Any]]:
    """GET the target (on `port` instead of its own when given); its samples by name."""
    port = port if port is not None else int(target.address.rsplit(":", 1)[1])
    context = None
    if target.scheme == "https":
        assert target.ca_file is not None and target.server_name is not None, target
        context = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname=target.server_name):
            pass  # the handshake checks the certificate under the name the agent uses
    with urllib.request.urlopen(f"{target.scheme}://127.0.0.1:{port}{target.path}", context=context, timeout=10) as r:
        assert r.status == 200, target
        text = r.read().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples
