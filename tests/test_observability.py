"""The edge firewall, the alarms and dashboard, the hosts' CloudWatch agent (components/host_metrics.py), and the
access logs, as the program records them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from auth import metrics as token_metrics
from components.host_metrics import AGENT_LOG_ACTIONS
from host.cloudwatch_agent import (
    AGENT_PACKAGE,
    REGISTRY_JOB,
    SCRAPE_CONFIG_PATH,
    TOKEN_JOB,
    scrape_config_from_document,
)
from host.contract import DEBUG_PORT, TOKEN_SERVICE_PORT
from infra.settings import settings_from_config
from policy.graph import unwrap
from tests.helpers import STACKS, recording, stack_config


def named(stack: str, name: str) -> Any:
    return next(r for r in recording(stack).resources if r.name == name)


def of_type(stack: str, type_: str) -> list[Any]:
    return [r for r in recording(stack).resources if r.type == type_]


def stack_alarms(stack: str) -> list[Any]:
    """The alarms of the alarms component (the scanning's own are checked in tests/test_scanning_graph.py)."""
    parent = named(stack, "alarms").urn
    return [a for a in of_type(stack, "aws:cloudwatch/metricAlarm:MetricAlarm") if a.parent == parent]


@pytest.mark.parametrize(("stack", "action", "override"), [("dev", "count", "count"), ("prod", "block", "none")])
def test_waf_mode_decides_whether_rules_block_or_count(stack: str, action: str, override: str) -> None:
    rules = {r["name"]: r for r in named(stack, "waf-acl").inputs["rules"]}
    assert rules["token-path-rate"]["action"] == {action: {}}
    assert rules["token-path-rate"]["statement"]["rateBasedStatement"]["limit"] == 3000
    for group in ("AWSManagedRulesAmazonIpReputationList", "AWSManagedRulesKnownBadInputsRuleSet"):
        assert rules[group]["overrideAction"] == {override: {}}
    assert named(stack, "waf-acl").inputs["defaultAction"] == {"allow": {}}


@pytest.mark.parametrize("stack", STACKS)
def test_alarms_reach_the_settings_addresses_through_an_encrypted_topic(stack: str) -> None:
    settings = settings_from_config(stack, stack_config(stack))
    topic = named(stack, "alarms-topic")
    subscriptions = of_type(stack, "aws:sns/topicSubscription:TopicSubscription")
    assert sorted(s.inputs["endpoint"] for s in subscriptions) == sorted(settings.alerts.emails)
    assert all(s.inputs["protocol"] == "email" and s.inputs["topic"] == topic.outputs["arn"] for s in subscriptions)
    key = named(stack, "alarms-topic-key")
    assert topic.inputs["kmsMasterKeyId"] == key.outputs["arn"]
    services = [s for s in json.loads(key.inputs["policy"])["Statement"] if "Service" in s["Principal"]]
    assert services and set(services[0]["Principal"]["Service"]) == {"cloudwatch.amazonaws.com", "backup.amazonaws.com"}
    assert "kms:*" not in services[0]["Action"], "services only encrypt to the topic"
    for alarm in stack_alarms(stack):
        assert alarm.inputs["alarmActions"] == alarm.inputs["okActions"] == [topic.outputs["arn"]], alarm.name
        assert alarm.inputs["treatMissingData"] == "notBreaching"


@pytest.mark.parametrize("stack", STACKS)
def test_the_dashboard_shows_every_alarm_metric(stack: str) -> None:
    body = json.loads(named(stack, "alarms-dashboard").inputs["dashboardBody"])
    alarms = stack_alarms(stack)
    alarm_widgets = body["widgets"][: len(alarms)]
    shown = {(w["properties"]["metrics"][0][0], w["properties"]["metrics"][0][1]) for w in alarm_widgets}
    assert shown == {(a.inputs["namespace"], a.inputs["metricName"]) for a in alarms}


@pytest.mark.parametrize("stack", STACKS)
def test_the_dashboard_shows_what_the_hosts_agent_collects(stack: str) -> None:
    body = json.loads(named(stack, "alarms-dashboard").inputs["dashboardBody"])
    namespace = named(stack, "host-metrics").inputs.get("namespace") or f"registry-fleet/{prefix_of(stack)}"
    lines = [m for w in body["widgets"] for m in w["properties"]["metrics"] if isinstance(m, list) and m]
    metrics = {m[1] for m in lines if m[0] == namespace}
    assert {token_metrics.REQUESTS, token_metrics.CACHE, token_metrics.LOCKOUT_STORE_ERRORS} <= metrics, metrics
    outcomes = {m[5] for m in lines if m[0] == namespace and m[1] == token_metrics.REQUESTS}
    assert outcomes == set(token_metrics.OUTCOMES)
    searches = [
        m[0]["expression"] for w in body["widgets"] for m in w["properties"]["metrics"] if isinstance(m[0], dict)
    ]
    assert any("registry_http_requests_total" in e and namespace in e for e in searches), searches
    assert len({(w["x"], w["y"]) for w in body["widgets"]}) == len(body["widgets"]), "widgets overlap"


def prefix_of(stack: str) -> str:
    return str(named(stack, "host-metrics-agent").inputs["associationName"]).removesuffix("-cloudwatch-agent")


@pytest.mark.parametrize("stack", STACKS)
def test_an_alarm_watches_the_token_service_lockout_fallback(stack: str) -> None:
    alarm = named(stack, "alarms-token-lockout-local").inputs
    assert alarm["namespace"] == f"registry-fleet/{prefix_of(stack)}"
    assert alarm["metricName"] == token_metrics.LOCKOUT_LOCAL
    assert alarm["dimensions"] == {"job": TOKEN_JOB}
    assert alarm["threshold"] == 0 and alarm["comparisonOperator"] == "GreaterThanThreshold"
    assert alarm["alarmActions"] == [named(stack, "alarms-topic").outputs["arn"]]
    declared = agent_document(stack)[1]["logs"]["metrics_collected"]["prometheus"]["emf_processor"]
    assert declared["metric_namespace"] == alarm["namespace"], "the alarm watches the namespace the agent fills"
    assert any(
        re.match(d["metric_selectors"][0], token_metrics.LOCKOUT_LOCAL) and ["job"] in d["dimensions"]
        for d in declared["metric_declaration"]
        if d["label_matcher"] == f"^{TOKEN_JOB}$"
    ), "the agent makes the metric the alarm watches, with its dimensions"


def agent_document(stack: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The association's document and the agent config in the SSM parameter it names."""
    document = json.loads(named(stack, "host-metrics-agent-document").inputs["content"])
    parameter = named(stack, "host-metrics-agent-config").inputs
    configure = document["mainSteps"][2]["inputs"]["documentParameters"]
    assert configure["optionalConfigurationLocation"] == parameter["name"]
    return document, json.loads(unwrap(parameter["value"]))


@pytest.mark.parametrize("stack", STACKS)
def test_every_host_of_the_fleet_installs_and_configures_the_agent_in_order(stack: str) -> None:
    association = named(stack, "host-metrics-agent").inputs
    document = named(stack, "host-metrics-agent-document")
    assert association["name"] == document.outputs["name"]
    assert association["documentVersion"] == document.outputs["latestVersion"], "a new document version reruns it"
    asg = named(stack, "fleet-asg")
    assert association["targets"] == [{"key": "tag:aws:autoscaling:groupName", "values": [asg.outputs["name"]]}]
    assert document.inputs["documentType"] == "Command"
    content, config = agent_document(stack)
    steps = [(step["action"], step["inputs"].get("documentPath")) for step in content["mainSteps"]]
    assert steps == [
        ("aws:runShellScript", None),
        ("aws:runDocument", "AWS-ConfigureAWSPackage"),
        ("aws:runDocument", "AmazonCloudWatch-ManageAgent"),
    ]
    assert content["mainSteps"][1]["inputs"]["documentParameters"] == {"action": "Install", "name": AGENT_PACKAGE}
    manage = content["mainSteps"][2]["inputs"]["documentParameters"]
    assert (manage["action"], manage["mode"], manage["optionalConfigurationSource"], manage["optionalRestart"]) == (
        "configure", "ec2", "ssm", "yes",
    )  # fmt: skip
    prometheus = config["logs"]["metrics_collected"]["prometheus"]
    assert prometheus["prometheus_config_path"] == SCRAPE_CONFIG_PATH
    assert prometheus["log_group_name"] == named(stack, "host-metrics-prometheus").inputs["name"]
    scraped = scrape_config_from_document(content)
    assert {j["job_name"]: j["static_configs"][0]["targets"] for j in scraped["scrape_configs"]} == {
        REGISTRY_JOB: [f"127.0.0.1:{DEBUG_PORT}"],
        TOKEN_JOB: [f"127.0.0.1:{TOKEN_SERVICE_PORT}"],
    }
    assert "user_data" not in json.dumps(content) and "curl" not in json.dumps(content), "nothing downloaded by hand"


@pytest.mark.parametrize("stack", STACKS)
def test_the_agent_may_write_its_log_group_and_read_its_parameter_only(stack: str) -> None:
    policy = named(stack, "host-metrics-agent-policy").inputs
    assert policy["role"] == named(stack, "fleet-role").outputs["name"]
    statements = {s["Sid"]: s for s in json.loads(policy["policy"])["Statement"]}
    group_arn = named(stack, "host-metrics-prometheus").outputs["arn"]
    assert statements["AgentWritesItsLogGroup"]["Resource"] == [group_arn, f"{group_arn}:*"]
    assert sorted(statements["AgentWritesItsLogGroup"]["Action"]) == sorted(AGENT_LOG_ACTIONS)
    assert statements["AgentReadsItsConfig"] == {
        "Sid": "AgentReadsItsConfig",
        "Effect": "Allow",
        "Action": ["ssm:GetParameter"],
        "Resource": named(stack, "host-metrics-agent-config").outputs["arn"],
    }
    assert named(stack, "host-metrics-prometheus").inputs["retentionInDays"] == 30


# What the agent's JSON schema (aws/amazon-cloudwatch-agent translator/config/schema.json, read for this) allows
# in the parts this config uses; the rest of the config is checked above.
PROMETHEUS_KEYS = {"cluster_name", "log_group_name", "prometheus_config_path", "emf_processor", "ecs_service_discovery",
                   "disable_metric_extraction"}  # fmt: skip
EMF_KEYS = {"metric_declaration_dedup", "metric_namespace", "metric_unit", "metric_declaration"}
DECLARATION_KEYS = {"source_labels", "label_matcher", "label_separator", "metric_selectors", "dimensions"}
REGISTRY_METRICS = (
    "registry_http_requests_total",
    "registry_http_in_flight_requests",
    "registry_notifications_pending",
)


@pytest.mark.parametrize("stack", STACKS)
def test_the_agent_config_keeps_to_the_agents_schema_and_selects_real_metrics(stack: str) -> None:
    _, config = agent_document(stack)
    assert set(config) <= {"agent", "metrics", "logs", "traces"}
    assert set(config["logs"]) <= {"metrics_collected", "logs_collected", "force_flush_interval", "log_stream_name"}
    assert isinstance(config["logs"]["force_flush_interval"], int)
    prometheus = config["logs"]["metrics_collected"]["prometheus"]
    assert set(prometheus) <= PROMETHEUS_KEYS and all(isinstance(prometheus[k], str) for k in ("log_group_name",))
    emf = prometheus["emf_processor"]
    assert set(emf) <= EMF_KEYS and isinstance(emf["metric_declaration_dedup"], bool)
    exposed = {REGISTRY_JOB: REGISTRY_METRICS, TOKEN_JOB: token_metrics.METRIC_NAMES}
    for declaration in emf["metric_declaration"]:
        assert set(declaration) <= DECLARATION_KEYS, declaration
        assert all(isinstance(d, list) and all(isinstance(x, str) for x in d) for d in declaration["dimensions"])
        job = re.fullmatch(r"\^(.+)\$", declaration["label_matcher"])
        assert job and declaration["source_labels"] == ["job"], declaration
        for selector in declaration["metric_selectors"]:
            assert any(re.match(selector, name) for name in exposed[job.group(1)]), f"{selector} selects nothing"
    selected = {n for d in emf["metric_declaration"] for n in token_metrics.METRIC_NAMES
                if re.match(d["metric_selectors"][0], n)}  # fmt: skip
    assert selected == set(token_metrics.METRIC_NAMES) - {token_metrics.DURATION}, "histograms are dropped anyway"


@pytest.mark.parametrize("stack", STACKS)
def test_access_logs_land_in_the_log_bucket_under_their_own_prefixes(stack: str) -> None:
    logs_bucket = named(stack, "lb-access-logs")
    logging = named(stack, "request-logs-registry-bucket").inputs
    assert logging["targetBucket"] == logs_bucket.outputs["bucket"] and logging["targetPrefix"] == "s3/registry/"
    policy = json.loads(named(stack, "lb-access-logs-policy").inputs["policy"])
    by_sid = {s.get("Sid"): s for s in policy["Statement"]}
    s3_logs = by_sid["S3ServerAccessLogs"]
    assert s3_logs["Condition"]["ArnLike"]["aws:SourceArn"] == named(stack, "storage-primary").outputs["arn"]
    assert s3_logs["Resource"].endswith("/s3/registry/*")
    assert by_sid["CdnLogDelivery"]["Condition"]["StringEquals"]["aws:SourceAccount"].isdigit()
    destination = named(stack, "request-logs-cdn-destination").inputs
    assert destination["deliveryDestinationConfiguration"]["destinationResourceArn"].endswith("/cloudfront")


def test_waf_logs_redact_the_authorization_header() -> None:
    logging = named("prod", "waf-logging").inputs
    assert logging["redactedFields"] == [{"singleHeader": {"name": "authorization"}}]
    assert named("prod", "waf-logs").inputs["name"].startswith("aws-waf-logs-")
