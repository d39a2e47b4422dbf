"""The edge firewall, the alarms and dashboard, and the access logs, as the program records them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.settings import settings_from_config
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
    shown = {(w["properties"]["metrics"][0][0], w["properties"]["metrics"][0][1]) for w in body["widgets"]}
    alarms = stack_alarms(stack)
    assert len(body["widgets"]) == len(alarms)
    assert shown == {(a.inputs["namespace"], a.inputs["metricName"]) for a in alarms}


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
