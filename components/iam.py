"""IAM and resource policy documents as the JSON strings AWS takes (practice 7, least privilege).

Every policy the components write (role and trust policies, bucket, key and endpoint policies)
is serialised by `policy_document`: `{"Version": "2012-10-17", "Statement": [...]}`, the
statements in the order given. A role's trust policy for an AWS service is `assume_role_policy`;
a grant to an AWS service, optionally for one source resource only, is `allow_service`.
"""

from __future__ import annotations

import json
from typing import Any

POLICY_VERSION = "2012-10-17"


def policy_document(*statements: dict[str, Any]) -> str:
    """A policy document holding `statements`, in order, as JSON."""
    return json.dumps({"Version": POLICY_VERSION, "Statement": list(statements)})


def assume_role_policy(service: str) -> str:
    """A role's trust policy: only the AWS service `service` (e.g. `ec2.amazonaws.com`) may assume it."""
    return policy_document({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"})


def allow_service(sid: str, service: str, action: str, resource: str, source_arn: str | None = None) -> dict[str, Any]:
    """A statement letting the AWS service `service` do `action` on `resource`; with `source_arn`, only
    on behalf of that one resource (a distribution, say), so no other customer's can use the grant."""
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": action,
        "Resource": resource,
    }
    if source_arn is not None:
        statement["Condition"] = {"StringEquals": {"AWS:SourceArn": source_arn}}
    return statement
