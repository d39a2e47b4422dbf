"""The audit scorecard: every stack clean or waived, a broken variant fails its practice, waivers expire."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import json
import shutil
from pathlib import Path

import pytest

from fleet import cli
from fleet.audit import Scorecard, render, score
from policy.graph import Res
from policy.registry import PRACTICES
from tests.helpers import STACKS, recording

TODAY = datetime.date(2026, 11, 28)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI audits on a fixed day, so waiver expiry never makes this suite flaky."""
    monkeypatch.setattr("fleet.audit.today", lambda: TODAY)


def card(stack: str, resources: list[Res] | None = None, today: datetime.date = TODAY) -> Scorecard:
    return score(stack, resources if resources is not None else recording(stack).in_urn_order(), today)


def statuses(c: Scorecard) -> dict[int, str]:
    return {p.id: p.status for p in c.practices}


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_audits_clean_without_a_waiver(stack: str) -> None:
    c = card(stack)
    assert c.passed, render([c], "text")
    assert statuses(c) == {n: "pass" for n, _ in PRACTICES}
    assert [e for p in c.practices for e in p.evidence if e["result"] == "waived"] == []


def test_json_lists_the_ten_practices_in_design_order() -> None:
    doc = card("prod").to_json()
    assert doc["stack"] == "prod"
    assert [p["id"] for p in doc["practices"]] == list(range(1, 11))
    assert all(set(p) == {"id", "title", "status", "evidence"} for p in doc["practices"])
    assert doc["practices"][1]["title"] == "TLS everywhere"


def broken(stack: str, name: str, change: object) -> list[Res]:
    out = []
    for r in recording(stack).in_urn_order():
        if r.name == name:
            inputs = copy.deepcopy(dict(r.inputs))
            change(inputs)  # type: ignore[operator]
            r = dataclasses.replace(r, inputs=inputs)
        out.append(r)
    return out


def test_a_broken_practice_fails_the_audit_naming_the_resource() -> None:
    def public_ip(props: dict[str, object]) -> None:
        props["networkInterfaces"][0]["associatePublicIpAddress"] = "true"  # type: ignore[index]

    c = card("dev", broken("dev", "fleet-lt", public_ip))
    assert not c.passed
    assert statuses(c)[7] == "fail" and [n for n, s in statuses(c).items() if s == "fail"] == [7]
    failing = [e for e in c.practices[6].evidence if e["result"] == "fail"]
    assert failing and all(e["resource"] == "fleet-lt" for e in failing)


WAIVED_QUEUE = {
    "rule": "scan-queue",
    "reason": "a queue on the AWS-managed key until the migration",
    "expires": "2027-02-28",
}


def waived_weak_queue() -> list[Res]:
    """dev with its scan queue on the AWS-managed key (a scan-queue violation), waived until 2027-02-28."""

    def waive(props: dict[str, object]) -> None:
        props["waivers"] = [WAIVED_QUEUE]

    def weak(props: dict[str, object]) -> None:
        props["kmsMasterKeyId"] = "alias/aws/sqs"

    resources = broken("dev", "scan-queue-queue", weak)
    waivers = next(r for r in resources if r.name == "policy-waivers")
    inputs = copy.deepcopy(dict(waivers.inputs))
    waive(inputs)
    return [dataclasses.replace(r, inputs=inputs) if r is waivers else r for r in resources]


def test_an_expired_waiver_fails_the_audit_with_a_fixed_clock() -> None:
    c = card("dev", waived_weak_queue(), today=datetime.date(2027, 3, 1))
    assert not c.passed
    assert any("expired" in e and "scan-queue" in e for e in c.waiver_errors), c.waiver_errors
    assert statuses(c)[5] == "fail"


def test_a_waiver_is_honoured_up_to_its_expiry_day() -> None:
    c = card("dev", waived_weak_queue(), today=datetime.date(2027, 2, 28))
    assert c.passed and statuses(c)[5] == "waived"


def test_an_unknown_waiver_is_an_error(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    shutil.copytree("stacks", stacks)
    f = stacks / "Pulumi.dev.yaml"
    text = f.read_text()
    assert "waivers" not in text
    typo = {"rule": "scan-notification", "reason": "the old rule's id, misspelt", "expires": "2027-02-28"}
    f.write_text(text + f"  registry-fleet:waivers:\n    - {json.dumps(typo)}\n")
    out = io.StringIO()
    code = cli.main(["audit", "dev"], out=out, err=io.StringIO(), stacks_dir=stacks)
    assert code == 1
    assert "scan-notification'" in out.getvalue() and "waiver error" in out.getvalue()


def test_cli_audit_json_and_exit_code() -> None:
    out = io.StringIO()
    assert cli.main(["audit", "staging", "--format", "json"], out=out, err=io.StringIO()) == 0
    assert json.loads(out.getvalue())["stack"] == "staging"


def test_cli_audit_all_in_markdown_covers_every_stack() -> None:
    out = io.StringIO()
    assert cli.main(["audit", "--all", "--format", "markdown"], out=out, err=io.StringIO()) == 0
    text = out.getvalue()
    assert all(f"`{stack}`" in text for stack in STACKS)
    assert "| 5 | vulnerability scans | ✅ pass |" in text


def test_cli_audit_needs_a_stack_or_all() -> None:
    err = io.StringIO()
    assert cli.main(["audit"], out=io.StringIO(), err=err) == 2
    assert "name one stack, or --all" in err.getvalue()
