"""registry-fleet's compliance as code: the ten practices of DESIGN.md as policy rules.

- `policy.rules`: the rules, plain functions over a stack's resources (no pulumi_policy import),
  shared by the CrossGuard pack and `python -m fleet audit`.
- `policy.crossguard`: the rules as CrossGuard stack policies (imports pulumi_policy).
- `policy/__main__.py`: the pack itself (`pulumi preview --policy-pack policy/`); the only
  place that constructs `PolicyPack(...)`, which starts a gRPC server and never returns.
"""
