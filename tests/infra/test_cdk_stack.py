"""The synthesized CDK stack: resources and their key properties (functions, state, API, SageMaker, alarms)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.infra.conftest import ROOT, Synth
from tests.infra.isolated_python import run_probe
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


# --- the code asset: the three packages and their CPython 3.12 bytecode ---------------------------------

PACKAGES = ("core", "adapters", "functions")


def code_asset(synth: Synth) -> Path:
    code = function(synth, "ApiFunction")["Code"]["S3Key"].removesuffix(".zip")
    return synth.outdir / f"asset.{code}"


def sources(root: Path) -> set[str]:
    """The files under ``root`` outside ``__pycache__``, as POSIX paths relative to it."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(root).parts
    }


def test_code_asset_holds_only_the_packages(synth: Synth) -> None:
    from textnlp_cdk.bytecode import NO_BYTECODE

    asset = code_asset(synth)
    assert sorted(p.name for p in asset.iterdir() if p.name != NO_BYTECODE) == sorted(PACKAGES)
    in_repo = {f"{package}/{f}" for package in PACKAGES for f in sources(ROOT / package)}
    in_repo = {f for f in in_repo if not f.endswith((".pyc", ".pyo")) and "/." not in f}
    assert sources(asset) - {NO_BYTECODE} == in_repo - {"functions/aws/requirements.txt"}
    # Nothing compiled on the developer's machine (another Python, other files): 3.12 bytecode of these sources.
    stray = [
        p.relative_to(asset).as_posix()
        for p in asset.rglob("__pycache__/*")
        if not (p.name.endswith(".cpython-312.pyc") and (p.parent.parent / f"{p.name.split('.')[0]}.py").is_file())
    ]
    assert not stray
    assert function(synth, "BatchWorkerFunction")["Code"] == function(synth, "ApiFunction")["Code"]


BYTECODE_PROBE = """
import importlib, importlib.util, json, marshal, sys
from pathlib import Path
asset = Path(sys.argv[1]).resolve()
compiled = []
sys.addaudithook(lambda event, args: compiled.append(args[1]) if event == "compile" else None)
headers = {}
for pyc in asset.rglob("__pycache__/*.pyc"):
    data = pyc.read_bytes()
    code = marshal.loads(data[16:])
    magic = data[:4] == importlib.util.MAGIC_NUMBER
    headers[pyc.relative_to(asset).as_posix()] = [magic, int.from_bytes(data[4:8], "little"), code.co_filename]
imported = []
for package in ("core", "adapters", "functions"):
    for py in sorted((asset / package).rglob("*.py")):
        parts = py.relative_to(asset).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        try:
            importlib.import_module(name)
        except Exception:  # a third-party import (the layer is not here)
            continue
        imported.append(name)
elsewhere = [n for n in imported if not Path(sys.modules[n].__file__).resolve().is_relative_to(asset)]
mine = [f for f in compiled if str(asset) in f or f.startswith("/var/task")]
magic = importlib.util.MAGIC_NUMBER.hex()
print(json.dumps({"headers": headers, "imported": imported, "elsewhere": elsewhere, "compiled": mine, "magic": magic}))
"""


def test_code_asset_bytecode_is_what_python312_loads(synth: Synth, tmp_path: Path) -> None:
    """Every module has its unchecked-hash .pyc for the runtime's magic number, recording its Lambda path; a
    python3.12 importing the asset (``-B``: no writing) compiles no module of it from source."""
    from textnlp_cdk.bytecode import NO_BYTECODE, python312

    interpreter = python312()
    asset = code_asset(synth)
    if interpreter is None:
        assert (asset / NO_BYTECODE).is_file(), "built without bytecode but not marked"
        pytest.skip("no CPython 3.12 (PATH, pyenv or TEXTNLP_PYTHON312): the asset has no .pyc, as its marker says")
    assert not (asset / NO_BYTECODE).exists()
    assert (asset / "core" / "__pycache__" / "app.cpython-312.pyc").is_file()
    modules = sorted(asset.rglob("*.py"))
    missing = [
        str(m.relative_to(asset))
        for m in modules
        if not (m.parent / "__pycache__" / f"{m.stem}.cpython-312.pyc").is_file()
    ]
    assert not missing, f"no .pyc for {missing}"
    probe = run_probe(interpreter, BYTECODE_PROBE, asset, cwd=tmp_path)
    assert len(probe["headers"]) == len(modules)
    for pyc, (magic, flags, filename) in probe["headers"].items():
        assert magic, f"{pyc}: not python3.12's magic number {probe['magic']}"
        assert flags == 0b01, f"{pyc}: flags {flags:#b}, not unchecked-hash"
        assert filename.startswith("/var/task/"), f"{pyc}: compiled as {filename}"
    assert {"core.domain", "core.settings", "core.validation.report"} <= set(probe["imported"])
    assert len(probe["imported"]) >= 20, probe["imported"]
    assert not probe["elsewhere"], "imported from outside the asset"
    assert not probe["compiled"], f"compiled from source despite the .pyc: {probe['compiled']}"


def test_code_asset_hash_follows_the_code_and_the_bytecode(
    cdk: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textnlp_cdk import bytecode, compute

    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "app.py").write_text("x = 1\n")
    first = compute.code_hash(tmp_path)
    for junk in ("core/__pycache__/app.cpython-311.pyc", "core/.DS_Store", "tests/test_app.py", "README.md"):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_text("not in the asset")
    assert compute.code_hash(tmp_path) == first, "files outside the asset do not change its hash"
    (tmp_path / "core" / "app.py").write_text("x = 2\n")
    changed = compute.code_hash(tmp_path)
    assert changed != first
    monkeypatch.setattr(bytecode, "python312", lambda: None)
    assert compute.code_hash(tmp_path) != changed, "built without .pyc: another asset"


def test_docker_fallback_builds_the_same_code_asset(synth: Synth, tmp_path: Path) -> None:
    """The Docker command (never run today: local bundling does not decline) gives the same files, byte for
    byte, as the local bundling; here with this machine's shell and python3.12."""
    from textnlp_cdk.bytecode import python312
    from textnlp_cdk.compute import docker_code_command

    interpreter = python312()
    if interpreter is None:
        pytest.skip("no CPython 3.12 (PATH, pyenv or TEXTNLP_PYTHON312)")
    (tmp_path / "out").mkdir()
    command = docker_code_command(str(ROOT), str(tmp_path / "out"), str(interpreter))
    done = subprocess.run(
        ["bash", "-c", command],
        env={"PATH": os.defpath, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    asset = code_asset(synth)

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    built, local = tree(tmp_path / "out"), tree(asset)
    assert sorted(built) == sorted(local)
    assert [f for f in built if built[f] != local[f]] == []


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


def test_the_api_function_answers_before_api_gateway_and_its_deadline_bounds_a_default_model(synth: Synth) -> None:
    """The function's time, API Gateway's and the deadline rules of core.deadlines agree.

    API Gateway answers a bare 503 itself once its integration has run 30 s (an HTTP API's hard limit), and
    Lambda stops the function at its timeout: the function must not outlive the integration, and the api
    handler (functions/aws/apigw.deadline_of) assumes exactly that integration timeout. A model call then gets
    the time left less the settle margin. The default model timeout (60 s, SageMaker's own limit; batch lines
    have 900 s) is longer than that, so on this path the deadline, not the model's timeout, ends a hanging call:
    504 with the record written (tests/aws/test_api_deadline.py), and most of the function's time goes to it.
    """
    from core.domain import ModelSpec
    from core.schemas.admin import ModelIn
    from core.settings import GatewaySettings
    from functions.aws.apigw import INTEGRATION_TIMEOUT_S

    timeout = function(synth, "ApiFunction")["Timeout"]
    (integration,) = synth.resources("AWS::ApiGatewayV2::Integration").values()
    assert integration["Properties"].get("TimeoutInMillis", 30_000) / 1000 == INTEGRATION_TIMEOUT_S
    assert timeout == INTEGRATION_TIMEOUT_S  # longer: API Gateway's 503 first; shorter: time the caller loses
    margin = GatewaySettings().deadline_margin_s
    default_timeout = {f.name: f.default for f in dataclasses.fields(ModelSpec)}["timeout_s"]
    assert ModelIn.model_fields["timeout_s"].default == default_timeout
    first_attempt = min(default_timeout, timeout - margin)
    assert first_attempt == timeout - margin  # the deadline is the bound of a default model here
    assert first_attempt >= 0.9 * timeout  # and it leaves the model all but the margin


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
