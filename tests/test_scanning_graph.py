"""Vulnerability scanning in every stack's recorded graph (practice 5, components/scanning.py).

The program runs once per stack under the recording engine (tests/helpers.recording). What this proves: the
resources and inputs the program sends (the queues and their policies, the workers' template, group, role and
scaling, the schedules, the mirror function, the hosts' notifications and forwarder). What it cannot: that AWS
accepts the policies (their grammar, the principals existing), that EventBridge delivers to the encrypted queue
with the key policy as written, that the scaling alarms fire as described, that Trivy's release asset at the
pinned URL has the pinned checksum, that the Lambda runtime imports the mirror; docs/scanning.md says so.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from components.errors import ComponentInputError
from components.scanning import MIRROR_MODULES, mirror_archive_files, scan_queue_policy
from fleet.engine import ACCOUNT_ID, Recording, record
from host.contract import (
    SCAN_EVENTS_CONFIG_FILE,
    SCAN_EVENTS_IGNORED_ACTIONS,
    SCAN_EVENTS_TOKEN_FILE,
    SCAN_EVENTS_UNIT,
)
from host.scanner_host import (
    ROLE_TAG,
    SCANNER_CONFIG_FILE,
    SCANNER_PASSWORD_FILE,
    SCANNER_UNIT,
    SCANNER_WORKER_ROLE,
    trivy_url,
)
from infra.settings import load_stack_settings
from policy.graph import is_secret, unwrap, user_data_text
from scanner.report import REPORTS_PREFIX, RESCAN_ALL_BODY
from tests.helpers import STACKS, htpasswd_settings, recording, settings_with

QUEUE = "aws:sqs/queue:Queue"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


def policy(rec: Recording, name: str, key: str = "policy") -> list[dict[str, Any]]:
    return list(json.loads(unwrap(rec.named(name).inputs[key]))["Statement"])


def statement(statements: list[dict[str, Any]], sid: str) -> dict[str, Any]:
    (found,) = [s for s in statements if s.get("Sid") == sid]
    return found


def cloud_init(rec: Recording, template: str) -> dict[str, Any]:
    doc = yaml.safe_load(user_data_text(rec.named(template).inputs["userData"]))
    assert isinstance(doc, dict)
    return doc


def written(rec: Recording, template: str) -> dict[str, str]:
    return {f["path"]: f["content"] for f in cloud_init(rec, template)["write_files"]}


def arn(rec: Recording, name: str) -> Any:
    return rec.named(name).outputs["arn"]


# --- the queue -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_queue_redrives_to_its_dead_letter_queue_after_the_settings_receives(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    queue, dlq = rec.named("scan-queue-queue").inputs, rec.named("scan-queue-dlq").inputs
    redrive = json.loads(queue["redrivePolicy"])
    assert redrive == {
        "deadLetterTargetArn": arn(rec, "scan-queue-dlq"),
        "maxReceiveCount": s.scanning.max_receive_count,
    }
    assert queue["visibilityTimeoutSeconds"] == s.scanning.visibility_timeout_seconds
    assert queue["receiveWaitTimeSeconds"] == 20  # long polling: an idle worker costs one request per 20 s
    assert dlq["messageRetentionSeconds"] == 14 * 24 * 3600 > queue["messageRetentionSeconds"]
    allow = json.loads(rec.named("scan-queue-dlq-redrive-allow").inputs["redriveAllowPolicy"])
    assert allow == {"redrivePermission": "byQueue", "sourceQueueArns": [arn(rec, "scan-queue-queue")]}


@pytest.mark.parametrize("stack", STACKS)
def test_both_queues_and_the_findings_topic_use_the_scanning_key(stack: str) -> None:
    rec = recording(stack)
    key = arn(rec, "scan-queue-key")
    for name in ("scan-queue-queue", "scan-queue-dlq"):
        assert rec.named(name).inputs["kmsMasterKeyId"] == key, name
    assert rec.named("scanning-findings").inputs["kmsMasterKeyId"] == key
    assert rec.named("scan-queue-key").inputs["enableKeyRotation"] is True


def test_the_key_lets_eventbridge_encrypt_for_the_nightly_rule_only() -> None:
    rec = recording("prod")
    services = [s for s in policy(rec, "scan-queue-key") if "Service" in s["Principal"]]
    (events,) = services
    assert events["Principal"] == {"Service": "events.amazonaws.com"}
    assert sorted(events["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    rule = f"arn:aws:events:{load_stack_settings('prod').region}:{ACCOUNT_ID}:rule/reg-prod-scan-nightly"
    assert events["Condition"]["ArnEquals"] == {"aws:SourceArn": rule}
    assert rec.named("scanning-rescan-rule").inputs["name"] == "reg-prod-scan-nightly"  # the name the key names


@pytest.mark.parametrize("stack", STACKS)
def test_only_the_hosts_the_workers_and_the_nightly_rule_send_and_only_over_tls(stack: str) -> None:
    rec = recording(stack)
    statements = policy(rec, "scanning-queue-policy")
    hosts, workers = arn(rec, "fleet-role"), arn(rec, "scanning-worker-role")
    assert statement(statements, "RolesSend")["Principal"] == {"AWS": sorted([hosts, workers])}
    rule = statement(statements, "NightlyRescanSends")
    assert rule["Principal"] == {"Service": "events.amazonaws.com"} and rule["Action"] == "sqs:SendMessage"
    deny = statement(statements, "OnlyTheseSend")
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == sorted([hosts, workers])
    assert deny["Condition"]["ArnNotEquals"]["aws:SourceArn"] == rule["Condition"]["ArnEquals"]["aws:SourceArn"]
    tls = statement(statements, "DenyInsecureTransport")
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and tls["Action"] == "sqs:*"
    assert statement(statements, "WorkersReceive")["Principal"] == {"AWS": workers}
    dlq_tls = statement(policy(rec, "scan-queue-dlq-policy"), "DenyInsecureTransport")
    assert dlq_tls["Effect"] == "Deny"


def test_a_sender_listed_twice_is_listed_once() -> None:
    text = scan_queue_policy("arn:q", "arn:rule", ["arn:role/w"], "arn:role/w")
    assert json.loads(text)["Statement"][0]["Principal"] == {"AWS": ["arn:role/w"]}


@pytest.mark.parametrize("stack", STACKS)
def test_a_message_in_the_dead_letter_queue_notifies_the_alarm_topic(stack: str) -> None:
    rec = recording(stack)
    alarm = rec.named("scanning-dlq-alarm").inputs
    topic = arn(rec, "alarms-topic")
    assert (alarm["namespace"], alarm["metricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert alarm["dimensions"] == {"QueueName": rec.named("scan-queue-dlq").inputs["name"]}
    assert (alarm["threshold"], alarm["comparisonOperator"]) == (0, "GreaterThanThreshold")
    assert alarm["alarmActions"] == alarm["okActions"] == [topic]


# --- the registry hosts: notifications and the forwarder -----------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_hosts_notify_the_forwarder_on_loopback_without_the_token_in_user_data(stack: str) -> None:
    rec = recording(stack)
    files = written(rec, "fleet-lt")
    config = yaml.safe_load(files["/etc/docker/registry/config.yml"])
    (endpoint,) = config["notifications"]["endpoints"]
    assert endpoint["url"] == "https://127.0.0.1:5004/events"
    assert "headers" not in endpoint  # the bearer comes from the registry's environment at each start
    assert (
        endpoint["ignore"]["actions"] == list(SCAN_EVENTS_IGNORED_ACTIONS)
        and "push" not in endpoint["ignore"]["actions"]
    )
    token = rec.named("scan-queue-events-token-random").outputs["result"]
    assert token not in user_data_text(rec.named("fleet-lt").inputs["userData"])
    assert is_secret(rec.named("scan-queue-events-token-value").inputs["secretString"])


@pytest.mark.parametrize("stack", STACKS)
def test_hosts_run_the_forwarder_with_the_stacks_queue(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    doc = cloud_init(rec, "fleet-lt")
    assert ["systemctl", "enable", "--now", SCAN_EVENTS_UNIT] in doc["runcmd"]
    files = written(rec, "fleet-lt")
    events = yaml.safe_load(files[SCAN_EVENTS_CONFIG_FILE])
    assert events["queue_url"] == rec.named("scan-queue-queue").outputs["url"]
    assert (events["listen"], events["region"], events["token_file"]) == (
        "127.0.0.1:5004",
        s.region,
        SCAN_EVENTS_TOKEN_FILE,
    )
    fetch = files["/usr/local/sbin/registry-fleet-fetch-secrets"]
    token_arn = arn(rec, "scan-queue-events-token")
    assert f"write_notifications {token_arn} REGISTRY_NOTIFICATIONS_ENDPOINTS " in fetch
    assert f"write_secret {token_arn} {SCAN_EVENTS_TOKEN_FILE} 0640 root registry-scan-events" in fetch


@pytest.mark.parametrize("stack", STACKS)
def test_the_hosts_role_may_send_to_the_queue_and_read_the_token(stack: str) -> None:
    rec = recording(stack)
    statements = policy(rec, "fleet-role-policy")
    assert statement(statements, "ScanQueueSend") == {
        "Sid": "ScanQueueSend",
        "Effect": "Allow",
        "Action": "sqs:SendMessage",
        "Resource": arn(rec, "scan-queue-queue"),
    }
    assert statement(statements, "ScanQueueKey")["Resource"] == arn(rec, "scan-queue-key")
    assert arn(rec, "scan-queue-events-token") in statement(statements, "OwnSecrets")["Resource"]
    tags = {
        t["tags"].get("registry-fleet:scan-events-token-version")
        for t in rec.named("fleet-lt").inputs["tagSpecifications"]
    }
    assert rec.named("scan-queue-events-token-value").outputs["versionId"] in tags


@pytest.mark.parametrize("stack", STACKS)
def test_the_host_certificate_names_the_loopback_address(stack: str) -> None:
    assert recording(stack).named("internal-tls-host-csr").inputs["ipAddresses"] == ["127.0.0.1"]


# --- the workers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_workers_are_their_own_group_template_role_and_security_group(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    group, lt = rec.named("scanning-worker-asg").inputs, rec.named("scanning-worker-lt").inputs
    assert group["launchTemplate"]["id"] == rec.named("scanning-worker-lt").id != rec.named("fleet-lt").id
    assert (group["minSize"], group["maxSize"]) == (0, s.scanning.worker_max_size)
    assert "desiredCapacity" not in group  # the scaling policies own it
    assert "targetGroupArns" not in group
    assert lt["iamInstanceProfile"]["arn"] == arn(rec, "scanning-worker-profile") != arn(rec, "fleet-profile")
    assert rec.named("scanning-worker-profile").inputs["role"] == rec.named("scanning-worker-role").outputs["name"]
    (nic,) = lt["networkInterfaces"]
    assert nic["securityGroups"] == [rec.named("scanning-worker-sg").id]
    assert nic["associatePublicIpAddress"] == "false"
    assert lt["metadataOptions"]["httpTokens"] == "required"
    assert lt["instanceType"] == s.scanning.worker_instance_type
    assert lt["tags"][ROLE_TAG] == SCANNER_WORKER_ROLE
    assert set(group["vpcZoneIdentifiers"]) == {
        r.id for r in rec.resources if r.name.startswith("network-private-") and r.type == "aws:ec2/subnet:Subnet"
    }


@pytest.mark.parametrize("stack", STACKS)
def test_nothing_may_reach_a_worker(stack: str) -> None:
    rec = recording(stack)
    sg = rec.named("scanning-worker-sg").id
    ingress = [
        r
        for r in rec.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs["securityGroupId"] == sg
    ]
    assert ingress == []
    (egress,) = [
        r
        for r in rec.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        if r.inputs["securityGroupId"] == sg
    ]
    assert (egress.inputs["fromPort"], egress.inputs["toPort"]) == (443, 443)


@pytest.mark.parametrize("stack", STACKS)
def test_the_workers_role_does_what_a_scan_needs_and_nothing_else(stack: str) -> None:
    rec = recording(stack)
    statements = policy(rec, "scanning-worker-policy")
    bucket = arn(rec, "storage-primary")
    assert sorted(statement(statements, "ScanQueue")["Action"]) == [
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ReceiveMessage",
        "sqs:SendMessage",
    ]
    assert statement(statements, "Reports")["Resource"] == f"{bucket}/{REPORTS_PREFIX}*"
    assert sorted(statement(statements, "Reports")["Action"]) == ["s3:GetObject", "s3:PutObject"]
    robot = rec.outputs.get("robotTokenSecretArns", {})
    assert "registry-scanner" not in robot  # not a CI robot: no output hands its token out
    assert statement(statements, "ScannerRobotToken")["Resource"] == arn(rec, "access-robot-registry-scanner")
    assert statement(statements, "Findings")["Resource"] == arn(rec, "scanning-findings")
    # Objects: its reports (read and write), the registry's tag links and its release (read); never a blob.
    objects = {
        (action, resource)
        for st in statements
        for action in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
        if action.startswith("s3:") and action != "s3:ListBucket"
        for resource in ([st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"])
    }
    artifact = rec.named("access-token-service-artifact").inputs["key"]
    assert objects == {
        ("s3:GetObject", f"{bucket}/{REPORTS_PREFIX}*"),
        ("s3:PutObject", f"{bucket}/{REPORTS_PREFIX}*"),
        ("s3:GetObject", f"{bucket}/docker/registry/v2/repositories/*"),
        ("s3:GetObject", f"{bucket}/{artifact}"),
    }
    assert not [st for st in statements if st["Action"] == "*" or st.get("Resource") == "*"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_hosts_role_reads_no_scanner_robot_token(stack: str) -> None:
    rec = recording(stack)
    own = statement(policy(rec, "fleet-role-policy"), "OwnSecrets")["Resource"]
    assert not {arn(rec, "access-robot-registry-scanner"), arn(rec, "access-robot-trivy-db-mirror")} & set(own)


@pytest.mark.parametrize("stack", STACKS)
def test_workers_scale_from_zero_on_waiting_messages_and_back_when_idle(stack: str) -> None:
    rec = recording(stack)
    out, idle = rec.named("scanning-scale-out").inputs, rec.named("scanning-scale-in").inputs
    assert (out["policyType"], out["adjustmentType"]) == ("StepScaling", "ChangeInCapacity")
    assert [(st.get("metricIntervalLowerBound"), st["scalingAdjustment"]) for st in out["stepAdjustments"]] == [
        ("0", 1),
        ("50", 2),
    ]
    assert (idle["adjustmentType"], idle["stepAdjustments"]) == (
        "ExactCapacity",
        [{"metricIntervalUpperBound": "0", "scalingAdjustment": 0}],
    )
    waiting = rec.named("scanning-messages-waiting").inputs
    assert waiting["metricName"] == "ApproximateNumberOfMessagesVisible" and waiting["alarmActions"] == [
        arn(rec, "scanning-scale-out")
    ]
    assert waiting["dimensions"] == {"QueueName": rec.named("scan-queue-queue").inputs["name"]}
    quiet = rec.named("scanning-queue-idle").inputs
    assert quiet["alarmActions"] == [arn(rec, "scanning-scale-in")]
    # In flight counts: a worker mid-scan is never scaled in.
    metrics = {q["metric"]["metricName"] for q in quiet["metricQueries"] if "metric" in q}
    assert metrics == {"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"}
    assert quiet["comparisonOperator"] == "LessThanOrEqualToThreshold" and quiet["evaluationPeriods"] == 15


@pytest.mark.parametrize("stack", STACKS)
def test_the_worker_installs_trivy_by_version_and_checksum_and_reads_the_robot_token_at_boot(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    files = written(rec, "scanning-worker-lt")
    arch = s.scanning.worker_architecture
    script = files["/usr/local/sbin/registry-fleet-install-trivy"]
    assert f"URL={trivy_url(s.scanning.trivy.version, arch)} SHA256={getattr(s.scanning.trivy.sha256, arch)}" in script
    assert trivy_url("0.59.1", "arm64").endswith("/v0.59.1/trivy_0.59.1_Linux-ARM64.tar.gz")
    unit = files[f"/etc/systemd/system/{SCANNER_UNIT}.service"]
    assert unit.index("install-trivy") < unit.index("ExecStart=")  # fail closed: no verified Trivy, no worker
    assert "python -m scanner worker --config /etc/registry-fleet/scanner.yml" in unit
    fetch = files["/usr/local/sbin/registry-fleet-fetch-secrets"]
    robot = arn(rec, "access-robot-registry-scanner")
    assert f"write_secret {robot} {SCANNER_PASSWORD_FILE} 0640 root registry-scanner" in fetch
    token = rec.named("access-robot-registry-scanner-random").outputs["result"]
    assert token not in user_data_text(rec.named("scanning-worker-lt").inputs["userData"])
    doc = cloud_init(rec, "scanning-worker-lt")
    assert "docker-registry" not in doc["packages"]
    assert ["systemctl", "enable", "--now", SCANNER_UNIT] in doc["runcmd"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_worker_config_is_the_contracts(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    config = yaml.safe_load(written(rec, "scanning-worker-lt")[SCANNER_CONFIG_FILE])
    assert config == {
        "queue_url": rec.named("scan-queue-queue").outputs["url"],
        "region": s.region,
        "endpoint_url": None,
        "bucket": rec.named("storage-primary").outputs["bucket"],
        "registry": s.registry_host,
        "ca_file": None,
        "username": "registry-scanner",
        "password_file": SCANNER_PASSWORD_FILE,
        "trivy": "/usr/local/bin/trivy",
        "db_repository": f"{s.registry_host}/mirror/trivy-db:2",
        "findings_topic_arn": arn(rec, "scanning-findings"),
        "findings_threshold": s.scanning.findings_threshold,
        "visibility_timeout_seconds": s.scanning.visibility_timeout_seconds,
        "cache_dir": "/var/cache/registry-scanner",
    }


@pytest.mark.parametrize("stack", STACKS)
def test_only_the_workers_publish_findings_and_the_settings_addresses_subscribe(stack: str) -> None:
    rec = recording(stack)
    statements = policy(rec, "scanning-findings-policy")
    assert statement(statements, "WorkersPublish")["Principal"] == {"AWS": arn(rec, "scanning-worker-role")}
    subscriptions = [
        r for r in rec.of_type("aws:sns/topicSubscription:TopicSubscription") if r.name.startswith("scanning-")
    ]
    assert subscriptions == []  # no stack sets scanning.findingsEmails
    emails = record(settings_with("dev", {"scanning": {"findingsEmails": ["sec@example.com"]}}))
    (sub,) = [
        r for r in emails.of_type("aws:sns/topicSubscription:TopicSubscription") if r.name.startswith("scanning-")
    ]
    assert (sub.inputs["protocol"], sub.inputs["endpoint"], sub.inputs["topic"]) == (
        "email",
        "sec@example.com",
        arn(emails, "scanning-findings"),
    )


# --- the schedules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_nightly_rescan_sends_the_constant_body_to_the_queue(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    rule, target = rec.named("scanning-rescan-rule").inputs, rec.named("scanning-rescan-target").inputs
    assert rule["scheduleExpression"] == s.scanning.schedule
    assert (target["rule"], target["arn"], target["input"]) == (
        rule["name"],
        arn(rec, "scan-queue-queue"),
        RESCAN_ALL_BODY,
    )


@pytest.mark.parametrize("stack", STACKS)
def test_the_database_mirror_runs_daily_in_the_private_subnets_with_its_robot(stack: str) -> None:
    rec, s = recording(stack), load_stack_settings(stack)
    fn = rec.named("scanning-mirror").inputs
    assert fn["handler"] == "scanner.mirror.handler" and fn["runtime"].startswith("python3.")
    env = fn["environment"]["variables"]
    secret = arn(rec, "scanning-mirror-credentials")
    assert env == {
        "MIRROR_SOURCE": "ghcr.io/aquasecurity/trivy-db:2",
        "MIRROR_TARGET": f"{s.registry_host}/mirror/trivy-db:2",
        "MIRROR_CREDENTIALS_SECRET_ARN": secret,
    }
    private = {
        r.id for r in rec.resources if r.name.startswith("network-private-") and r.type == "aws:ec2/subnet:Subnet"
    }
    assert set(fn["vpcConfig"]["subnetIds"]) == private
    assert fn["vpcConfig"]["securityGroupIds"] == [rec.named("scanning-mirror-sg").id]
    credentials = rec.named("scanning-mirror-credentials-value").inputs["secretString"]
    assert is_secret(credentials)
    token = rec.named("access-robot-trivy-db-mirror-random").outputs["result"]
    assert json.loads(unwrap(credentials)) == {"username": "trivy-db-mirror", "password": token}
    assert rec.named("scanning-mirror-rule").inputs["scheduleExpression"] == s.scanning.mirror_schedule
    assert rec.named("scanning-mirror-target").inputs["arn"] == arn(rec, "scanning-mirror")
    invoke = rec.named("scanning-mirror-invoke").inputs
    assert (invoke["principal"], invoke["sourceArn"]) == ("events.amazonaws.com", arn(rec, "scanning-mirror-rule"))
    statements = policy(rec, "scanning-mirror-policy")
    assert statement(statements, "MirrorRobotCredentials")["Resource"] == secret
    failed = rec.named("scanning-mirror-alarm").inputs
    assert failed["alarmActions"] == [arn(rec, "alarms-topic")] and failed["metricName"] == "Errors"


def test_the_mirror_ships_the_scanner_modules_the_repository_has() -> None:
    files = mirror_archive_files()
    assert "scanner/__init__.py" in files and set(files) <= {f"scanner/{m}" for m in MIRROR_MODULES}
    code = recording("dev").named("scanning-mirror").inputs["code"]
    assert set(code["archive"]) == set(files)
    assert all(len(member["sha256"]) == 64 for member in code["archive"].values())


def test_the_mirror_archive_is_empty_without_the_scanner_package(tmp_path: Any) -> None:
    assert mirror_archive_files(tmp_path) == {}


# --- the robots ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_scanners_robots_pull_everything_and_push_the_mirror_only(stack: str) -> None:
    rec = recording(stack)
    assert "registry-scanner" in {
        r.name.removeprefix("access-robot-").removesuffix("-random")
        for r in rec.of_type("random:index/randomPassword:RandomPassword")
    }
    config = json.loads(unwrap(rec.named("access-token-config-value").inputs["secretString"]))
    robots = config["policy"]["robots"]
    assert (robots["registry-scanner"]["namespace"], robots["registry-scanner"]["actions"]) == ("*", ["pull"])
    mirror = robots["trivy-db-mirror"]
    assert (mirror["namespace"], mirror["actions"], mirror.get("exact")) == ("mirror/trivy-db", ["pull", "push"], True)


# --- htpasswd mode: no scanning ------------------------------------------------------------------------


def test_htpasswd_mode_deploys_no_scanning() -> None:
    rec = record(htpasswd_settings())
    assert not [r for r in rec.resources if r.name.startswith(("scan-queue", "scanning"))]
    assert "notifications" not in yaml.safe_load(written(rec, "fleet-lt")["/etc/docker/registry/config.yml"])


def test_a_component_without_the_mirror_module_refuses_to_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import components.scanning as scanning

    monkeypatch.setattr(scanning, "SCANNER_DIR", tmp_path)
    with pytest.raises(ComponentInputError, match="holds none of"):
        record(load_stack_settings("dev"))
