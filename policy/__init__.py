"""registry-fleet's compliance as code: the ten practices of docs/design.md as policy rules.

- `policy.graph`: the resource graph as rules see it (`Res`, the property readers, user-data
  parsing); the recording engine (`fleet/engine.py`) records its resources in this model.
- `policy.registry`: what a rule is, and `@rule(id, practice, description)` that declares one.
- `policy.rules`: the rules, one module per practice (`policy/rules/hosts.py` ... `backups.py`), and
  `RULES`; plain functions over a stack's resources (no pulumi or pulumi_policy import), shared by the
  CrossGuard pack and `python -m fleet audit`.
- `policy.waivers`: a stack's dated waivers, applied to the rules' violations.
- `policy.crossguard`: the rules as CrossGuard stack policies (imports pulumi_policy).
- `policy/__main__.py`: the pack itself (`pulumi preview --policy-pack policy/`); the only
  place that constructs `PolicyPack(...)`, which starts a gRPC server and never returns.
"""
