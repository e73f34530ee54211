"""The synthesized CDK stack: resources and their key properties (functions, state, API, SageMaker, alarms)."""

from __future__ import annotations

import json

import pytest

from tests.infra.conftest import Synth
from tests.infra.template_query import flat, function, logical

pytestmark = pytest.mark.infra

API_ENV = {
    "TEXTNLP_TABLE",
    "TEXTNLP_BUCKET",
    "TEXTNLP_BATCH_QUEUE_URL",
    "TEXTNLP_SIGNING_KEYS_SECRET_ARN",
    "TEXTNLP_ADMIN_KEY_SECRET_ARN",
    "TEXTNLP_SAGEMAKER_ROLE_ARN",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
}
BATCH_ENV = {
    "TEXTNLP_TABLE",
    "TEXTNLP_IDEMPOTENCY_TABLE",
    "TEXTNLP_BUCKET",
    "TEXTNLP_BATCH_QUEUE_URL",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
}


# --- functions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "handler", "timeout", "memory", "env"),
    [
        ("ApiFunction", "functions.aws.api.handler", 30, 1024, API_ENV),
        ("BatchWorkerFunction", "functions.aws.batch.handler", 900, 2048, BATCH_ENV),
    ],
)
def test_functions(synth: Synth, prefix: str, handler: str, timeout: int, memory: int, env: set[str]) -> None:
    props = function(synth, prefix)
    assert props["Handler"] == handler
    assert props["Runtime"] == "python3.12"
    assert props["Architectures"] == ["arm64"]
    assert props["Timeout"] == timeout
    assert props["MemorySize"] == memory
    assert props["TracingConfig"] == {"Mode": "Active"}
    variables = props["Environment"]["Variables"]
    assert env <= set(variables), env - set(variables)
    assert variables["POWERTOOLS_SERVICE_NAME"] == "textnlp"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "TextNLP"
    layer = logical(synth, "AWS::Lambda::LayerVersion", "Dependencies")
    assert props["Layers"] == [{"Ref": layer}]
    assert "LogGroup" in props["LoggingConfig"]


def test_batch_function_gets_no_secrets(synth: Synth) -> None:
    variables = function(synth, "BatchWorkerFunction")["Environment"]["Variables"]
    assert not {k for k in variables if "SECRET" in k}


def test_dependency_layer(synth: Synth) -> None:
    synth.template.has_resource_properties(
        "AWS::Lambda::LayerVersion", {"CompatibleRuntimes": ["python3.12"], "CompatibleArchitectures": ["arm64"]}
    )


def test_code_asset_holds_only_the_packages(synth: Synth) -> None:
    code = function(synth, "ApiFunction")["Code"]["S3Key"].removesuffix(".zip")
    asset = synth.outdir / f"asset.{code}"
    assert sorted(p.name for p in asset.iterdir()) == ["adapters", "core", "functions"]
    assert not list(asset.rglob("__pycache__"))
    assert not list(asset.rglob("*.pyc"))
    assert function(synth, "BatchWorkerFunction")["Code"] == function(synth, "ApiFunction")["Code"]


def test_sqs_event_source(synth: Synth) -> None:
    _, mapping = synth.one("AWS::Lambda::EventSourceMapping", "BatchWorkerFunction")
    props = mapping["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= props["BatchSize"] <= 10
    assert props["ScalingConfig"]["MaximumConcurrency"] >= 2
    assert props["EventSourceArn"] == {"Fn::GetAtt": [logical(synth, "AWS::SQS::Queue", "BatchQueue"), "Arn"]}


# --- state ---------------------------------------------------------------------------------------------


def test_single_table(synth: Synth) -> None:
    _, table = synth.one("AWS::DynamoDB::Table", "StorageTable")
    props = table["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["DeletionProtectionEnabled"] is True  # the shared synth is stage=prod
    (gsi,) = props["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "gsi1"
    assert gsi["KeySchema"] == [
        {"AttributeName": "gsi1pk", "KeyType": "HASH"},
        {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
    ]
    types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
    assert types == {"pk": "S", "sk": "S", "gsi1pk": "S", "gsi1sk": "S"}
    assert table["DeletionPolicy"] == "Retain"


def test_idempotency_table(synth: Synth) -> None:
    _, table = synth.one("AWS::DynamoDB::Table", "StorageIdempotencyTable")
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"


def test_bucket(synth: Synth) -> None:
    bucket_id, bucket = synth.one("AWS::S3::Bucket", "StorageBucket")
    props = bucket["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert "LoggingConfiguration" in props
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-batch-input"]["Prefix"] == "batch-input/"
    assert rules["expire-batch-output"]["Prefix"] == "batch-output/"
    assert rules["expire-batch-input"]["ExpirationInDays"] == 30
    assert rules["models-to-infrequent-access"]["Transitions"][0]["StorageClass"] == "STANDARD_IA"
    assert "NoncurrentVersionExpiration" in rules["expire-noncurrent-versions"]
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1
    policies = [
        p["Properties"]["PolicyDocument"]
        for p in synth.resources("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket_id}
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for doc in policies
        for s in doc["Statement"]
    ), "the bucket must refuse plain HTTP"


def test_upload_notification_goes_to_the_queue(synth: Synth) -> None:
    _, bucket = synth.one("AWS::S3::Bucket", "StorageBucket")
    queue = logical(synth, "AWS::SQS::Queue", "BatchQueue")
    (config,) = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Event"] == "s3:ObjectCreated:*"
    assert config["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}
    rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": "batch-input/", "suffix": ".jsonl"}
    policy_id, policy = synth.one("AWS::SQS::QueuePolicy", "BatchQueuePolicy")
    assert policy_id in bucket["DependsOn"]
    (allow,) = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert "aws:SourceArn" in allow["Condition"]["ArnEquals"]
    # No CDK custom resource (BucketNotificationsHandler Lambda) is needed for this wiring.
    assert len(synth.resources("AWS::Lambda::Function")) == 2


def test_batch_queue_and_dead_letters(synth: Synth) -> None:
    _, queue = synth.one("AWS::SQS::Queue", "BatchQueue")
    dlq = logical(synth, "AWS::SQS::Queue", "BatchDeadLetters")
    props = queue["Properties"]
    assert props["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]}, "maxReceiveCount": 3}
    assert props["VisibilityTimeout"] >= 6 * function(synth, "BatchWorkerFunction")["Timeout"]
    assert props["SqsManagedSseEnabled"] is True
    assert synth.one("AWS::SQS::Queue", "BatchDeadLetters")[1]["Properties"]["SqsManagedSseEnabled"] is True


def test_secrets(synth: Synth) -> None:
    assert len(synth.resources("AWS::SecretsManager::Secret")) == 2


# --- HTTP API ------------------------------------------------------------------------------------------


def test_http_api(synth: Synth) -> None:
    (api,) = synth.resources("AWS::ApiGatewayV2::Api").values()
    assert api["Properties"]["ProtocolType"] == "HTTP"
    assert "CorsConfiguration" not in api["Properties"]
    (route,) = synth.resources("AWS::ApiGatewayV2::Route").values()
    assert route["Properties"]["RouteKey"] == "$default"
    (integration,) = synth.resources("AWS::ApiGatewayV2::Integration").values()
    assert integration["Properties"]["PayloadFormatVersion"] == "2.0"
    assert integration["Properties"]["IntegrationType"] == "AWS_PROXY"
    (stage,) = synth.resources("AWS::ApiGatewayV2::Stage").values()
    props = stage["Properties"]
    assert props["StageName"] == "$default"
    assert props["AutoDeploy"] is True
    assert props["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert props["DefaultRouteSettings"]["ThrottlingBurstLimit"] > 0
    log_format = json.loads(props["AccessLogSettings"]["Format"])
    assert log_format["requestId"] == "$context.requestId"
    access_logs = props["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert synth.raw["Resources"][access_logs]["Properties"]["RetentionInDays"] > 0
    assert "ApiUrl" in synth.raw["Outputs"]


# --- SageMaker -----------------------------------------------------------------------------------------


def test_sagemaker_endpoint(synth: Synth) -> None:
    (model,) = synth.resources("AWS::SageMaker::Model").values()
    container = model["Properties"]["PrimaryContainer"]
    assert "HF_MODEL_ID" in container["Environment"]
    assert container["Environment"]["SM_NUM_GPUS"] == "1"
    assert "huggingface-pytorch-tgi-inference" in flat(container["Image"])
    (config,) = synth.resources("AWS::SageMaker::EndpointConfig").values()
    (variant,) = config["Properties"]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    (endpoint,) = synth.resources("AWS::SageMaker::Endpoint").values()
    assert endpoint["Properties"]["EndpointName"] == "textnlp-prod-tgi-small"


@pytest.mark.usefixtures("cdk")
def test_instance_sizes() -> None:
    from textnlp_cdk.sagemaker_endpoint import SIZES

    assert {size: s.instance_type for size, s in SIZES.items()} == {
        "small": "ml.g5.xlarge",
        "medium": "ml.g5.2xlarge",
        "large": "ml.g5.12xlarge",
        "xlarge": "ml.p4d.24xlarge",
    }


# --- observability -------------------------------------------------------------------------------------


def test_dashboard_shows_the_gateway_and_the_gpus(synth: Synth) -> None:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = flat(dashboard["Properties"]["DashboardBody"])
    for needle in (
        "tokens_generated_total",
        "request_latency_seconds",
        "requests_total",
        "cache_hits_total",
        "cache_misses_total",
        "limit_refusals_total",
        "TextNLP",
        "p50",
        "p95",
        "p99",
        "Invocations",
        "GPUUtilization",
        "GPUMemoryUtilization",
        "/aws/sagemaker/Endpoints",
    ):
        assert needle in body, needle


def test_alarms_notify_the_topic(synth: Synth) -> None:
    topic = logical(synth, "AWS::SNS::Topic", "ObservabilityAlarms")
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    names = set()
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": topic}]
        names.add(props.get("MetricName") or flat(props.get("Metrics")))
    text = " ".join(names)
    for needle in ("5xx", "Latency", "ApproximateNumberOfMessagesVisible", "Invocation5XXErrors", "ModelLatency"):
        assert needle in text, needle
    assert len(alarms) == 5
    topic_props = synth.raw["Resources"][topic]["Properties"]
    assert "KmsMasterKeyId" in topic_props


def test_dead_letter_alarm_fires_on_one_message(synth: Synth) -> None:
    dlq = logical(synth, "AWS::SQS::Queue", "BatchDeadLetters")
    (alarm,) = [
        a["Properties"]
        for a in synth.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
    ]
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq, "QueueName"]}}]
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
