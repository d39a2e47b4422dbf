"""Practice 1, dedicated registry hosts: a host installs and runs the registry, its token service and the SSM agent."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from host.contract import HOST_PACKAGES, HOST_SERVICES
from policy.graph import LAUNCH_TEMPLATE, Res, as_list, cloud_inits, enabled_services, of_type
from policy.registry import STACK, Finding, rule

# What a registry host may install and enable: the registry and the token service beside it (token
# mode; python3-venv holds its hash-pinned wheels), what boots them (the AWS CLI reads their secrets,
# curl fetches the SSM agent), and the SSM agent (operators use Session Manager, not SSH).


def no_launch_template(resources: Sequence[Res]) -> Iterator[Finding]:
    if not of_type(resources, LAUNCH_TEMPLATE):
        yield STACK, f"no {LAUNCH_TEMPLATE}: no registry host to check"


@rule(
    "hosts-dedicated",
    1,
    "Registry hosts install only docker-registry, awscli, ca-certificates, curl and python3-venv, and enable "
    "only docker-registry, registry-token and amazon-ssm-agent.",
)
def find_hosts_dedicated(resources: Sequence[Res]) -> Iterator[Finding]:
    yield from no_launch_template(resources)
    for lt, doc in cloud_inits(resources):
        if isinstance(doc, str):
            yield lt.name, doc
            continue
        names = [str(p[0] if isinstance(p, list) and p else p) for p in as_list(doc.get("packages"))]
        extra = sorted(set(names) - HOST_PACKAGES)
        if extra:
            yield lt.name, f"userData packages include {extra}; a registry host installs only {sorted(HOST_PACKAGES)}"
        for service in enabled_services(doc):
            if service not in HOST_SERVICES:
                yield (
                    lt.name,
                    f"userData runcmd enables {service!r}; only {sorted(HOST_SERVICES)} run on a registry host",
                )
