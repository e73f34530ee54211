"""Queries over a synthesized template: a function's properties, its role's statements, flattened ARNs."""

from __future__ import annotations

import json
from typing import Any

from tests.infra.conftest import Synth


def function(synth: Synth, prefix: str) -> dict[str, Any]:
    return synth.one("AWS::Lambda::Function", prefix)[1]["Properties"]


def role_statements(synth: Synth, function_prefix: str) -> list[dict[str, Any]]:
    role_id = function(synth, function_prefix)["Role"]["Fn::GetAtt"][0]
    statements: list[dict[str, Any]] = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def flat(value: Any) -> str:
    """A resource ARN expression as one string, for substring checks."""
    return json.dumps(value, sort_keys=True)


def grants(statements: list[dict[str, Any]]) -> dict[str, list[str]]:
    """action -> the resources it is allowed on (flattened)."""
    table: dict[str, list[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            table.setdefault(action, []).extend(flat(r) for r in as_list(statement["Resource"]))
    return table


def logical(synth: Synth, type_name: str, prefix: str) -> str:
    return synth.one(type_name, prefix)[0]
