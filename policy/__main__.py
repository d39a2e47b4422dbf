"""The registry-fleet CrossGuard pack: `pulumi preview --policy-pack policy/` (or `pulumi up`).

Every rule of policy/rules/ is a mandatory stack policy; waivers come from the stack's
`registry-fleet:index:PolicyWaivers` resource. Constructing `PolicyPack` starts the analyzer's
gRPC server and never returns: nothing else may import this module.
"""

import sys
from pathlib import Path

# Pulumi runs this file with the pack's directory on sys.path; the rules import as `policy.*`
# from the repository root, like the tests and `python -m fleet audit` import them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, Policy, PolicyPack

from policy.crossguard import policies

pack_policies: list[Policy] = list(policies())
PolicyPack(name="registry-fleet", enforcement_level=EnforcementLevel.MANDATORY, policies=pack_policies)
