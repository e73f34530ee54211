"""cdk-nag acknowledgments: each carries its reason; each IAM wildcard is tied to the statement granting it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_iam as iam
from constructs import IConstruct

# ``cdk synth -c nag_acknowledgments=off`` drops every acknowledgment: cdk-nag then lists each accepted finding.
AUDIT_CONTEXT = "nag_acknowledgments"


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Accept one cdk-nag finding on ``scope`` and everything under it, saying why."""
    if len(reason.strip()) < 20:
        raise ValueError(f"{rule}: give a real reason, not {reason!r}")
    if str(scope.node.try_get_context(AUDIT_CONTEXT)).lower() in ("off", "false"):
        return
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


def flatten(value: Any) -> str:
    """A resolved CloudFormation value as cdk-nag prints it in a finding (``<Logical.Attr>/prefix/*``)."""
    if isinstance(value, str):
        return value.replace("${", "<").replace("}", ">")
    if isinstance(value, dict):
        if "Fn::Join" in value:
            delimiter, items = value["Fn::Join"]
            return str(delimiter).join(flatten(item) for item in items)
        if "Fn::Sub" in value:
            return flatten(value["Fn::Sub"])
        if "Fn::GetAtt" in value:
            logical, attribute = value["Fn::GetAtt"]
            return f"<{flatten(logical)}.{flatten(attribute)}>"
        if "Fn::ImportValue" in value:
            return flatten(value["Fn::ImportValue"])
        if "Ref" in value:
            return f"<{flatten(value['Ref'])}>"
    return json.dumps(value, separators=(",", ":"))


def allow(
    role: iam.IRole,
    actions: Sequence[str],
    resources: Sequence[str],
    *,
    why: str | None = None,
    conditions: dict[str, Any] | None = None,
) -> iam.PolicyStatement:
    """Add one Allow statement to ``role``; a wildcard in a resource needs ``why``, which becomes its acknowledgment."""
    if any("*" in action for action in actions):
        raise ValueError(f"wildcard action in {list(actions)}: name each action")
    statement = iam.PolicyStatement(actions=list(actions), resources=list(resources), conditions=conditions)
    role.add_to_principal_policy(statement)
    stack = Stack.of(role)
    for resource in resources:
        flat = flatten(stack.resolve(resource))
        if "*" in flat:
            if why is None:
                raise ValueError(f"{flat}: a wildcard resource needs a reason")
            acknowledge(role, f"AwsSolutions-IAM5[Resource::{flat}]", why)
    return statement
