"""Least privilege and cdk-nag: no wildcard actions, exact grants per function, every acknowledgment justified."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import SYNTH_CONTEXT, Synth
from tests.infra.template_query import as_list, flat, grants, logical, role_statements

pytestmark = pytest.mark.infra


def all_policy_documents(synth: Synth) -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for name, resource in synth.raw["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append((name, props["PolicyDocument"]))
        if resource["Type"] == "AWS::IAM::Role":
            documents += [(name, p["PolicyDocument"]) for p in props.get("Policies", [])]
    return documents


def test_no_iam_statement_has_a_wildcard_action(synth: Synth) -> None:
    documents = all_policy_documents(synth)
    assert documents
    for name, document in documents:
        for statement in document["Statement"]:
            for action in as_list(statement.get("Action", [])):
                assert "*" not in action, f"{name}: {action}"
            assert "NotAction" not in statement, name


def test_no_managed_policies_on_roles(synth: Synth) -> None:
    for name, role in synth.resources("AWS::IAM::Role").items():
        assert "ManagedPolicyArns" not in role["Properties"], name


def test_api_permissions(synth: Synth) -> None:
    table = grants(role_statements(synth, "ApiFunction"))
    table_arn = flat({"Fn::GetAtt": [logical(synth, "AWS::DynamoDB::Table", "StorageTable"), "Arn"]})
    for action in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query"):
        assert table_arn in table[f"dynamodb:{action}"]
        assert any("/index/gsi1" in r for r in table[f"dynamodb:{action}"])
    assert "dynamodb:Scan" not in table, "nothing scans the table: listings query gsi1"
    assert not {a for a in table if a.startswith("dynamodb:Batch") or a.startswith("dynamodb:Transact")}
    assert all("/files/*" in r for r in table["s3:PutObject"])
    assert all("/files/*" in r for r in table["s3:DeleteObject"])
    assert {a for a in table if a.startswith("s3:")} == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
    }
    for action in ("sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream"):
        assert all(":endpoint/textnlp-" in r for r in table[action])
    training_role = logical(synth, "AWS::IAM::Role", "TrainingRole")
    assert table["iam:PassRole"] == [flat({"Fn::GetAtt": [training_role, "Arn"]})]
    signing = flat({"Ref": logical(synth, "AWS::SecretsManager::Secret", "CredentialsSigningKeys")})
    admin = flat({"Ref": logical(synth, "AWS::SecretsManager::Secret", "CredentialsAdminKey")})
    assert sorted(table["secretsmanager:GetSecretValue"]) == sorted([signing, admin])
    assert table["secretsmanager:PutSecretValue"] == [signing]
    queue = flat({"Fn::GetAtt": [logical(synth, "AWS::SQS::Queue", "BatchQueue"), "Arn"]})
    assert table["sqs:SendMessage"] == [queue]


# The fine-tune tuner (api function): what each SageMaker action is allowed on, by resource type.
TUNER_GRANTS = {
    "sagemaker:CreateTrainingJob": {"training-job/textnlp-*"},
    "sagemaker:DescribeTrainingJob": {"training-job/textnlp-*"},
    "sagemaker:StopTrainingJob": {"training-job/textnlp-*"},
    "sagemaker:AddTags": {"training-job/textnlp-*"},
    "sagemaker:ListTags": {"training-job/textnlp-*"},
    "sagemaker:CreateModel": {"model/textnlp-ftjob-*"},
    "sagemaker:DeleteModel": {"model/textnlp-ftjob-*"},
    "sagemaker:CreateEndpointConfig": {"endpoint-config/textnlp-ftjob-*"},
    "sagemaker:DeleteEndpointConfig": {"endpoint-config/textnlp-ftjob-*"},
    "sagemaker:CreateEndpoint": {"endpoint/textnlp-ftjob-*", "endpoint-config/textnlp-ftjob-*"},
    "sagemaker:DescribeEndpoint": {"endpoint/textnlp-ftjob-*"},
    "sagemaker:DeleteEndpoint": {"endpoint/textnlp-ftjob-*"},
}


def sagemaker_resource(arn: str) -> str:
    """``<type>/<name>`` of a flattened SageMaker ARN (``...:sagemaker:<region>:<account>:<type>/<name>"]]}``)."""
    assert ":sagemaker:" in arn, arn
    return arn.rsplit(":", 1)[-1].split('"')[0]


def test_the_tuner_may_train_deploy_and_undeploy_its_own_resources_only(synth: Synth) -> None:
    table = grants(role_statements(synth, "ApiFunction"))
    tuner = {a: {sagemaker_resource(r) for r in table[a]} for a in table if a in TUNER_GRANTS}
    assert tuner == TUNER_GRANTS
    invoke_only = {a for a in table if a.startswith("sagemaker:")} - set(TUNER_GRANTS)
    assert invoke_only == {"sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream"}
    batch = grants(role_statements(synth, "BatchWorkerFunction"))
    assert not set(TUNER_GRANTS) & set(batch), "the batch function runs no tuner"


def test_the_training_role_writes_endpoint_logs(synth: Synth) -> None:
    _, role = synth.one("AWS::IAM::Role", "TrainingRole")
    role_id = logical(synth, "AWS::IAM::Role", "TrainingRole")
    statements = [
        s
        for policy in synth.resources("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    logs = grants(statements)["logs:PutLogEvents"]
    assert any("/aws/sagemaker/TrainingJobs*" in r for r in logs)
    assert any("/aws/sagemaker/Endpoints*" in r for r in logs)
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }


def test_pass_role_is_limited_to_sagemaker(synth: Synth) -> None:
    (statement,) = [s for s in role_statements(synth, "ApiFunction") if s["Action"] == "iam:PassRole"]
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_batch_permissions(synth: Synth) -> None:
    table = grants(role_statements(synth, "BatchWorkerFunction"))
    idempotency = flat({"Fn::GetAtt": [logical(synth, "AWS::DynamoDB::Table", "StorageIdempotencyTable"), "Arn"]})
    for action in ("GetItem", "PutItem", "UpdateItem", "DeleteItem"):
        assert idempotency in table[f"dynamodb:{action}"]
    assert "dynamodb:Scan" not in table
    assert not {a for a in table if a.startswith("secretsmanager:") or a.startswith("iam:")}
    assert not {a for a in table if a.startswith("sagemaker:") and "Training" in a}
    assert all("/batch-output/*" in r or "/files/*" in r for r in table["s3:PutObject"])
    assert all("/batch-input/*" in r or "/files/*" in r for r in table["s3:GetObjectVersion"])
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage"):
        assert action in table


def acknowledgments(synth: Synth) -> dict[tuple[str, str], str]:
    """(construct path, rule) -> reason, as recorded by Validations.of(...).acknowledge()."""
    from aws_cdk import Validations

    key = Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    found: dict[tuple[str, str], str] = {}
    for construct in synth.app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == key:
                for rule, reason in entry.data.items():
                    found[(construct.node.path, rule)] = reason
    return found


def test_cdk_nag_aws_solutions_passes(synth: Synth) -> None:
    from cdk_nag import AwsSolutionsChecks

    report = AwsSolutionsChecks().validate_scope(synth.app)
    problems = [
        f"{v.rule_name} at {[r.construct_path for r in v.violating_resources]}: {v.description}"
        for v in report.violations
    ]
    assert report.success, "\n".join(problems)


def test_every_acknowledgment_has_a_reason(synth: Synth) -> None:
    found = acknowledgments(synth)
    assert found, "expected acknowledged findings (IAM5 object prefixes, L1, APIG4, SMG4)"
    for (path, rule), reason in found.items():
        assert isinstance(reason, str)
        assert len(reason.strip()) >= 20, f"{path} {rule}: {reason!r}"
    rules = {rule.split("[")[0].split("::")[-1] for _, rule in found}
    assert rules <= {
        "AwsSolutions-IAM5",
        "AwsSolutions-L1",
        "AwsSolutions-APIG4",
        "AwsSolutions-SMG4",
    }, rules


def test_every_acknowledgment_answers_a_finding(synth: Synth) -> None:
    """With acknowledgments off (``-c nag_acknowledgments=off``) cdk-nag must report exactly what was acknowledged."""
    from cdk_nag import AwsSolutionsChecks
    from textnlp_cdk import build_app

    bare, _ = build_app({**SYNTH_CONTEXT, "nag_acknowledgments": "off"}, outdir=str(synth.outdir / "audit"), nag=False)
    report = AwsSolutionsChecks().validate_scope(bare)
    findings = {(r.construct_path, v.rule_name) for v in report.violations for r in v.violating_resources}
    stale = [
        (path, rule)
        for path, rule in acknowledgments(synth)
        if not any(rule.endswith(found) and where.startswith(path) for where, found in findings)
    ]
    assert not stale, f"acknowledged but never reported: {stale}"


def test_default_context_passes_cdk_nag(synth: Synth) -> None:
    """cdk.json alone (stage dev, no SageMaker endpoint) builds and passes the AwsSolutions pack too."""
    from cdk_nag import AwsSolutionsChecks
    from textnlp_cdk import build_app

    app, stack = build_app(outdir=str(synth.outdir / "default"), nag=False)
    report = AwsSolutionsChecks().validate_scope(app)
    assert report.success, [v.rule_name for v in report.violations]
    assert stack.stack_name == "TextNlp-dev"
    assert not [c for c in stack.node.find_all() if c.node.id == "SageMaker"]
