"""Practice 5, vulnerability scans: the registry notifies the scanner bridge of every push."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from policy.graph import Res, as_list, mapping, registry_configs
from policy.registry import Finding, rule
from policy.rules.hosts import no_launch_template


@rule(
    "scan-notifications",
    5,
    "The registry sends its events to at least one enabled https notification endpoint (the scanner bridge).",
)
def find_scan_notifications(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from no_launch_template(resources)
    for lt, config in registry_configs(resources):
        if isinstance(config, str):
            yield lt.name, config
            continue
        endpoints = as_list(mapping(config.get("notifications")).get("endpoints"))
        https = [
            e
            for e in endpoints
            if str(mapping(e).get("url", "")).startswith("https://") and not mapping(e).get("disabled")
        ]
        if not https:
            urls = [mapping(e).get("url") for e in endpoints]
            yield (
                lt.name,
                f"registry config.yml notifications.endpoints urls are {urls}; "
                "expected an enabled https:// endpoint (the scanner bridge)",
            )
