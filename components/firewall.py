"""EdgeFirewall: a WAF web ACL on the load balancer (practice 7, private registry).

The ACL allows by default and, in priority order: AWS's IP reputation list, AWS's known-bad-inputs rule
group (Log4Shell-style payloads, bad paths), and a rate rule on the token path (`/auth`): one client
address may ask for at most `waf.tokenRateLimit` tokens in 5 minutes, which slows password guessing
before the token service's own back-off. `waf.mode` chooses whether the rules block (the default) or
only count what they match. No rule inspects request bodies: layer uploads stream through the ALB and
may be gigabytes.

Logs go to a CloudWatch log group (`aws-waf-logs-<prefix>`, as WAF requires) with the `authorization`
header redacted: a sign-in's Basic credentials and every bearer token would otherwise be stored in
plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_aws as aws

from host.contract import TOKEN_PATH

RATE_WINDOW_SECONDS = 300
# AWS's managed rule groups, in priority order. Neither inspects bodies beyond the first 8 KB WAF sees,
# so large layer uploads pass untouched.
MANAGED_RULE_GROUPS = ("AWSManagedRulesAmazonIpReputationList", "AWSManagedRulesKnownBadInputsRuleSet")
TOKEN_RATE_RULE = "token-path-rate"
REDACTED_HEADERS = ("authorization",)
LOG_RETENTION_DAYS = 90
ALLOW: Any = {"allow": {}}  # what no rule matches is allowed


@dataclass
class EdgeFirewallArgs:
    prefix: str
    load_balancer_arn: pulumi.Input[str]
    mode: Literal["count", "block"]
    token_rate_limit: int
    tags: dict[str, str]


def _visibility(metric: str) -> Any:
    return {"cloudwatch_metrics_enabled": True, "metric_name": metric, "sampled_requests_enabled": True}


def web_acl_rules(mode: Literal["count", "block"], token_rate_limit: int) -> list[Any]:
    """The ACL's rules: the managed groups, then the token path's rate rule."""
    group_override: Any = {"count": {}} if mode == "count" else {"none": {}}
    rules: list[dict[str, Any]] = [
        {
            "name": group,
            "priority": priority,
            "override_action": group_override,
            "statement": {"managed_rule_group_statement": {"vendor_name": "AWS", "name": group}},
            "visibility_config": _visibility(group),
        }
        for priority, group in enumerate(MANAGED_RULE_GROUPS, start=1)
    ]
    rules.append(
        {
            "name": TOKEN_RATE_RULE,
            "priority": len(rules) + 1,
            "action": {mode: {}},
            "statement": {
                "rate_based_statement": {
                    "limit": token_rate_limit,
                    "aggregate_key_type": "IP",
                    "evaluation_window_sec": RATE_WINDOW_SECONDS,
                    "scope_down_statement": {
                        "byte_match_statement": {
                            "search_string": TOKEN_PATH,
                            "positional_constraint": "STARTS_WITH",
                            "field_to_match": {"uri_path": {}},
                            "text_transformations": [{"priority": 0, "type": "NONE"}],
                        }
                    },
                }
            },
            "visibility_config": _visibility(TOKEN_RATE_RULE),
        }
    )
    return rules


class EdgeFirewall(pulumi.ComponentResource):
    web_acl_arn: pulumi.Output[str]
    web_acl_name: pulumi.Output[str]

    def __init__(self, name: str, args: EdgeFirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:EdgeFirewall", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        acl = aws.wafv2.WebAcl(
            f"{name}-acl",
            name=f"{args.prefix}-edge",
            scope="REGIONAL",
            description="registry-fleet: managed rules and a rate rule on the token path",
            default_action=ALLOW,
            rules=web_acl_rules(args.mode, args.token_rate_limit),
            visibility_config=_visibility(f"{args.prefix}-edge"),
            tags=args.tags,
            opts=child,
        )
        aws.wafv2.WebAclAssociation(
            f"{name}-association", resource_arn=args.load_balancer_arn, web_acl_arn=acl.arn, opts=child
        )
        # WAF only logs to a log group whose name starts with aws-waf-logs-.
        logs = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"aws-waf-logs-{args.prefix}",
            retention_in_days=LOG_RETENTION_DAYS,
            tags=args.tags,
            opts=child,
        )
        aws.wafv2.WebAclLoggingConfiguration(
            f"{name}-logging",
            resource_arn=acl.arn,
            log_destination_configs=[logs.arn],
            redacted_fields=[{"single_header": {"name": header}} for header in REDACTED_HEADERS],
            opts=child,
        )
        self.web_acl_arn = acl.arn
        self.web_acl_name = acl.name
        self.register_outputs({"webAclArn": acl.arn})
