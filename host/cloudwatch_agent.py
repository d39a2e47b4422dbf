"""The CloudWatch agent on a registry host: what it scrapes, what it sends, and how it gets there.

The agent scrapes the registry's Prometheus metrics (its debug listener on loopback,
`http.debug.prometheus`: host/registry_config.py) and, in token mode, the token service's
(`/metrics` on its own port, answered to loopback peers only: auth/metrics.py), and sends them as
embedded-metric-format log events to one log group, from which CloudWatch makes the metrics that
`metric_declaration` selects (dimensions: the scrape job, and a label where one is named). Nothing
is opened to the network: every target is 127.0.0.1.

How it reaches a host, the AWS-documented way and without downloading anything in user-data: one
State Manager association (components/host_metrics.py) runs `install_document()` on every host of the
fleet when it registers with Systems Manager: write the Prometheus scrape config file, install the
`AmazonCloudWatchAgent` package with `AWS-ConfigureAWSPackage` (Distributor), then
`AmazonCloudWatch-ManageAgent` configures it from the SSM parameter holding `agent_config()` and
restarts it. One composite document keeps the three steps in order (two associations would race).

Pure renderers of plain values: the component, the compliance rule and the lab test
(tests/test_lab_metrics.py scrapes the real registry and token service at exactly these targets) read them.
The CloudWatch agent keeps counters (sent as the change since the last scrape), gauges and summaries; it drops
histograms (AWS: "Prometheus metric type conversion by the CloudWatch agent"), so latencies come from the load
balancer's TargetResponseTime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from host.contract import CA_CERT_FILE, DEBUG_PORT, HOST_INTERNAL_NAME, TOKEN_SERVICE_PORT

AGENT_PACKAGE = "AmazonCloudWatchAgent"  # the Distributor package AWS publishes
SCRAPE_CONFIG_PATH = "/etc/registry-fleet/cloudwatch-prometheus.yaml"  # public: targets on loopback only
METRICS_PATH = "/metrics"
SCRAPE_INTERVAL = "1m"
REGISTRY_JOB = "registry"
TOKEN_JOB = "token-service"
LOG_RETENTION_DAYS = 30  # the raw scrapes; the metrics CloudWatch extracts keep its own retention (15 months)

# (job, metric selector regex, dimension sets): what becomes a CloudWatch metric. Every other scraped value
# stays in the log group only. Dimensions are the job and a label of few values, never the host: CloudWatch
# adds up what every host sends under the same dimensions (counters arrive as per-scrape deltas).
DECLARATIONS: tuple[tuple[str, str, tuple[tuple[str, ...], ...]], ...] = (
    (REGISTRY_JOB, "^registry_http_requests_total$", (("job", "code"),)),
    (REGISTRY_JOB, "^registry_http_in_flight_requests$", (("job",),)),
    (REGISTRY_JOB, "^registry_notifications_(pending|events_total|status_total)$", (("job",),)),
    (TOKEN_JOB, "^registry_fleet_token_requests_total$", (("job", "outcome"),)),
    (TOKEN_JOB, "^registry_fleet_token_credential_cache_total$", (("job", "result"),)),
    (
        TOKEN_JOB,
        "^registry_fleet_token_(lockout_local_total|lockout_store_errors_total|lockout_shared|directory_errors_total"
        "|signing_cert_expiry_timestamp_seconds)$",
        (("job",),),
    ),
)


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job: where the agent reads, as a URL a test can open."""

    job: str
    scheme: str
    address: str  # host:port, always loopback
    path: str
    ca_file: str | None = None  # https: the internal CA, and the name in the host certificate
    server_name: str | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}{self.path}"


def scrape_targets(token_service: bool) -> list[ScrapeTarget]:
    """The registry's debug listener (plain HTTP on loopback) and, in token mode, the token service (HTTPS,
    its host certificate checked against the internal CA)."""
    targets = [ScrapeTarget(REGISTRY_JOB, "http", f"127.0.0.1:{DEBUG_PORT}", METRICS_PATH)]
    if token_service:
        targets.append(
            ScrapeTarget(
                TOKEN_JOB, "https", f"127.0.0.1:{TOKEN_SERVICE_PORT}", METRICS_PATH, CA_CERT_FILE, HOST_INTERNAL_NAME
            )
        )
    return targets


def scrape_config(targets: list[ScrapeTarget]) -> str:
    """The agent's Prometheus scrape config (Prometheus's own `scrape_configs` format)."""
    jobs: list[dict[str, Any]] = []
    for t in targets:
        job: dict[str, Any] = {
            "job_name": t.job,
            "scheme": t.scheme,
            "metrics_path": t.path,
            "static_configs": [{"targets": [t.address]}],
        }
        if t.ca_file is not None:
            job["tls_config"] = {"ca_file": t.ca_file, "server_name": t.server_name}
        jobs.append(job)
    document = {"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "10s"}, "scrape_configs": jobs}
    return yaml.safe_dump(document, sort_keys=False)


def agent_config(log_group: str, namespace: str, targets: list[ScrapeTarget]) -> dict[str, Any]:
    """The agent's JSON config (the SSM parameter): Prometheus scrapes to EMF in `log_group`, metrics in
    `namespace`. Nothing else is collected, so the role needs CloudWatch Logs only."""
    jobs = {t.job for t in targets}
    declarations = [
        {"source_labels": ["job"], "label_matcher": f"^{job}$", "dimensions": [list(d) for d in dims],
         "metric_selectors": [selector]}
        for job, selector, dims in DECLARATIONS
        if job in jobs
    ]  # fmt: skip
    return {
        "agent": {"metrics_collection_interval": 60},
        "logs": {
            "metrics_collected": {
                "prometheus": {
                    "log_group_name": log_group,
                    "prometheus_config_path": SCRAPE_CONFIG_PATH,
                    "emf_processor": {
                        "metric_declaration_dedup": True,
                        "metric_namespace": namespace,
                        "metric_declaration": declarations,
                    },
                }
            },
            "force_flush_interval": 60,
        },
    }


def install_document(parameter_name: str, targets: list[ScrapeTarget]) -> dict[str, Any]:
    """The association's Command document (schema 2.2): the scrape config file, the agent, its config."""
    text = scrape_config(targets)
    write = [
        f"install -d -m 0755 {SCRAPE_CONFIG_PATH.rsplit('/', 1)[0]}",
        f"cat > {SCRAPE_CONFIG_PATH}.new <<'REGISTRY_FLEET_EOF'",
        *text.splitlines(),
        "REGISTRY_FLEET_EOF",
        f"chmod 0644 {SCRAPE_CONFIG_PATH}.new",
        f"mv {SCRAPE_CONFIG_PATH}.new {SCRAPE_CONFIG_PATH}",
    ]
    return {
        "schemaVersion": "2.2",
        "description": "registry-fleet: the CloudWatch agent scraping the registry's and the token service's "
        "Prometheus metrics on loopback",
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "writeScrapeConfig",
                "precondition": {"StringEquals": ["platformType", "Linux"]},
                "inputs": {"runCommand": ["set -eu", *write]},
            },
            {
                "action": "aws:runDocument",
                "name": "installAgent",
                "onFailure": "Abort",
                "inputs": {
                    "documentType": "SSMDocument",
                    "documentPath": "AWS-ConfigureAWSPackage",
                    "documentParameters": {"action": "Install", "name": AGENT_PACKAGE},
                },
            },
            {
                "action": "aws:runDocument",
                "name": "configureAgent",
                "onFailure": "Abort",
                "inputs": {
                    "documentType": "SSMDocument",
                    "documentPath": "AmazonCloudWatch-ManageAgent",
                    "documentParameters": {
                        "action": "configure",
                        "mode": "ec2",
                        "optionalConfigurationSource": "ssm",
                        "optionalConfigurationLocation": parameter_name,
                        "optionalRestart": "yes",
                    },
                },
            },
        ],
    }


def scrape_config_from_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The scrape config a document writes (the heredoc of its first step), parsed: for the rule and tests."""
    lines = document["mainSteps"][0]["inputs"]["runCommand"]
    start = next(i for i, line in enumerate(lines) if line.endswith("<<'REGISTRY_FLEET_EOF'"))
    end = lines.index("REGISTRY_FLEET_EOF", start)
    parsed: dict[str, Any] = yaml.safe_load("\n".join(lines[start + 1 : end]))
    return parsed


def document_json(parameter_name: str, targets: list[ScrapeTarget]) -> str:
    return json.dumps(install_document(parameter_name, targets), indent=2)
