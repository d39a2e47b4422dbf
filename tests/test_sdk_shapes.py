"""Every input of every recorded resource is an argument the provider SDK declares (tests/helpers/sdk_shapes.py)."""

from __future__ import annotations

import copy

import pytest

from tests.helpers import STACKS, recording
from tests.helpers.sdk_shapes import input_errors, resource_arguments


@pytest.mark.parametrize("stack", STACKS)
def test_every_recorded_input_is_an_sdk_argument(stack: str) -> None:
    rec = recording(stack)
    checked = [r for r in rec.resources if resource_arguments(r.type) is not None]
    assert len(checked) > 50, "the program registered few SDK resources: is the recording empty?"
    errors = [e for r in checked for e in input_errors(r.type, r.name, r.inputs)]
    assert errors == []


def test_a_misspelt_nested_argument_is_named() -> None:
    """The broken twin: one key deep inside a recorded block, and one at the top, misspelt."""
    tg = next(r for r in recording("dev").resources if r.name == "lb-tg")
    inputs = copy.deepcopy(tg.inputs)
    inputs["healthCheck"]["matchr"] = inputs["healthCheck"].pop("matcher")
    inputs["deregistrationDelays"] = inputs.pop("deregistrationDelay")
    errors = input_errors(tg.type, tg.name, inputs)
    assert len(errors) == 2, errors
    assert errors[0].startswith("lb-tg.healthCheck.matchr: not an argument of TargetGroupHealthCheckArgs")
    assert errors[1].startswith("lb-tg.deregistrationDelays: not an argument of aws:lb/targetGroup:TargetGroup")


def test_a_misspelt_argument_in_a_list_of_blocks_is_named() -> None:
    acl_rules = [{"name": "r", "priority": 1, "statement": {"rate_based_statement": {"limt": 100}}}]
    errors = input_errors("aws:wafv2/webAcl:WebAcl", "acl", {"rules": acl_rules})
    assert errors and errors[0].startswith("acl.rules[0].statement.rate_based_statement.limt: not an argument")
