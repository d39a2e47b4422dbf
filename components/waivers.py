"""PolicyWaivers: a stack's waivers, registered where the policy pack can read them.

A CrossGuard pack sees the resources a program registers, not the stack's config. This
component has no children: its props carry the stack's `waivers` setting, so the pack
(`pulumi preview --policy-pack policy/`) and `python -m fleet audit` read the same list.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

TYPE = "registry-fleet:index:PolicyWaivers"


@dataclass(frozen=True)
class WaiverArgs:
    rule: str
    reason: str
    expires: datetime.date


class PolicyWaivers(pulumi.ComponentResource):
    def __init__(self, name: str, waivers: Sequence[WaiverArgs], opts: pulumi.ResourceOptions | None = None):
        props = {"waivers": [{"rule": w.rule, "reason": w.reason, "expires": w.expires.isoformat()} for w in waivers]}
        super().__init__(TYPE, name, props, opts)
        # A stack policy sees a component's outputs, not its inputs: publish the waivers there too.
        self.register_outputs(props)
