"""SageMakerTrainingTuner against moto (create, describe, deploy) and a local control-plane server (what moto lacks).

moto completes a training job at once, puts a new endpoint in service at once, overwrites a resource created
twice and does not implement StopTrainingJob; the local server speaks the same JSON protocol
(``X-Amz-Target: SageMaker.*``) with jobs and endpoints in any state and SageMaker's own refusals
(``Cannot create already existing ...``, ``Could not find ...``), so boto3's real serializer and parser run
against both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from adapters.aws.sagemaker_training import (
    CANCELLED_TAG,
    DEFAULT_INFERENCE_IMAGE,
    SageMakerTrainingTuner,
    resource_name,
    training_job_name,
)
from core.errors import BackendError
from core.fine_tuning.job import FineTuneJob
from tests.aws.support import REGION, client_kwargs
from tests.fakes import FakeBackend, json_of, make_harness, training_jsonl

if TYPE_CHECKING:
    from mypy_boto3_sagemaker.client import SageMakerClient

pytestmark = pytest.mark.aws

ROLE = "arn:aws:iam::123456789012:role/textnlp-training"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.1-transformers4.36-gpu-py310"
BUCKET = "textnlp-data"
JOB_ID = "ftjob-0000000001aa0123456789ab"
NAME = f"textnlp-{JOB_ID}"
ARTIFACT = f"s3://{BUCKET}/prod/models/ten_a/{JOB_ID}/{NAME}/output/model.tar.gz"
ROUTE = {"type": "sagemaker", "endpoint_name": NAME, "container": "tgi", "variant": "AllTraffic", "schema": "messages"}
DEPLOYING = f"Deploying the model to endpoint {NAME}"
CREATES = ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
DELETES = ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]
MOTO_GPU = "ml.g4dn.xlarge"


def job(job_id: str = JOB_ID, **kw: Any) -> FineTuneJob:
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


def tuner_on(client: SageMakerClient, **kw: Any) -> SageMakerTrainingTuner:
    return SageMakerTrainingTuner(
        ROLE, BUCKET, IMAGE, client=client, key_prefix="prod/", source_uri=f"s3://{BUCKET}/code/sourcedir.tar.gz", **kw
    )


def moto_tuner(client: SageMakerClient) -> SageMakerTrainingTuner:
    """moto's list of instance types predates ml.g5 (the default): its endpoints get a g4dn."""
    return tuner_on(client, inference_instance_type=MOTO_GPU)


def record_calls(client: SageMakerClient) -> list[str]:
    """The operations ``client`` sends, in order (botocore's before-call event, so nothing is replaced)."""
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    client.meta.events.register("before-call.sagemaker", record)
    return calls


@pytest.fixture
def sagemaker(moto: str) -> SageMakerClient:
    import boto3

    return boto3.client("sagemaker", **client_kwargs(moto))


def test_start_creates_a_training_job_on_the_uploaded_files(sagemaker: SageMakerClient) -> None:
    j = job()
    name = moto_tuner(sagemaker).start(j, "files/ten_a/file-1", "files/ten_a/file-2")
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


def test_a_completed_job_deploys_its_model_once_however_often_it_is_polled(sagemaker: SageMakerClient) -> None:
    tuner, j = moto_tuner(sagemaker), job()
    tuner.start(j, j.training_key, None)
    calls = record_calls(sagemaker)
    first = tuner.status(j)
    assert (first.state, first.fine_tuned_model_route) == ("running", None)
    assert first.events == ["Starting: Preparing the instances for training", DEPLOYING]
    later = [tuner.status(j) for _ in range(3)]  # moto puts the endpoint in service at once
    assert [c for c in calls if c.startswith("Create")] == CREATES
    assert {s.state for s in later} == {"succeeded"}
    model = sagemaker.describe_model(ModelName=NAME)
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == DEFAULT_INFERENCE_IMAGE.format(region=REGION)
    assert model["PrimaryContainer"]["ModelDataUrl"] == ARTIFACT
    assert model["PrimaryContainer"]["Environment"]["HF_MODEL_ID"] == "/opt/ml/model"
    (variant,) = sagemaker.describe_endpoint_config(EndpointConfigName=NAME)["ProductionVariants"]
    assert (variant["ModelName"], variant["VariantName"]) == (NAME, "AllTraffic")
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == (MOTO_GPU, 1)
    assert sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == NAME


def test_an_endpoint_in_service_is_the_model_route(sagemaker: SageMakerClient) -> None:
    tuner, j = moto_tuner(sagemaker), job()
    tuner.start(j, j.training_key, None)
    tuner.status(j)
    status = tuner.status(j)
    assert status.state == "succeeded"
    assert status.fine_tuned_model_route == ROUTE
    assert (status.metadata["artifact_uri"], status.metadata["deployed"]) == (ARTIFACT, True)
    assert status.metadata["training_job_name"] == NAME
    assert status.events == [
        "Starting: Preparing the instances for training",
        DEPLOYING,
        f"Endpoint {NAME} is in service",
    ]


def test_the_route_is_one_the_sagemaker_backend_serves(sagemaker: SageMakerClient) -> None:
    from adapters.aws.sagemaker import SageMakerRoute

    parsed = SageMakerRoute.parse(moto_tuner(sagemaker).route(NAME))
    assert (parsed.endpoint_name, parsed.container, parsed.variant, parsed.schema) == (
        NAME,
        "tgi",
        "AllTraffic",
        "messages",
    )


def test_cancel_while_deploying_deletes_the_endpoint_config_and_model(sagemaker: SageMakerClient) -> None:
    tuner, j = moto_tuner(sagemaker), job()
    tuner.start(j, j.training_key, None)
    assert tuner.status(j).state == "running"  # model, config and endpoint created
    tuner.cancel(j)
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert sagemaker.list_models()["Models"] == []
    calls = record_calls(sagemaker)
    assert tuner.status(j).state == "cancelled"  # a late poll finds the job's tag and creates nothing
    assert not [c for c in calls if c.startswith("Create")]


def test_an_unknown_job_is_a_backend_error(sagemaker: SageMakerClient) -> None:
    with pytest.raises(BackendError) as err:
        moto_tuner(sagemaker).status(job())
    assert (err.value.code, err.value.retryable) == ("backend_misconfigured", False)


def test_the_gateway_trains_on_sagemaker_and_registers_the_model(sagemaker: SageMakerClient) -> None:
    h = make_harness(backend=FakeBackend(), fine_tuner=moto_tuner(sagemaker))
    _, key = h.new_tenant("trainer", scopes=frozenset({"fine_tune"}))
    uploaded = json_of(h.upload(training_jsonl(), purpose="fine-tune", key=key))
    created = json_of(
        h.call_json("POST", "/v1/fine_tuning/jobs", {"model": "fake-gen", "training_file": uploaded["id"]}, key=key)
    )
    assert created["status"] == "queued"
    h.clock.advance(10)
    deploying = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}", key=key))
    assert (deploying["status"], deploying["fine_tuned_model"]) == ("running", None)
    h.clock.advance(10)
    done = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}", key=key))
    assert done["status"] == "succeeded"
    spec = h.gateway.registry.get(done["fine_tuned_model"])
    name = f"textnlp-{created['id']}"
    assert spec.backend == {**ROUTE, "endpoint_name": name}
    assert spec.metadata["tenant_id"] == "ten_trainer"
    assert sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    channel = sagemaker.describe_training_job(TrainingJobName=name)["InputDataConfig"][0]
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/prod/files/ten_trainer/{uploaded['id']}"
    events = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}/events", key=key))["data"]
    assert f"Deploying the model to endpoint {name}" in [e["message"] for e in events]


def test_boto3_waits_for_the_first_call(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    heavy = "{'boto3', 'botocore', 'sagemaker'}"
    code = f"import sys, adapters.aws.sagemaker_training; print(sorted({heavy} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto)
    tuner = SageMakerTrainingTuner(ROLE, BUCKET, IMAGE, region="us-east-1", inference_instance_type=MOTO_GPU)
    tuner.start(job(), "files/ten_a/file-1", None)
    assert tuner.client() is tuner.client()
    assert [tuner.status(job()).state for _ in range(2)] == ["running", "succeeded"]


@pytest.mark.parametrize(
    "job_id",
    [
        JOB_ID,
        "ftjob-" + "a" * 60,  # too long
        "ftjob_with.odd/characters",
        "ftjob-trailing-",
    ],
)
def test_resource_names_fit_sagemaker(job_id: str) -> None:
    import re

    name = resource_name(job_id)
    assert len(name) <= 63
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", name), name
    assert name.startswith("textnlp-ftjob")
    assert (name == f"textnlp-{job_id}") is (job_id == JOB_ID)


def test_altered_names_do_not_collide() -> None:
    assert resource_name("ftjob_a") != resource_name("ftjob.a") != resource_name("ftjob-a")
    assert resource_name("ftjob-" + "a" * 60) != resource_name("ftjob-" + "a" * 61)


NAME_KEYS = {
    "TrainingJob": "TrainingJobName",
    "Model": "ModelName",
    "EndpointConfig": "EndpointConfigName",
    "Endpoint": "EndpointName",
}
ARN_KINDS = {
    "TrainingJob": "training-job",
    "Model": "model",
    "EndpointConfig": "endpoint-config",
    "Endpoint": "endpoint",
}
LABELS = {"Model": "model", "EndpointConfig": "endpoint configuration", "Endpoint": "endpoint"}
# What each resource needs to exist before it can be created.
NEEDS = {
    "EndpointConfig": ("Model", lambda body: body["ProductionVariants"][0]["ModelName"]),
    "Endpoint": ("EndpointConfig", lambda body: body["EndpointConfigName"]),
}


def arn_of(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:us-east-1:123456789012:{ARN_KINDS[kind]}/{name.lower()}"


class ControlPlane:
    """SageMaker's JSON control plane for training jobs and endpoints in any state.

    ``fail`` queues error answers by action; ``after`` runs a hook once an action has been answered (what a
    concurrent caller did meanwhile).
    """

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in NAME_KEYS}
        self.tags: dict[str, list[dict[str, str]]] = {}
        self.fail: dict[str, tuple[int, str, str]] = {}
        self.after: dict[str, Callable[[], None]] = {}
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

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.resources["TrainingJob"]

    @property
    def endpoints(self) -> dict[str, dict[str, Any]]:
        return self.resources["Endpoint"]

    def reset(self) -> None:
        for table in self.resources.values():
            table.clear()
        for other in (self.tags, self.fail, self.after):
            other.clear()
        self.calls.clear()

    def answer(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls.append(action)
        if action in self.fail:
            status, kind, message = self.fail.pop(action)
            return status, {"__type": kind, "message": message or f"{kind} (test)"}
        result = (
            self.tag_answer(action, body) if action in ("AddTags", "ListTags") else self.resource_answer(action, body)
        )
        hook = self.after.pop(action, None)
        if hook is not None:
            hook()
        return result

    def tag_answer(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        tags = self.tags.setdefault(body["ResourceArn"], [])
        if action == "AddTags":
            tags.extend(body["Tags"])
        return 200, {"Tags": list(tags)}

    def resource_answer(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        verb = next(v for v in ("Create", "Describe", "Delete", "Stop") if action.startswith(v))
        kind = action.removeprefix(verb)
        name = body[NAME_KEYS[kind]]
        if verb == "Create":
            return self.create(kind, name, body)
        found = self.resources[kind].get(name)
        if found is None:
            return self.missing(kind, name, verb)
        if verb == "Stop":
            if found["TrainingJobStatus"] != "InProgress":
                return 400, {"__type": "ValidationException", "message": f"The job is {found['TrainingJobStatus']}"}
            found.update(TrainingJobStatus="Stopping", SecondaryStatus="Stopping")
            return 200, {}
        if verb == "Delete":
            del self.resources[kind][name]
            return 200, {}
        return 200, found

    def create(self, kind: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arn = arn_of(kind, name)
        if name in self.resources[kind]:
            if kind == "TrainingJob":
                return 400, {"__type": "ResourceInUse", "message": f"Training job {name} already exists"}
            message = f'Cannot create already existing {LABELS[kind]} "{arn}".'
            return 400, {"__type": "ValidationException", "message": message}
        if kind in NEEDS:
            needed, name_of = NEEDS[kind]
            if name_of(body) not in self.resources[needed]:
                return self.missing(needed, name_of(body), "Create")
        record = {**body, f"{kind}Arn": arn}
        if kind == "TrainingJob":
            record.update(TrainingJobStatus="InProgress", SecondaryStatus="Starting")
        if kind == "Endpoint":
            record["EndpointStatus"] = "Creating"
        self.resources[kind][name] = record
        return 200, {f"{kind}Arn": arn}

    def missing(self, kind: str, name: str, verb: str) -> tuple[int, dict[str, Any]]:
        if kind == "TrainingJob":
            code = "ResourceNotFound" if verb == "Stop" else "ValidationException"
            return 400, {"__type": code, "message": f"Requested resource not found: {name}"}
        return 400, {
            "__type": "ValidationException",
            "message": f'Could not find {LABELS[kind]} "{arn_of(kind, name)}".',
        }

    def complete(self, job_id: str) -> None:
        """The training job of ``job_id`` completed, with its model artefact."""
        self.jobs[resource_name(job_id)].update(
            TrainingJobStatus="Completed",
            SecondaryStatus="Completed",
            ModelArtifacts={"S3ModelArtifacts": ARTIFACT},
            SecondaryStatusTransitions=[{"Status": "Completed", "StartTime": 1_790_000_300}],
        )

    def cancel_tagged(self, job_id: str) -> bool:
        return {"Key": CANCELLED_TAG, "Value": "true"} in self.tags.get(
            arn_of("TrainingJob", resource_name(job_id)), []
        )

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

    plane.reset()
    return tuner_on(boto3.client("sagemaker", **client_kwargs(plane.url)))


def trained(plane: ControlPlane, tuner: SageMakerTrainingTuner) -> FineTuneJob:
    """A job whose training completed (the endpoint not created yet)."""
    j = job()
    tuner.start(j, j.training_key, None)
    plane.complete(j.id)
    plane.calls.clear()
    return j


@pytest.mark.parametrize(
    ("primary", "secondary", "state"),
    [
        ("InProgress", "Starting", "queued"),
        ("InProgress", "LaunchingMLInstances", "queued"),
        ("InProgress", "Downloading", "running"),
        ("InProgress", "Training", "running"),
        ("Stopping", "Stopping", "running"),
        ("Stopped", "Stopped", "cancelled"),
        ("Completed", "Completed", "running"),  # trained: deploying now
    ],
)
def test_training_job_states_map_to_job_states(
    plane: ControlPlane, local: SageMakerTrainingTuner, primary: str, secondary: str, state: str
) -> None:
    j = job()
    local.start(j, j.training_key, None)
    plane.jobs[training_job_name(j.id)].update(
        TrainingJobStatus=primary, SecondaryStatus=secondary, ModelArtifacts={"S3ModelArtifacts": ARTIFACT}
    )
    assert local.status(j).state == state
    assert (NAME in plane.endpoints) is (primary == "Completed")


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
    assert "CreateModel" not in plane.calls


def test_a_creating_endpoint_keeps_the_job_running(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = trained(plane, local)
    polls = [local.status(j) for _ in range(3)]
    assert {(s.state, s.fine_tuned_model_route) for s in polls} == {("running", None)}
    assert {tuple(s.events) for s in polls} == {("Completed", DEPLOYING)}
    assert [c for c in plane.calls if c.startswith("Create")] == CREATES
    assert plane.endpoints[NAME]["EndpointStatus"] == "Creating"
    (variant,) = plane.resources["EndpointConfig"][NAME]["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g5.xlarge", 1)  # the default
    plane.endpoints[NAME]["EndpointStatus"] = "InService"
    done = local.status(j)
    assert (done.state, done.fine_tuned_model_route) == ("succeeded", ROUTE)
    assert done.events == ["Completed", DEPLOYING, f"Endpoint {NAME} is in service"]


def test_resources_another_poll_created_are_taken_as_they_are(
    plane: ControlPlane, local: SageMakerTrainingTuner
) -> None:
    j = trained(plane, local)
    local.status(j)
    del plane.endpoints[NAME]  # as if another container created the model and config, and is about to create this
    plane.calls.clear()
    assert local.status(j).state == "running"  # CreateModel and CreateEndpointConfig: "already existing", taken
    assert plane.calls == ["DescribeTrainingJob", "DescribeEndpoint", "ListTags", *CREATES, "ListTags"]
    assert plane.endpoints[NAME]["EndpointStatus"] == "Creating"
    plane.calls.clear()
    assert local.status(j).state == "running"  # the endpoint exists: no create at all
    assert plane.calls == ["DescribeTrainingJob", "DescribeEndpoint"]


def test_two_pollers_racing_both_succeed(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    import boto3

    j = trained(plane, local)
    other = tuner_on(boto3.client("sagemaker", **client_kwargs(plane.url)))
    # The other container's creates land between this poll's DescribeEndpoint and its CreateModel.
    plane.after["DescribeEndpoint"] = lambda: other._create(NAME, ARTIFACT)
    assert local.status(j).state == "running"
    assert plane.calls.count("CreateEndpoint") == 2
    assert list(plane.endpoints) == [NAME]


def test_a_failed_endpoint_fails_the_job_with_its_reason(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = trained(plane, local)
    local.status(j)
    plane.endpoints[NAME].update(EndpointStatus="Failed", FailureReason="The primary container did not pass ping")
    status = local.status(j)
    assert (status.state, status.fine_tuned_model_route) == ("failed", None)
    assert status.error is not None
    assert status.error.endswith(f"(endpoint {NAME}): The primary container did not pass ping")
    assert status.events == ["Completed", DEPLOYING]


def test_a_refused_deployment_fails_the_job(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = trained(plane, local)
    message = "The account-level service limit 'ml.g5.xlarge for endpoint usage' is 0 Instances"
    plane.fail["CreateEndpoint"] = (400, "ResourceLimitExceeded", message)
    status = local.status(j)
    assert status.state == "failed"
    assert message in (status.error or "")


@pytest.mark.parametrize(
    ("action", "status", "kind", "message", "code"),
    [
        ("CreateModel", 400, "ThrottlingException", "", "backend_throttled"),
        ("CreateEndpointConfig", 400, "ValidationException", 'Could not find model "x".', "backend_misconfigured"),
        ("DescribeEndpoint", 500, "InternalFailure", "", "backend_error"),
    ],
)
def test_passing_deploy_errors_leave_the_job_for_the_next_poll(
    plane: ControlPlane, local: SageMakerTrainingTuner, action: str, status: int, kind: str, message: str, code: str
) -> None:
    j = trained(plane, local)
    plane.fail[action] = (status, kind, message)
    with pytest.raises(BackendError) as err:
        local.status(j)  # the service logs it and keeps the job as it was
    assert err.value.code == code
    assert local.status(j).state == "running"
    assert plane.endpoints[NAME]["EndpointStatus"] == "Creating"


def test_a_completed_job_without_an_artefact_fails(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = trained(plane, local)
    del plane.jobs[NAME]["ModelArtifacts"]
    status = local.status(j)
    assert (status.state, "artefact" in (status.error or "")) == ("failed", True)
    assert "CreateModel" not in plane.calls


def test_cancel_during_deployment_deletes_what_was_created(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = trained(plane, local)
    local.status(j)
    plane.calls.clear()
    local.cancel(j)
    assert plane.calls == ["DescribeTrainingJob", "AddTags", *DELETES]
    assert all(not plane.resources[kind] for kind in ("Model", "EndpointConfig", "Endpoint"))
    assert plane.cancel_tagged(j.id)


def test_a_cancel_racing_the_deploy_step_leaves_no_endpoint(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    import boto3

    j = trained(plane, local)
    other = tuner_on(boto3.client("sagemaker", **client_kwargs(plane.url)))
    # The cancel runs (on another container) just after this poll created the endpoint, before it checks the tag.
    plane.after["CreateEndpoint"] = lambda: other.cancel(j)
    assert local.status(j).state == "cancelled"
    assert all(not plane.resources[kind] for kind in ("Model", "EndpointConfig", "Endpoint"))
    plane.calls.clear()
    assert local.status(j).state == "cancelled"  # later polls create nothing either
    assert plane.calls == ["DescribeTrainingJob", "DescribeEndpoint", "ListTags"]


def test_a_deleting_endpoint_is_a_cancelled_job(plane: ControlPlane, local: SageMakerTrainingTuner) -> None:
    j = trained(plane, local)
    local.status(j)
    plane.endpoints[NAME]["EndpointStatus"] = "Deleting"
    assert local.status(j).state == "cancelled"


def test_cancel_stops_a_running_job_and_ignores_one_that_ended(
    plane: ControlPlane, local: SageMakerTrainingTuner
) -> None:
    j = job()
    local.start(j, j.training_key, None)
    local.cancel(j)
    assert plane.jobs[training_job_name(j.id)]["TrainingJobStatus"] == "Stopping"
    assert plane.cancel_tagged(j.id)
    # In case the training completes before it stops, the cancel also deletes whatever a deploy step made.
    assert plane.calls[-4:] == ["StopTrainingJob", *DELETES]
    plane.jobs[training_job_name(j.id)].update(TrainingJobStatus="Stopped")
    plane.calls.clear()
    local.cancel(j)  # ended: nothing to stop or delete
    local.cancel(job("ftjob-0000000001aa0000000000ff"))  # never started: nothing either
    assert plane.calls == ["DescribeTrainingJob", "DescribeTrainingJob"]


def test_a_stop_refused_because_the_training_just_ended_is_no_error(
    plane: ControlPlane, local: SageMakerTrainingTuner
) -> None:
    j = job()
    local.start(j, j.training_key, None)
    plane.fail["StopTrainingJob"] = (400, "ValidationException", "The job is Completed")
    local.cancel(j)
    assert plane.calls[-3:] == DELETES


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
        ("DeleteEndpoint", 400, "AccessDeniedException", "backend_misconfigured", False),
    ],
)
def test_errors_map_to_backend_errors(
    plane: ControlPlane, local: SageMakerTrainingTuner, action: str, status: int, kind: str, code: str, retryable: bool
) -> None:
    j = job()
    if action != "CreateTrainingJob":
        local.start(j, j.training_key, None)
    plane.fail[action] = (status, kind, "")
    call = {
        "CreateTrainingJob": lambda: local.start(j, j.training_key, None),
        "DescribeTrainingJob": lambda: local.status(j),
    }
    with pytest.raises(BackendError) as err:
        call.get(action, lambda: local.cancel(j))()
    assert (err.value.code, err.value.retryable) == (code, retryable)
