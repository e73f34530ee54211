"""template.yaml keeps step with the CDK stack: same handlers, runtime, sizes, environment and IAM actions."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import ROOT, Synth
from tests.infra.template_query import as_list, function, role_statements

pytestmark = pytest.mark.infra

PAIRS = [("ApiFunction", "ApiFunction"), ("BatchFunction", "BatchWorkerFunction")]
# Granted by the CDK stack explicitly and by SAM through managed policies (Tracing, log group, SQS event).
IMPLICIT = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
}


@pytest.fixture(scope="module")
def sam_template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    template: dict[str, Any] = cfn_yaml.load(str(ROOT / "template.yaml"))
    return template


def sam_function(template: dict[str, Any], name: str) -> dict[str, Any]:
    merged = {**template["Globals"]["Function"], **template["Resources"][name]["Properties"]}
    merged["Environment"] = {
        "Variables": {
            **template["Globals"]["Function"]["Environment"]["Variables"],
            **template["Resources"][name]["Properties"].get("Environment", {}).get("Variables", {}),
        }
    }
    return merged


@pytest.mark.parametrize(("sam_name", "cdk_prefix"), PAIRS)
def test_same_function_settings(synth: Synth, sam_template: dict[str, Any], sam_name: str, cdk_prefix: str) -> None:
    sam = sam_function(sam_template, sam_name)
    cdk = function(synth, cdk_prefix)
    for key in ("Handler", "Runtime", "Architectures", "Timeout", "MemorySize"):
        assert sam[key] == cdk[key], key
    assert set(sam["Environment"]["Variables"]) == set(cdk["Environment"]["Variables"]) - {
        "TEXTNLP_SAGEMAKER_ENDPOINT"  # only with the optional endpoint
    }


@pytest.mark.parametrize(("sam_name", "cdk_prefix"), PAIRS)
def test_same_iam_actions(synth: Synth, sam_template: dict[str, Any], sam_name: str, cdk_prefix: str) -> None:
    policies = sam_template["Resources"][sam_name]["Properties"]["Policies"]
    sam_actions = {a for p in policies for s in p["Statement"] for a in as_list(s["Action"])}
    cdk_actions = {a for s in role_statements(synth, cdk_prefix) for a in as_list(s["Action"])}
    assert sam_actions == cdk_actions - IMPLICIT


def test_same_event_wiring(synth: Synth, sam_template: dict[str, Any]) -> None:
    bucket = sam_template["Resources"]["Bucket"]["Properties"]
    (sam_config,) = bucket["NotificationConfiguration"]["QueueConfigurations"]
    _, cdk_bucket = synth.one("AWS::S3::Bucket", "StorageBucket")
    (cdk_config,) = cdk_bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert sam_config["Event"] == cdk_config["Event"]
    assert sam_config["Filter"] == cdk_config["Filter"]
    queue = sam_template["Resources"]["BatchQueue"]["Properties"]
    _, cdk_queue = synth.one("AWS::SQS::Queue", "BatchQueue")
    assert queue["VisibilityTimeout"] == cdk_queue["Properties"]["VisibilityTimeout"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == cdk_queue["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    sqs_event = sam_template["Resources"]["BatchFunction"]["Properties"]["Events"]["Queue"]["Properties"]
    assert sqs_event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
