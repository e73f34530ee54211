"""SageMakerTrainingTuner against moto (create, describe) and a local control-plane server (what moto lacks).

moto completes a training job at once and does not implement StopTrainingJob; the local server speaks the
same JSON protocol (``X-Amz-Target: SageMaker.*``) with jobs in any state, so boto3's real serializer and
parser run against both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from adapters.aws.sagemaker_training import SageMakerTrainingTuner, training_job_name
from core.errors import BackendError
from core.fine_tuning.job import FineTuneJob
from tests.aws.support import client_kwargs
from tests.fakes import FakeBackend, json_of, make_harness, training_jsonl

if TYPE_CHECKING:
    from mypy_boto3_sagemaker.client import SageMakerClient

pytestmark = pytest.mark.aws

ROLE = "arn:aws:iam::123456789012:role/textnlp-training"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.1-transformers4.36-gpu-py310"
BUCKET = "textnlp-data"


def job(job_id: str = "ftjob-0000000001aa0123456789ab", **kw: Any) -> FineTuneJob:
    fields: dict[str, Any] = {
        "id": job_id,
        "tenant_id": "ten_a",
        "key_id": "key_1",
        "model": "smollm2",
        "training_file": "file-1",
        "training_key": "files/ten_a/file-1",
        "created_at": 1_790_000_000.0,
        "seed": 42,
        "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5},
        "base_model_ref": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    return FineTuneJob(**{**fields, **kw})


def tuner_on(client: SageMakerClient) -> SageMakerTrainingTuner:
    return SageMakerTrainingTuner(
        ROLE, BUCKET, IMAGE, client=client, key_prefix="prod/", source_uri=f"s3://{BUCKET}/code/sourcedir.tar.gz"
    )


@pytest.fixture
def sagemaker(moto: str) -> SageMakerClient:
    import boto3

    return boto3.client("sagemaker", **client_kwargs(moto))


def test_start_creates_a_training_job_on_the_uploaded_files(sagemaker: SageMakerClient) -> None:
    j = job()
    name = tuner_on(sagemaker).start(j, "files/ten_a/file-1", "files/ten_a/file-2")
    assert name == f"textnlp-{j.id}" == training_job_name(j.id)
    assert len(name) <= 63
    described = sagemaker.describe_training_job(TrainingJobName=name)
    assert described["HyperParameters"] == {
        "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "n_epochs": "3",
        "batch_size": "auto",
        "learning_rate_multiplier": "0.5",
        "seed": "42",
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": f"s3://{BUCKET}/code/sourcedir.tar.gz",
    }
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]}
    assert channels == {
        "train": f"s3://{BUCKET}/prod/files/ten_a/file-1",
        "validation": f"s3://{BUCKET}/prod/files/ten_a/file-2",
    }
    assert described["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/prod/models/ten_a/{j.id}/"
    assert described["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert (described["ResourceConfig"]["InstanceType"], described["RoleArn"]) == ("ml.g5.2xlarge", ROLE)
    assert described["StoppingCondition"]["MaxRuntimeInSeconds"] == 86_400


def test_a_completed_job_reports_its_model_route_and_artefact(sagemaker: SageMakerClient) -> None:
    tuner, j = tuner_on(sagemaker), job()
    tuner.start(j, j.training_key, None)
    status = tuner.status(j)
    assert status.state == "succeeded"
    assert status.fine_tuned_model_route == {
        "type": "sagemaker",
        "endpoint_name": f"textnlp-{j.id}",
        "container": "tgi",
    }
    assert (
        status.metadata["artifact_uri"] == f"s3://{BUCKET}/prod/models/ten_a/{j.id}/textnlp-{j.id}/output/model.tar.gz"
    )
    assert status.metadata["deployed"] is False
    assert status.events == ["Starting: Preparing the instances for training"]


def test_an_unknown_job_is_a_backend_error(sagemaker: SageMakerClient) -> None:
    with pytest.raises(BackendError) as err:
        tuner_on(sagemaker).status(job())
    assert (err.value.code, err.value.retryable) == ("backend_misconfigured", False)


def test_the_gateway_trains_on_sagemaker_and_registers_the_model(sagemaker: SageMakerClient) -> None:
    h = make_harness(backend=FakeBackend(), fine_tuner=tuner_on(sagemaker))
    _, key = h.new_tenant("trainer", scopes=frozenset({"fine_tune"}))
    uploaded = json_of(h.upload(training_jsonl(), purpose="fine-tune", key=key))
    created = json_of(
        h.call_json("POST", "/v1/fine_tuning/jobs", {"model": "fake-gen", "training_file": uploaded["id"]}, key=key)
    )
    assert created["status"] == "queued"
    h.clock.advance(10)
    done = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}", key=key))
    assert done["status"] == "succeeded"
    spec = h.gateway.registry.get(done["fine_tuned_model"])
    assert spec.backend["endpoint_name"] == f"textnlp-{created['id']}"
    assert spec.metadata["tenant_id"] == "ten_trainer"
    channel = sagemaker.describe_training_job(TrainingJobName=f"textnlp-{created['id']}")["InputDataConfig"][0]
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/prod/files/ten_trainer/{uploaded['id']}"


def test_boto3_waits_for_the_first_call(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    heavy = "{'boto3', 'botocore', 'sagemaker'}"
    code = f"import sys, adapters.aws.sagemaker_training; print(sorted({heavy} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto)
    tuner = SageMakerTrainingTuner(ROLE, BUCKET, IMAGE, region="us-east-1")
    tuner.start(job(), "files/ten_a/file-1", None)
    assert tuner.client() is tuner.client()
    assert tuner.status(job()).state == "succeeded"


class ControlPlane:
    """SageMaker's JSON control plane for training jobs in any state; ``fail`` queues error answers."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.fail: dict[str, tuple[int, str]] = {}
        self.calls: list[str] = []
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                status, answer = plane.answer(self.headers["X-Amz-Target"].split(".")[-1], body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._http.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def answer(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls.append(action)
        if action in self.fail:
            status, kind = self.fail.pop(action)
            return status, {"__type": kind, "message": f"{kind} (test)"}
        name = body.get("TrainingJobName", "")
        found = self.jobs.get(name)
        if action == "CreateTrainingJob":
            if found is not None:
                return 400, {"__type": "ResourceInUse", "message": f"Training job {name} already exists"}
            self.jobs[name] = {
                "TrainingJobName": name,
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Starting",
            }
            return 200, {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"}
        if found is None:
            kind = "ResourceNotFound" if action == "StopTrainingJob" else "ValidationException"
            return 400, {"__type": kind, "message": f"Requested resource not found: {name}"}
        if action == "StopTrainingJob":
            if found["TrainingJobStatus"] != "InProgress":
                return 400, {"__type": "ValidationException", "message": f"The job is {found['TrainingJobStatus']}"}
            found.update(TrainingJobStatus="Stopping", SecondaryStatus="Stopping")
            return 200, {}
        return 200, found

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    server = ControlPlane()
    yield server
    server.stop()


@pytest.fixture
def local(plane: ControlPlane, aws_env: None) -> SageMakerTrainingTuner:
    import boto3

    plane.jobs.clear()
    plane.fail.clear()
    plane.calls.clear()
    return tuner_on(boto3.client("sagemaker", **client_kwargs(plane.url)))


@pytest.mark.parametrize(
    ("primary", "secondary", "state"),
    [
        ("InProgress", "Starting", "queued"),
        ("InProgress", "LaunchingMLInstances", "queued"),
        ("InProgress", "Downloading", "running"),
        ("InProgress", "Training", "running"),
        ("Stopping", "Stopping", "running"),
        ("Stopped", "Stopped", "cancelled"),
        ("Completed", "Completed", "succeeded"),
    ],
)
def test_training_job_states_map_to_job_states(
    plane: ControlPlane, local: SageMakerTrainingTuner, primary: str, secondary: str, state: str
) -> None:
    j = job()
    local.start(j, j.training_key, None)
    plane.jobs[training_job_name(j.id)].update(TrainingJobStatus=primary, SecondaryStatus=secondary)
    assert local.status(j).state == state


def test_a_failure_carries_its_reason_and_history(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = job()
    local.start(j, j.training_key, None)
    transitions = [
        {"Status": "Starting", "StartTime": 1_790_000_000, "StatusMessage": "Preparing the instances for training"},
        {"Status": "Training", "StartTime": 1_790_000_100},
        {"Status": "Failed", "StartTime": 1_790_000_200, "StatusMessage": "Training job failed"},
    ]
    plane.jobs[training_job_name(j.id)].update(
        TrainingJobStatus="Failed",
        SecondaryStatus="Failed",
        FailureReason="AlgorithmError: CUDA out of memory",
        SecondaryStatusTransitions=transitions,
        FinalMetricDataList=[{"MetricName": "trained_tokens", "Value": 5120.0, "Timestamp": 1_790_000_200}],
    )
    status = local.status(j)
    assert (status.state, status.error, status.trained_tokens) == ("failed", "AlgorithmError: CUDA out of memory", 5120)
    assert status.events == [
        "Starting: Preparing the instances for training",
        "Training",
        "Failed: Training job failed",
    ]
    assert status.fine_tuned_model_route is None


def test_cancel_stops_a_running_job_and_ignores_one_that_ended(
    plane: ControlPlane, local: SageMakerTrainingTuner
) -> None:
    j = job()
    local.start(j, j.training_key, None)
    local.cancel(j)
    assert plane.jobs[training_job_name(j.id)]["TrainingJobStatus"] == "Stopping"
    local.cancel(j)  # already stopping: ValidationException, not an error
    local.cancel(job("ftjob-0000000001aa0000000000ff"))  # never started: ResourceNotFound, not an error
    assert plane.calls.count("StopTrainingJob") == 3


def test_a_repeated_start_is_harmless(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = job()
    assert local.start(j, j.training_key, None) == local.start(j, j.training_key, None)
    assert plane.calls == ["CreateTrainingJob", "CreateTrainingJob"]


@pytest.mark.parametrize(
    ("action", "status", "kind", "code", "retryable"),
    [
        ("DescribeTrainingJob", 400, "ThrottlingException", "backend_throttled", True),
        ("CreateTrainingJob", 400, "ResourceLimitExceeded", "training_capacity", False),
        ("CreateTrainingJob", 500, "InternalFailure", "backend_error", True),
        ("StopTrainingJob", 400, "AccessDeniedException", "backend_misconfigured", False),
    ],
)
def test_errors_map_to_backend_errors(
    plane: ControlPlane, local: SageMakerTrainingTuner, action: str, status: int, kind: str, code: str, retryable: bool
) -> None:
    j = job()
    if action != "CreateTrainingJob":
        local.start(j, j.training_key, None)
    plane.fail[action] = (status, kind)
    call = {
        "CreateTrainingJob": lambda: local.start(j, j.training_key, None),
        "DescribeTrainingJob": lambda: local.status(j),
    }
    with pytest.raises(BackendError) as err:
        call.get(action, lambda: local.cancel(j))()
    assert (err.value.code, err.value.retryable) == (code, retryable)
